"""`target.drop_blocks`: a layer's attention or MLP block removed (`x + f(x)` becomes `x`).
The child is compared with the parent whose dropped blocks' outputs are zeroed by forward
hooks (an independent reference: the parent's own modules, not the graph), the measured
choice with the blocks' residual ratios taken by hooks too, and the Nemotron-NAS folder
with llama.cpp."""

from __future__ import annotations

import pytest
import torch

from surgeon.api import subclone
from surgeon.errors import PlanError, SurgeonError
from surgeon.pipeline import prepare
from surgeon.plan import load_plan
from tests import zoo


@pytest.fixture(scope="module")
def llama():
    """A Llama of 3 layers, FFN 768 (steps of 256, as the Nemotron-NAS format wants),
    traced once for every plan of this file."""
    model, inputs = zoo.tiny_decoder("llama", 4, 2, 16, 768, 3, tied=True)
    return model, inputs, prepare(model, inputs)


def _zeroed(model, dropped: dict[int, tuple[str, ...]]):
    """Forward hooks that make the parent's dropped blocks add nothing: the attention's
    output (first of its outputs) or the MLP's output is zeros."""
    hooks = []
    for i, kinds in dropped.items():
        layer = model.model.layers[i]
        if "attention" in kinds:
            hooks.append(
                layer.self_attn.register_forward_hook(
                    lambda m, a, out: (torch.zeros_like(out[0]), *out[1:])
                )
            )
        if "mlp" in kinds:
            hooks.append(layer.mlp.register_forward_hook(lambda m, a, out: torch.zeros_like(out)))
    return hooks


def _reference(model, inputs, dropped):
    hooks = _zeroed(model, dropped)
    try:
        with torch.no_grad():
            return model(**inputs).logits
    finally:
        for h in hooks:
            h.remove()


def _dropped(child) -> dict[int, tuple[str, ...]]:
    kept = child.kept
    return {
        kept["layers"][j]: tuple(k["dropped"])
        for j, k in enumerate(kept["per_layer"])
        if "dropped" in k
    }


def test_listed_blocks_are_gone_and_the_child_is_the_parent_with_them_zeroed(llama):
    model, inputs, parent = llama
    plan = {
        "target": {"drop_blocks": {"attention": [1], "mlp": [2]}},
        "importance": "weight",
        "rescale": "none",
    }
    child = subclone(parent, plan, inputs)
    assert _dropped(child) == {1: ("attention",), 2: ("mlp",)}
    names = dict(child.model.named_parameters())
    gone = ("layers.1.self_attn.", "layers.1.input_layernorm.", "layers.2.mlp.")
    gone += ("layers.2.post_attention_layernorm.",)
    assert not [n for n in names if any(g in n for g in gone)]
    parent_names = dict(model.named_parameters())
    want_count = sum(p.numel() for n, p in parent_names.items() if not any(g in n for g in gone))
    assert sum(p.numel() for p in child.model.parameters()) == want_count
    with torch.no_grad():
        got = child.model(**inputs)["logits"]
    torch.testing.assert_close(got, _reference(model, inputs, _dropped(child)), rtol=0, atol=1e-5)
    assert "drop attention blocks 1; drop mlp blocks 2" in load_plan(plan).describe()
    long = {"passes": [{"depth": {"blocks": {"attention": [1], "mlp": [2]}}}]}
    assert load_plan(long).emit == "graph"
    assert _dropped(subclone(parent, long, inputs)) == _dropped(child)


def _ratios_by_hooks(model, batches) -> dict[tuple[int, str], float]:
    """||f(x)|| / ||x + f(x)|| of every block, averaged over positions and batches, from
    the parent's modules: x is what the layer's norm before the block reads."""
    sums: dict[tuple[int, str], list[float]] = {}
    seen: dict = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        for kind, norm, block in (
            ("attention", layer.input_layernorm, layer.self_attn),
            ("mlp", layer.post_attention_layernorm, layer.mlp),
        ):

            def before(m, args, key=(i, kind)):
                seen[key] = args[0].detach()

            def after(m, args, out, key=(i, kind)):
                f = (out[0] if isinstance(out, tuple) else out).detach()
                ratio = f.norm(dim=-1) / (seen[key] + f).norm(dim=-1)
                sums.setdefault(key, []).extend(ratio.flatten().tolist())

            hooks += [norm.register_forward_pre_hook(before), block.register_forward_hook(after)]
    try:
        with torch.no_grad():
            for batch in batches:
                model(**batch)
    finally:
        for h in hooks:
            h.remove()
    return {k: sum(v) / len(v) for k, v in sums.items()}


def test_counted_blocks_are_those_that_add_least_to_the_stream_on_calibration_data(llama):
    model, inputs, parent = llama
    batches = [inputs, {k: v.flip(1) for k, v in inputs.items()}]
    plan = {"target": {"drop_blocks": {"attention": 2, "mlp": 1}}, "rescale": "none"}
    child = subclone(parent, {**plan, "importance": "activation"}, calibration=batches)
    ratios = _ratios_by_hooks(model, batches)
    least = {
        kind: sorted(
            i
            for i in range(3)
            if ratios[i, kind] <= sorted(ratios[j, kind] for j in range(3))[n - 1]
        )
        for kind, n in (("attention", 2), ("mlp", 1))
    }
    dropped = _dropped(child)
    assert sorted(i for i, k in dropped.items() if "attention" in k) == least["attention"]
    assert sorted(i for i, k in dropped.items() if "mlp" in k) == least["mlp"]
    with torch.no_grad():
        got = child.model(**inputs)["logits"]
    torch.testing.assert_close(got, _reference(model, inputs, dropped), rtol=0, atol=1e-5)
    # data-free: the blocks of the layers nearest the middle (the later first on a tie)
    free = subclone(parent, {**plan, "importance": "weight"}, inputs)
    assert _dropped(free) == {1: ("attention", "mlp"), 2: ("attention",)}


def test_a_nemotron_nas_folder_with_no_op_blocks_runs_in_llama_cpp_as_the_child(llama, tmp_path):
    """A per-layer child with a dropped attention (layer 2, the last) and a layer whose
    attention and MLP are both dropped (layer 1), written with the format's no-op blocks,
    converted by llama.cpp's own converter and run by llama.cpp: its logits at every
    position are the graph child's within 2e-3 of the largest logit. The graph child is the
    parent with those blocks zeroed and its MLPs cut by hand."""
    from surgeon.emit.nas import check_nas, write_nas
    from tests.test_layout import _by_hand

    model, inputs, parent = llama
    plan = {
        "target": {"intermediate_size": 512, "drop_blocks": {"attention": [1, 2], "mlp": [1]}},
        "importance": "weight",
        "rescale": "none",
        "layout": "per_layer",
    }
    child = subclone(parent, plan, inputs)
    widths = [len(k.get("intermediate_size", [])) for k in child.kept["per_layer"]]
    assert widths[1] == 0 and sum(widths) == 2 * 512  # the dropped MLP's neurons go elsewhere
    kept = [
        k if "intermediate_size" in k else {"intermediate_size": [0]}
        for k in child.kept["per_layer"]
    ]
    reference = _by_hand(model, kept)
    with torch.no_grad():
        want = _reference(reference, inputs, _dropped(child))
        torch.testing.assert_close(child.model(**inputs)["logits"], want, rtol=0, atol=1e-5)
    config = write_nas(child, tmp_path)
    zoo.save_letter_tokenizer(tmp_path)
    blocks = config["block_configs"]
    assert blocks[1] == {
        "attention": {"n_heads_in_group": None, "no_op": True, "replace_with_linear": False},
        "ffn": {"ffn_mult": None, "no_op": True, "replace_with_linear": False},
    }
    assert blocks[2]["attention"]["no_op"] and not blocks[2]["ffn"]["no_op"]
    assert [b["attention"]["n_heads_in_group"] for b in blocks] == [2, None, None]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        stored = set(f.keys())
    assert not [k for k in stored if k.startswith(("model.layers.1.", "model.layers.2.self_attn"))]
    result = check_nas(child, tmp_path, inputs)
    assert result["max_relative_difference"] < 2e-3


def test_what_llama_cpp_cannot_run_is_refused_in_one_line_before_it_runs(llama, tmp_path):
    """llama.cpp's DeciLM graph skips a layer's attention where its FFN is a no-op: an MLP
    dropped alone is written as the format states it, and the check refuses it."""
    from surgeon.emit.nas import check_nas, write_nas

    model, inputs, parent = llama
    plan = {"target": {"drop_blocks": {"mlp": [2]}}, "importance": "weight"}
    child = subclone(parent, plan, inputs)
    config = write_nas(child, tmp_path)
    assert config["block_configs"][2]["ffn"] == {
        "ffn_mult": None,
        "no_op": True,
        "replace_with_linear": False,
    }
    with pytest.raises(SurgeonError, match="layer 2 drops its MLP and keeps its attention") as e:
        check_nas(child, tmp_path, inputs)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "model.f32.gguf").exists()


def _one_line(match: str, fn, *args):
    with pytest.raises((PlanError, SurgeonError), match=match) as e:
        fn(*args)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_impossible_requests_are_one_line(llama):
    model, inputs, parent = llama

    def cut(target, source=parent, example=inputs, **more):
        return subclone(source, {"target": target, "importance": "weight", **more}, example)

    _one_line("drop_blocks.attention = 5: this model has 3", cut, {"drop_blocks": {"attention": 5}})
    _one_line("lists layer 7.*the parent has 3 layers", cut, {"drop_blocks": {"mlp": [7]}})
    shallow = {"num_layers": 2, "drop_blocks": {"mlp": [2]}}
    _one_line("lists layer 2.*layer 2 is not kept", lambda: cut(shallow, depth="last"))
    _one_line(
        "cannot hold dropped blocks",
        load_plan,
        {"target": {"drop_blocks": {"mlp": 1}}, "emit": "hf"},
    )
    _one_line(
        "drop_blocks.mlp must be a count", load_plan, {"target": {"drop_blocks": {"mlp": -1}}}
    )
    bert, bert_inputs = zoo.build("bert")
    message = _one_line(
        "drop_blocks.mlp = 1: this model has 0", cut, {"drop_blocks": {"mlp": 1}}, bert, bert_inputs
    )
    assert "post-norm" in message
    cohere = zoo.parallel_blocks()
    ids = torch.randint(3, 60, (2, 8), generator=torch.Generator().manual_seed(0))
    message = _one_line(
        "drop_blocks.mlp = 1: this model has 0",
        cut,
        {"drop_blocks": {"mlp": 1}},
        cohere,
        {"input_ids": ids},
    )
    assert "parallel block" in message


@pytest.mark.parametrize("layout", ["uniform", "per_layer"])
def test_a_budget_counts_the_dropped_blocks_as_gone(llama, layout):
    """Under `target.parameters` the solver's sizes leave the dropped blocks out of the
    count: the child, as built, fits the budget, and the record is its count. A uniform
    child uses 0.97 of it or more; per_layer deals FFN neurons in steps of 256 here, which
    leaves up to a step per layer unused (as without dropped blocks)."""
    model, inputs, parent = llama
    budget = int(0.55 * sum(p.numel() for p in model.parameters()))
    target = {"parameters": budget, "num_layers": 3, "drop_blocks": {"attention": 1, "mlp": [2]}}
    plan = {"target": target, "importance": "weight", "layout": layout}
    child = subclone(parent, plan, inputs)
    built = sum(p.numel() for p in child.model.parameters())
    assert (0.97 if layout == "uniform" else 0.8) * budget <= built <= budget
    widths = {"hidden_size", "intermediate_size", "num_heads", "num_kv_heads"}
    assert widths & set(child.cut.surgery.plan.target)  # the solver cut widths too
    assert child.cut.surgery.budget["child_parameters"] == built
    assert len(_dropped(child)) == 2
