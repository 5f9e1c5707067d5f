"""What the measuring passes found on a folder is kept (`surgeon.io.measures`): a re-cut
of the same parent to another size reads no calibration, and gives the child a run
without the cache gives."""

from __future__ import annotations

import os

import pytest
import torch

from surgeon.api import stream_subclone
from surgeon.io.measures import cache_folder
from tests import zoo
from tests.helpers import batches

PLAN = {"recipe": "surgeon", "target": {"num_layers": 2, "intermediate_size": 64}}
OTHER = {"recipe": "surgeon", "target": {"num_layers": 1, "hidden_size": 32}}


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SURGEON_CACHE", str(tmp_path / "cache"))
    model, example = zoo.build("llama")
    model.save_pretrained(tmp_path / "parent")
    return tmp_path / "parent", batches(example)


def _refuse_to_measure(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr("surgeon.passes.score.activation_means", refuse)
    monkeypatch.setattr("surgeon.passes.depth.layer_influence", refuse)


def _decisions(cut) -> dict:
    return {
        "layers": cut.state.kept_layers(),
        "kept": cut.kept,
        "influence": cut.state.influence,
    }


def test_a_recut_reads_no_calibration_and_decides_as_a_fresh_run(folder, monkeypatch):
    parent, data = folder
    stream_subclone(parent, PLAN, data)  # measures and keeps
    assert list((cache_folder() / "measures").glob("*.pt"))
    fresh = stream_subclone(parent, OTHER, data, cache=False)  # the reference: no cache
    _refuse_to_measure(monkeypatch)
    again = stream_subclone(parent, OTHER, data)
    assert _decisions(again) == _decisions(fresh)


def test_other_calibration_or_a_changed_checkpoint_is_measured_anew(folder, monkeypatch):
    parent, data = folder
    stream_subclone(parent, PLAN, data)
    calls = []
    real = __import__("surgeon.passes.depth", fromlist=["layer_influence"]).layer_influence

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr("surgeon.passes.depth.layer_influence", counted)
    other = [{**b, "input_ids": torch.flip(b["input_ids"], [1])} for b in data]
    stream_subclone(parent, OTHER, other)
    assert len(calls) == 1
    shard = next(parent.glob("*.safetensors"))
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    stream_subclone(parent, OTHER, data)
    assert len(calls) == 2


def test_no_cache_keeps_nothing(folder):
    parent, data = folder
    stream_subclone(parent, PLAN, data, cache=False)
    assert not (cache_folder() / "measures").exists()
