"""Streaming surgery from safetensors files gives the same child as in memory, bit for bit."""

import pytest
import torch

from surgeon import PlanError
from surgeon.apply import subclone
from surgeon.shards import Shards, save_safetensors
from surgeon.stream import stream_apply
from tests import zoo

PLAN = {
    "target": {
        "num_layers": 2,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_heads": 2,
        "num_kv_heads": 1,
    },
    "importance": "weight",
}


@pytest.mark.parametrize(
    "name, plan",
    [
        ("llama", PLAN),
        ("gemma2", {**PLAN, "depth": [0, 1, 1, 2], "target": {"hidden_size": 32}}),
        ("gpt2", {"target": {"hidden_size": 32, "num_heads": 2}, "importance": "uniform"}),
    ],
)
def test_streamed_child_is_bit_identical(tmp_path, monkeypatch, name, plan):
    import surgeon.stream

    monkeypatch.setattr(surgeon.stream, "BLOCK_BYTES", 100)  # many blocks per tensor
    model, example = zoo.build(name)
    parent = tmp_path / "parent"
    model.save_pretrained(parent, max_shard_size="40KB")  # several shards
    assert len(list(parent.glob("*.safetensors"))) > 1
    summary = stream_apply(parent, plan, tmp_path / "child", max_shard_bytes=30_000)
    streamed = type(model).from_pretrained(tmp_path / "child").eval()
    in_memory = subclone(model, plan, example).model
    a, b = streamed.state_dict(), in_memory.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert summary["child_parameters"] <= sum(p.numel() for p in in_memory.parameters())
    assert len(list((tmp_path / "child").glob("*.safetensors"))) > 1


def test_shards_are_views_of_the_files(tmp_path):
    model, _ = zoo.build("llama")
    model.save_pretrained(tmp_path)
    shards = Shards(tmp_path)
    weight = shards.tensor("model.layers.0.mlp.up_proj.weight")
    assert torch.equal(weight, model.model.layers[0].mlp.up_proj.weight)
    assert shards.nbytes == sum(p.numel() * 4 for p in model.parameters())


def test_plans_that_run_the_parent_are_refused(tmp_path):
    model, _ = zoo.build("llama")
    model.save_pretrained(tmp_path / "parent")
    with pytest.raises(PlanError, match="cannot be streamed"):
        stream_apply(tmp_path / "parent", {"importance": "activation"}, tmp_path / "child")
    assert not (tmp_path / "child").exists()


def test_own_safetensors_writer_reads_back_with_the_library(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    g = torch.Generator().manual_seed(0)
    tensors = {
        "b.weight": torch.randn(5, 3, generator=g).to(torch.bfloat16),
        "a.weight": torch.randn(4, 7, generator=g)[:, ::2],  # not contiguous
        "half": torch.randn(3, generator=g).half(),
        "double": torch.randn(2, 2, generator=g).double(),
        "ids": torch.arange(6).view(2, 3),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    save_safetensors(tensors, tmp_path / "x.safetensors")
    back = load_file(tmp_path / "x.safetensors")
    assert back.keys() == tensors.keys()
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t), name
    with safe_open(tmp_path / "x.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}
    shards = Shards(tmp_path)
    for name, t in tensors.items():
        assert torch.equal(shards.tensor(name), t), name
