"""`layout: per_layer`: the dense FFN neurons a target keeps, dealt to the layers by
importance (`per_layer_heads`: the key/value groups too); the graph child is compared
with the parent sliced by hand."""

from __future__ import annotations

import copy

import pytest
import torch

from surgeon.api import subclone
from surgeon.emit.onnx import check_onnx, export_onnx, fresh_like
from surgeon.errors import PlanError
from surgeon.plan import load_plan
from tests import zoo


def _decoder():
    """A Llama of 3 layers with FFN 768 (steps of 256): in layer 1 a few neurons carry
    most of the weight, so its importance is concentrated and it gives up neurons."""
    model, inputs = zoo.tiny_decoder("llama", 4, 2, 16, 768, 3, tied=True)
    with torch.no_grad():
        mlp = model.model.layers[1].mlp
        for w in (mlp.gate_proj.weight, mlp.up_proj.weight):
            w[:8] *= 50
    return model, inputs


def _by_hand(parent, kept: list[dict]):
    """The parent with each layer's MLP cut to its kept neurons (gate and up rows, down
    columns), nothing else changed."""
    model = copy.deepcopy(parent)
    for layer, k in zip(model.model.layers, kept, strict=True):
        idx = torch.tensor(k["intermediate_size"])
        mlp = layer.mlp
        for name in ("gate_proj", "up_proj"):
            lin = getattr(mlp, name)
            new = torch.nn.Linear(lin.in_features, len(idx), bias=False)
            new.weight.data = lin.weight.data[idx].clone()
            setattr(mlp, name, new)
        new = torch.nn.Linear(len(idx), mlp.down_proj.out_features, bias=False)
        new.weight.data = mlp.down_proj.weight.data[:, idx].clone()
        mlp.down_proj = new
    return model


def test_per_layer_widths_differ_add_up_and_match_the_parent_sliced_by_hand():
    parent, inputs = _decoder()
    plan = {
        "target": {"intermediate_size": 512},
        "importance": "weight",
        "rescale": "none",
        "layout": "per_layer",
    }
    child = subclone(parent, plan, inputs)
    widths = [len(k["intermediate_size"]) for k in child.kept["per_layer"]]
    assert sum(widths) == 3 * 512 and all(w % 256 == 0 for w in widths)
    assert widths[1] == min(widths) < max(widths)  # the concentrated layer gives up neurons
    reference = _by_hand(parent, child.kept["per_layer"])
    with torch.no_grad():
        want = reference(**inputs).logits
        got = child.model(**inputs)["logits"]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kv, target, dealt",
    [
        (4, {"num_kv_heads": 2, "num_heads": 4}, "num_kv_heads"),  # grouped-query
        (8, {"num_heads": 4}, "num_heads"),  # multi-head: the heads themselves
    ],
)
def test_per_layer_heads_deal_key_value_groups_and_match_the_parent_with_heads_masked(
    tmp_path, kv, target, dealt
):
    """`per_layer_heads`: the target's key/value groups (2 of 4 in each of 3 layers; in
    multi-head attention 4 of 8 heads) are dealt to the layers by importance, each group
    keeping its query heads; the layer whose importance sits in its first group gives up
    groups. A removed head contributes nothing, so the child computes the parent with
    those heads' columns of the output projection zeroed; its ONNX file matches it. The
    Nemotron-NAS format, one query-head count for every layer, refuses it in one line."""
    from surgeon.emit.nas import write_nas
    from surgeon.errors import SurgeonError

    parent, inputs = zoo.tiny_decoder("llama", 8, kv, 8, 768, 3, tied=True)  # head_dim 8
    with torch.no_grad():
        parent.model.layers[1].self_attn.v_proj.weight[:8] *= 50  # its first KV group
    plan = {"target": target, "importance": "weight", "rescale": "none"}
    child = subclone(parent, {**plan, "layout": "per_layer_heads"}, inputs)
    kept = child.kept["per_layer"]
    groups = [len(k[dealt]) for k in kept]
    assert sum(groups) == 3 * target[dealt] and groups[1] == min(groups) < max(groups)
    assert all(len(k["num_heads"]) == len(k[dealt]) * 8 // kv for k in kept)
    reference = copy.deepcopy(parent)
    with torch.no_grad():
        for layer, k in zip(reference.model.layers, kept, strict=True):
            o = layer.self_attn.o_proj.weight
            for head in set(range(8)) - set(k["num_heads"]):
                o[:, head * 8 : (head + 1) * 8] = 0
        want = reference(**inputs).logits
        got = child.model(**inputs)["logits"]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    path = export_onnx(child.model, inputs, tmp_path / "child.onnx")  # the traced shapes
    assert check_onnx(child.model, path, [fresh_like(inputs, 2, 8, zoo.VOCAB, 1)]) < 1e-4
    with pytest.raises(SurgeonError, match="per_layer_heads deals them") as e:
        write_nas(child, tmp_path)
    assert "\n" not in str(e.value)
    uniform = subclone(parent, {**plan, "layout": "per_layer"}, inputs)  # the same count
    count = sum(p.numel() for p in uniform.model.parameters())
    assert sum(p.numel() for p in child.model.parameters()) == count


def test_uniform_layout_is_the_default_and_per_layer_needs_scores():
    assert load_plan({"target": {"intermediate_size": 8}}).layout == "uniform"
    with pytest.raises(PlanError, match="per_layer gives layers of different sizes"):
        load_plan({"target": {"intermediate_size": 8}, "layout": "per_layer", "emit": "hf"})
    parent, inputs = _decoder()
    plan = {"target": {"intermediate_size": 512}, "importance": "uniform", "layout": "per_layer"}
    with pytest.raises(PlanError, match="deals FFN neurons by importance"):
        subclone(parent, plan, inputs)


def test_a_per_layer_child_loads_in_llama_cpp_as_nemotron_nas_and_matches(tmp_path):
    """The per-layer child written in the Nemotron-NAS (DeciLM) format, converted by
    llama.cpp's own converter and run by llama.cpp: its logits at every position are the
    graph child's within 2e-3 of the largest logit (llama.cpp keeps its KV cache in f16)."""
    from surgeon.emit.nas import check_nas, write_nas

    parent, inputs = _decoder()
    plan = {"target": {"intermediate_size": 512}, "importance": "weight", "layout": "per_layer"}
    child = subclone(parent, plan, inputs)
    config = write_nas(child, tmp_path)
    zoo.save_letter_tokenizer(tmp_path)  # llama.cpp's GGUF carries a vocabulary
    mults = [b["ffn"]["ffn_mult"] for b in config["block_configs"]]
    widths = [len(k["intermediate_size"]) for k in child.kept["per_layer"]]
    assert [round(m * 64 / 1.5) for m in mults] == widths  # hidden 64
    assert len(set(widths)) > 1
    result = check_nas(child, tmp_path, inputs)
    assert result["max_relative_difference"] < 2e-3


def test_what_the_nemotron_nas_format_cannot_state_is_refused_in_one_line(tmp_path):
    from surgeon.emit.nas import write_nas
    from surgeon.errors import SurgeonError

    parent, inputs = zoo.tiny_decoder("llama", 4, 2, 16, 96, 3, tied=True)
    plan = {"target": {"intermediate_size": 64}, "importance": "weight", "layout": "per_layer"}
    child = subclone(parent, plan, inputs)  # FFN steps of 32: not the format's 256
    with pytest.raises(SurgeonError, match="multiple of 256") as e:
        write_nas(child, tmp_path)
    assert "\n" not in str(e.value)


def test_a_budget_with_per_layer_widths_counts_the_child_as_built():
    parent, inputs = _decoder()
    budget = int(0.8 * sum(p.numel() for p in parent.parameters()))
    plan = {"target": {"parameters": budget, "num_layers": 3}, "importance": "weight"}
    child = subclone(parent, {**plan, "layout": "per_layer"}, inputs)
    built = sum(p.numel() for p in child.model.parameters())
    assert built <= budget
    assert child.cut.surgery.budget["child_parameters"] == built


def test_apply_nas_writes_a_folder_llama_cpp_runs_as_the_child(tmp_path, capsys):
    """`surgeon apply --nas` from a folder: a Nemotron-NAS folder, checked in llama.cpp
    before it is moved into place; the summary gives the check's figure."""
    import json

    from surgeon.cli import main

    parent, _ = _decoder()
    parent.save_pretrained(tmp_path / "parent")
    zoo.save_letter_tokenizer(tmp_path / "parent")
    plan = tmp_path / "plan.yaml"
    plan.write_text("target: {intermediate_size: 512}\nlayout: per_layer\nimportance: weight\n")
    out = tmp_path / "child"
    argv = ["apply", "--model", str(tmp_path / "parent"), "--plan", str(plan), "--out", str(out)]
    assert main([*argv, "--nas"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["DeciLMForCausalLM"] and len(config["block_configs"]) == 3
    record = json.loads((out / "surgeon.json").read_text())
    assert record["nas"]["max_relative_difference"] < 2e-3
    assert "intermediate_size  per layer" in capsys.readouterr().out
