"""A folder's graph and analysis kept on disk (surgeon.io.prepared; benchmarks/
prepared_zoo.py checks every zoo type): a second preparation reads them instead of
tracing, and gets the graph node for node and the analysis group for group of a fresh
trace; a child made from it is byte for byte the child of a run without the cache;
whatever the key holds changes it, and only that (in another process, under another
hash seed, the key is the same); a kept file that cannot be used, or that would call
anything but the classes a graph holds, is no cache."""

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

import surgeon
import surgeon.io.stamps as stamps
from surgeon.api import stream_apply
from surgeon.cli import main
from surgeon.pipeline import prepare_folder
from tests import zoo
from tests.helpers import analysis_groups, graph_nodes


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SURGEON_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "prepared"


def _saved(name, folder, **changes):
    model, inputs = zoo.build(name, **changes)
    model.save_pretrained(folder)
    return model, inputs


@pytest.mark.parametrize(
    "name, changes",
    [
        ("llama", {"num_hidden_layers": 6}),  # a twin's graph, expanded
        ("t5", {}),  # two stacks, traced whole
    ],
)
def test_a_kept_parent_is_the_fresh_one(name, changes, tmp_path, cache):
    _saved(name, tmp_path / "parent", **changes)
    fresh = prepare_folder(tmp_path / "parent")
    assert not fresh.kept and len(list(cache.glob("*.pkl"))) == 1
    kept = prepare_folder(tmp_path / "parent")
    assert kept.kept
    assert graph_nodes(kept.graph) == graph_nodes(fresh.graph)
    assert analysis_groups(kept.analysis) == analysis_groups(fresh.analysis)
    assert [vars(e) for e in kept.graph.params] == [vars(e) for e in fresh.graph.params]
    nodes = set(kept.graph.graph.nodes)
    assert all(x.input in nodes and x.output in nodes for x in kept.analysis.layers)
    assert kept.analysis.graph is kept.graph


@pytest.mark.parametrize("importance", ["weight", "activation"])
def test_a_child_from_the_kept_parent_is_byte_for_byte_the_uncached_child(
    importance, tmp_path, cache, monkeypatch
):
    """With `activation`, the kept graph runs the parent on calibration batches, layer by
    layer on the folder's weights (its measures deleted, so they are made again)."""
    import surgeon.io.prepared as prepared

    loaded = []
    load = prepared.load_prepared

    def spy(*args):
        found = load(*args)
        loaded.append(found is not None)
        return found

    monkeypatch.setattr(prepared, "load_prepared", spy)
    model, _ = _saved("llama", tmp_path / "parent", num_hidden_layers=6)
    plan = {
        "target": {"num_layers": 4, "hidden_size": 32, "intermediate_size": 48},
        "importance": importance,
    }
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, model.config.vocab_size, (2, 16), generator=g) for _ in range(2)]
    outs = {}
    for run, use in (("plain", False), ("first", True), ("kept", True)):
        for f in (cache.parent / "measures").glob("*"):
            f.unlink()
        stream_apply(tmp_path / "parent", plan, tmp_path / run, calibration=batches, cache=use)
        files = sorted(p for p in (tmp_path / run).rglob("*") if p.is_file())
        outs[run] = {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files
            if p.name != "surgeon.json"
        }
    assert outs["plain"] == outs["first"] == outs["kept"]
    assert len(list(cache.glob("*.pkl"))) == 1  # written by `first` only
    assert loaded == [False, False, True]  # only `kept` read the file


def test_what_the_key_holds_changes_it(tmp_path, cache, monkeypatch):
    from transformers.models.llama import modeling_llama

    _saved("llama", tmp_path / "parent")
    config = tmp_path / "parent" / "config.json"
    assert not prepare_folder(tmp_path / "parent").kept
    assert prepare_folder(tmp_path / "parent").kept
    config.write_text(config.read_text().replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-05'))
    assert not prepare_folder(tmp_path / "parent").kept  # another constant in the graph
    assert prepare_folder(tmp_path / "parent").kept
    silu = modeling_llama.LlamaMLP.forward

    def relu(self, x):
        return self.down_proj(torch.relu(self.gate_proj(x)) * self.up_proj(x))

    def sigmoid(self, x):  # the same bytecode as relu's, another name read
        return self.down_proj(torch.sigmoid(self.gate_proj(x)) * self.up_proj(x))

    changes = [
        lambda: monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", relu),
        lambda: monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", sigmoid),
        lambda: monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", silu),  # as before
        lambda: torch.set_default_dtype(torch.float64),  # the model built in another dtype
        lambda: torch.set_default_dtype(torch.float32),
        lambda: monkeypatch.setattr(stamps, "surgeon_stamp", lambda: "another surgeon"),
    ]
    for i, change in enumerate(changes):
        change()
        try:
            assert prepare_folder(tmp_path / "parent").kept == (i == 2 or i == 4), i
        finally:
            torch.set_default_dtype(torch.float32)
        assert prepare_folder(tmp_path / "parent").kept  # kept now
    monkeypatch.undo()  # the fixture's cache folder too
    monkeypatch.setenv("SURGEON_CACHE", str(cache.parent))
    assert not prepare_folder(tmp_path / "parent", cache=False).kept
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    ALL_ATTENTION_FUNCTIONS["sdpa"] = lambda *a, **k: sdpa(*a, **k)
    try:
        assert not prepare_folder(tmp_path / "parent").kept  # another function registered
    finally:
        ALL_ATTENTION_FUNCTIONS["sdpa"] = sdpa

    @surgeon.register_rule("surgeon_test::nothing")
    def nothing(ctx, a):  # a user's rule: another table, another analysis maybe
        pass

    try:
        assert not prepare_folder(tmp_path / "parent").kept
    finally:
        surgeon.unregister_rule("surgeon_test::nothing")
    assert prepare_folder(tmp_path / "parent").kept
    batch = {"input_ids": torch.ones(1, 5, dtype=torch.long)}  # other example inputs
    assert not prepare_folder(tmp_path / "parent", batch).kept
    batch = {"input_ids": torch.zeros(1, 5, dtype=torch.long)}  # values a meta trace never reads
    assert prepare_folder(tmp_path / "parent", batch).kept
    shutil.copytree(tmp_path / "parent", tmp_path / "elsewhere")  # where it is: not the key
    assert prepare_folder(tmp_path / "elsewhere", batch).kept
    forward = modeling_llama.LlamaMLP.forward

    def by_path(self, x):  # but for code that reads it
        return forward(self, x) * (2 if "chat" in self.config._name_or_path else 1)

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", by_path)
    assert not prepare_folder(tmp_path / "elsewhere", batch).kept
    assert not prepare_folder(tmp_path / "parent", batch).kept
    assert prepare_folder(tmp_path / "elsewhere", batch).kept


_KEY = """
import sys
import surgeon
from surgeon.frontends.load import load_model
from surgeon.io.names import load_names
from surgeon.io.prepared import prepared_key
from surgeon.io.shards import Shards

@surgeon.register_rule("surgeon_test::sets")
def sets(ctx, a):  # a set literal: its order depends on the hash seed
    return a.node.name in {"alpha", "beta", "gamma", "delta"}

model, _ = load_model(sys.argv[1], weights=False)
print(prepared_key(model, None, load_names(model, Shards(sys.argv[1]).index)))
"""


def test_the_key_is_the_same_in_another_process_under_another_hash_seed(tmp_path):
    _saved("llama", tmp_path / "parent")
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _KEY, str(tmp_path / "parent")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )  # fmt: skip
        for seed in ("1", "2")
    ]
    keys = set()
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-2000:]
        keys.add(out.strip().splitlines()[-1])
    assert len(keys) == 1 and "None" not in keys


class _Call:
    """Unpickled, it would call `fn(*args)`: what a kept file must never do."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def test_a_kept_file_that_cannot_be_used_is_no_cache(tmp_path, cache):
    import operator

    _saved("llama", tmp_path / "parent")
    want = analysis_groups(prepare_folder(tmp_path / "parent").analysis)
    (file,) = cache.glob("*.pkl")
    file.write_bytes(file.read_bytes()[:1000])  # cut short
    parent = prepare_folder(tmp_path / "parent")
    assert not parent.kept and analysis_groups(parent.analysis) == want
    sentinel = tmp_path / "sentinel"
    sentinel.write_text("kept")
    remove = f"__import__('os').remove({str(sentinel)!r})"
    calls = [
        _Call(os.remove, str(sentinel)),
        _Call(eval, remove),
        _Call(operator.attrgetter, "remove"),
        _Call(torch.storage._load_from_bytes, pickle.dumps(_Call(os.remove, str(sentinel)))),
        _Call(torch.fx.GraphModule, torch.nn.Module(), torch.fx.Graph()),
    ]
    for call in calls:
        for where in (0, 1):  # the file's list, or the graph's pickle in it
            blobs = [pickle.dumps(call), b""] if where else None
            file.write_bytes(pickle.dumps(blobs) if where else pickle.dumps(call))
            parent = prepare_folder(tmp_path / "parent")
            assert not parent.kept and sentinel.exists(), call.fn
            assert analysis_groups(parent.analysis) == want
    assert prepare_folder(tmp_path / "parent").kept  # written again


def test_the_cli_says_it_reused_the_analysis_and_no_cache_keeps_none(tmp_path, cache, capsys):
    _saved("llama", tmp_path / "parent")
    plan = tmp_path / "plan.yaml"
    plan.write_text("target: {hidden_size: 32}\n")
    argv = ["apply", "--model", str(tmp_path / "parent"), "--plan", str(plan), "--out"]
    assert main([*argv, str(tmp_path / "a"), "--no-cache"]) == 0
    assert not cache.exists()
    assert main([*argv, str(tmp_path / "b")]) == 0
    assert "kept from an earlier run" not in capsys.readouterr().err
    assert main([*argv, str(tmp_path / "c")]) == 0
    assert "on the meta device: " in (err := capsys.readouterr().err)
    assert "(kept from an earlier run)" in err


def test_inspect_with_calibration_keeps_the_analysis_and_no_cache_keeps_none(
    tmp_path, cache, capsys
):
    _saved("llama", tmp_path / "parent")
    zoo.save_letter_tokenizer(tmp_path / "parent")
    text = tmp_path / "text.txt"
    text.write_text("abcdefghijklmnopqrstuvwxyz" * 400)
    argv = ["inspect", "--model", str(tmp_path / "parent"), "--calibration", str(text)]
    assert main([*argv, "--no-cache", "--json"]) == 0
    fresh = json.loads(capsys.readouterr().out)
    assert not cache.parent.exists()
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == fresh
    assert len(list(cache.glob("*.pkl"))) == 1
