"""A folder's graph and analysis kept on disk (surgeon.io.prepared): a second preparation
reads them instead of tracing, and gets the graph op for op and the analysis group for
group of a fresh trace, computing the model's own output on its weights; a child made
from it is byte for byte the child of a run without the cache; whatever the key holds
changes it; a kept file that cannot be used, or that names another class, is no cache."""

import hashlib
import pickle

import pytest
import torch

import surgeon
import surgeon.io.prepared as prepared
from surgeon.api import stream_apply
from surgeon.cli import main
from surgeon.pipeline import prepare_folder
from tests import zoo


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SURGEON_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "prepared"


def _saved(name, folder, **changes):
    model, inputs = zoo.build(name, **changes)
    model.save_pretrained(folder)
    return model, inputs


def _nodes(graph):
    out = []
    for n in graph.graph.nodes:
        val = n.meta.get("val")
        shape = (tuple(val.shape), val.dtype) if isinstance(val, torch.Tensor) else repr(val)
        out.append((n.name, n.op, str(n.target), repr(n.args), shape, n.meta.get("stack_trace")))
    return out


def _groups(analysis):
    layers = [
        (x.name, x.heads, x.kv, x.ffn, x.experts, x.input.name, x.output.name, x.applied)
        for x in analysis.layers
    ]
    groups = sorted(
        (g.id, g.size, g.role, g.movable, sorted(g.members)) for g in analysis.groups.values()
    )
    return layers, groups, analysis.residual, sorted(analysis.dims.tensors.items())


@pytest.mark.parametrize(
    "name, changes",
    [
        ("llama", {"num_hidden_layers": 6}),  # a twin's graph, expanded
        ("t5", {}),  # two stacks, traced whole
        ("qwen3_5_text", {}),  # linear attention beside softmax attention
    ],
)
def test_a_kept_parent_is_the_fresh_one(name, changes, tmp_path, cache):
    _saved(name, tmp_path / "parent", **changes)
    fresh = prepare_folder(tmp_path / "parent")
    assert not fresh.kept and len(list(cache.glob("*.pkl"))) == 1
    kept = prepare_folder(tmp_path / "parent")
    assert kept.kept
    assert _nodes(kept.graph) == _nodes(fresh.graph)
    assert _groups(kept.analysis) == _groups(fresh.analysis)
    assert [vars(e) for e in kept.graph.params] == [vars(e) for e in fresh.graph.params]
    nodes = set(kept.graph.graph.nodes)
    assert all(x.input in nodes and x.output in nodes for x in kept.analysis.layers)
    assert kept.analysis.graph is kept.graph


@pytest.mark.parametrize("importance", ["weight", "activation"])
def test_a_child_from_the_kept_parent_is_byte_for_byte_the_uncached_child(
    importance, tmp_path, cache
):
    """With `activation`, the kept graph runs the parent on calibration batches, layer by
    layer on the folder's weights (its measures deleted, so they are made again)."""
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


def test_what_the_key_holds_changes_it(tmp_path, cache, monkeypatch):
    _saved("llama", tmp_path / "parent")
    config = tmp_path / "parent" / "config.json"
    assert not prepare_folder(tmp_path / "parent").kept
    assert prepare_folder(tmp_path / "parent").kept
    config.write_text(config.read_text().replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-05'))
    assert not prepare_folder(tmp_path / "parent").kept  # another constant in the graph
    assert prepare_folder(tmp_path / "parent").kept
    from transformers.models.llama import modeling_llama

    forward = modeling_llama.LlamaMLP.forward
    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", lambda self, x: forward(self, x))
    assert not prepare_folder(tmp_path / "parent").kept  # a method patched in this process
    monkeypatch.undo()  # the fixture's cache folder too
    monkeypatch.setenv("SURGEON_CACHE", str(cache.parent))
    assert prepare_folder(tmp_path / "parent").kept
    monkeypatch.setattr(prepared, "_surgeon_stamp", lambda: "another surgeon")
    assert not prepare_folder(tmp_path / "parent").kept
    assert not prepare_folder(tmp_path / "parent", cache=False).kept

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
    assert prepare_folder(tmp_path / "parent", batch).kept


class _Remove:
    """Unpickled, it would remove `path`: what a kept file must never run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import os

        return (os.remove, (self.path,))


def test_a_kept_file_that_cannot_be_used_is_no_cache(tmp_path, cache):
    _saved("llama", tmp_path / "parent")
    want = _groups(prepare_folder(tmp_path / "parent").analysis)
    (file,) = cache.glob("*.pkl")
    file.write_bytes(file.read_bytes()[:1000])  # cut short
    parent = prepare_folder(tmp_path / "parent")
    assert not parent.kept and _groups(parent.analysis) == want
    sentinel = tmp_path / "sentinel"
    sentinel.write_text("kept")
    file.write_bytes(pickle.dumps([pickle.dumps(_Remove(sentinel)), b""]))
    parent = prepare_folder(tmp_path / "parent")
    assert not parent.kept and sentinel.exists() and _groups(parent.analysis) == want
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
