"""Streaming surgery from safetensors files gives the same child as in memory, bit for bit."""

import pytest
import torch

from surgeon import PlanError
from surgeon.api import stream_apply, subclone
from surgeon.io.shards import Shards, save_safetensors
from tests import zoo
from tests.helpers import assert_embedding_is_a_hand_slice, shrink_plan

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


def _shrink(name):
    """The width shrink of test_surgery, one layer fewer, data-free scores, rescaled."""
    plan = shrink_plan(name)
    plan["target"]["num_layers"] = 2
    return {**plan, "importance": "weight", "depth": "middle", "rescale": "paper"}


CASES = [(name, _shrink(name)) for name in zoo.HF_NAMES] + [
    ("gemma2", {**PLAN, "depth": [0, 1, 1, 2], "target": {"hidden_size": 32}}),
    ("gpt2", {"target": {"hidden_size": 32, "num_heads": 2}, "importance": "uniform"}),
    ("llama", {**PLAN, "importance": "first"}),
]


@pytest.mark.parametrize("name, plan", CASES)
def test_streamed_child_is_bit_identical(prepared, tmp_path, monkeypatch, name, plan):
    import surgeon.emit.shards

    monkeypatch.setattr(surgeon.emit.shards, "BLOCK_BYTES", 100)  # many blocks per tensor
    model = prepared(name).model
    parent = tmp_path / "parent"
    model.save_pretrained(parent, max_shard_size="40KB")  # several shards
    assert len(list(parent.glob("*.safetensors"))) > 1
    summary = stream_apply(parent, plan, tmp_path / "child", max_shard_bytes=30_000)
    streamed = type(model).from_pretrained(tmp_path / "child").eval()
    in_memory = subclone(prepared(name).parent, plan).model
    a, b = streamed.state_dict(), in_memory.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert_embedding_is_a_hand_slice(model, streamed, summary["kept"]["hidden_size"])
    assert summary["child_parameters"] <= sum(p.numel() for p in in_memory.parameters())
    in_memory.save_pretrained(tmp_path / "in_memory")  # stored under the same names
    assert Shards(tmp_path / "child").index.keys() == Shards(tmp_path / "in_memory").index.keys()
    assert len(list((tmp_path / "child").glob("*.safetensors"))) > 1


def test_shards_are_views_of_the_files(tmp_path):
    model, _ = zoo.build("llama")
    model.save_pretrained(tmp_path)
    shards = Shards(tmp_path)
    weight = shards.tensor("model.layers.0.mlp.up_proj.weight")
    assert torch.equal(weight, model.model.layers[0].mlp.up_proj.weight)
    assert shards.nbytes == sum(p.numel() * 4 for p in model.parameters())


def test_plans_that_run_the_parent_need_calibration(tmp_path):
    model, _ = zoo.build("llama")
    model.save_pretrained(tmp_path / "parent")
    with pytest.raises(PlanError, match="needs the model's tokenizer"):
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


def test_checkpoint_names_follow_transformers_renaming():
    """GPT-NeoX stores `embed_out.weight` for the model's `lm_head.weight` (transformers
    renames it on load and back on save); streaming uses the same names both ways."""
    from surgeon.io.names import load_names, save_names

    model, _ = zoo.build("gpt_neox", "meta")
    stored = load_names(model, ["embed_out.weight", "gpt_neox.embed_in.weight"])
    assert stored == {
        "lm_head.weight": "embed_out.weight",
        "gpt_neox.embed_in.weight": "gpt_neox.embed_in.weight",
    }
    assert save_names(model, ["lm_head.weight"]) == {"lm_head.weight": "embed_out.weight"}


def test_a_checkpoint_converted_on_load_is_not_streamed(tmp_path, monkeypatch, capsys):
    """A stored tensor that transformers would convert, not only rename (here a made-up
    fused MLP it splits on load), cannot be read as stored: `surgeon apply` says so and
    loads the parent instead."""
    from transformers.core_model_loading import Chunk, WeightConverter

    import surgeon.io.names
    from surgeon.cli import main
    from surgeon.io.names import NotStreamable, load_names

    split = WeightConverter(
        "mlp.gate_up_proj.weight",
        ["mlp.gate_proj.weight", "mlp.up_proj.weight"],
        operations=[Chunk(dim=0)],
    )
    model, _ = zoo.build("llama")
    with monkeypatch.context() as m:
        m.setattr(surgeon.io.names, "_transforms", lambda model, **kw: [split])
        with pytest.raises(NotStreamable, match="converts on load"):
            load_names(model, ["model.layers.0.mlp.gate_up_proj.weight"])

    def refuse(model, stored):
        raise NotStreamable("the checkpoint stores x in a layout y converts on load")

    monkeypatch.setattr(surgeon.io.names, "load_names", refuse)
    model.save_pretrained(tmp_path / "parent")
    plan = tmp_path / "plan.yaml"
    plan.write_text("target: {hidden_size: 32}\nrecipe: data-free\n")
    out = tmp_path / "child"
    argv = ["apply", "--model", str(tmp_path / "parent"), "--plan", str(plan), "--out", str(out)]
    assert main(argv) == 0
    assert "converts on load: loading all of it" in capsys.readouterr().err
    assert "streamed" not in (out / "surgeon.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child", "parent", "plan.yaml"]


def test_shards_read_the_files_the_index_names(tmp_path):
    """A folder may hold other safetensors files (Mistral's `consolidated.safetensors`):
    with an index, only the files it names are the checkpoint."""
    model, _ = zoo.build("llama")
    model.save_pretrained(tmp_path, max_shard_size="40KB")
    save_safetensors({"stray": torch.zeros(1000)}, tmp_path / "consolidated.safetensors")
    shards = Shards(tmp_path)
    assert "stray" not in shards and "consolidated.safetensors" not in str(shards.files)
    assert shards.nbytes == sum(p.numel() * 4 for p in model.parameters())


def test_what_streaming_cannot_read_is_refused(tmp_path):
    """A dtype the reader does not know (float8 here) or a quantized checkpoint: not
    streamable (`surgeon apply` then loads the parent, tested above)."""
    import json
    import struct

    from surgeon.errors import NotStreamable

    header = json.dumps({"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}})
    raw = struct.pack("<Q", len(header)) + header.encode() + bytes(2)
    (tmp_path / "x.safetensors").write_bytes(raw)
    with pytest.raises(NotStreamable, match="stores w as F8_E4M3"):
        Shards(tmp_path)
    model, _ = zoo.build("llama")
    model.config.quantization_config = {"quant_method": "made-up"}
    model.save_pretrained(tmp_path / "parent")
    plan = tmp_path / "plan.yaml"
    plan.write_text("target: {hidden_size: 32}\nrecipe: data-free\n")
    out = tmp_path / "child"
    with pytest.raises(NotStreamable, match=r"quantized \(made-up\)"):
        stream_apply(tmp_path / "parent", plan, out)
    assert not out.exists()


def test_the_writer_refuses_a_name_twice(tmp_path):
    from surgeon.io.shards import Entry, write_safetensors

    entries = [Entry("a", torch.float32, [1], [torch.zeros(1)])] * 2
    with pytest.raises(ValueError, match="'a' twice"):
        write_safetensors(entries, tmp_path / "x.safetensors")


def test_the_writer_stops_its_thread_on_an_error(tmp_path):
    """Blocks are made in a thread ahead of the writes: an error there, or in the writer,
    reaches the caller, and the thread is gone when the call returns."""
    import threading

    from surgeon.io.shards import Entry, write_safetensors

    def failing():
        yield torch.zeros(2)
        raise RuntimeError("cannot read the parent")

    wrong = [torch.zeros(2, dtype=torch.float64)] * 50
    cases = [
        ([Entry("a", torch.float32, [4], failing())], RuntimeError, "cannot read the parent"),
        ([Entry("a", torch.float32, [100], wrong)], ValueError, "a torch.float64 block"),
        ([Entry("a", torch.float32, [3], [torch.zeros(2)])], ValueError, "8 bytes written"),
        (  # the first error in the file's order, though the thread met the other first
            [
                Entry("a", torch.float32, [3], [torch.zeros(2)]),
                Entry("b", torch.float32, [4], failing()),
            ],
            ValueError,
            "a: 8 bytes written",
        ),
    ]
    for entries, error, message in cases:
        with pytest.raises(error, match=message):
            write_safetensors(entries, tmp_path / "x.safetensors")
        assert not [t for t in threading.enumerate() if t.name == "surgeon-blocks"]


def test_a_weight_made_off_the_meta_device_is_streamed(tmp_path):
    """Built from its config on the meta device, ImageGPT still makes its norms' weights
    on the CPU; the folder is traced all the same, and the permuted child it streams
    computes the parent's output."""
    model, inputs = zoo.legacy_weights()
    model.save_pretrained(tmp_path / "parent")
    stream_apply(tmp_path / "parent", {"importance": "weight"}, tmp_path / "child")
    child = type(model).from_pretrained(tmp_path / "child").eval()
    with torch.no_grad():
        torch.testing.assert_close(child(**inputs).logits, model(**inputs).logits)
