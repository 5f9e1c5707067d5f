"""Budgets (`target: {parameters: N}`): the solver's sizes give a child that fits, counted
by the child as built (`sum(p.numel())`), not by the solver's own arithmetic."""

from __future__ import annotations

import pytest
import torch

import surgeon
from surgeon.api import dry_run, subclone
from surgeon.errors import PlanError
from surgeon.plan import load_plan
from tests.zoo import build


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_a_reachable_budget_is_met_within_three_percent(prepared, name):
    """The budget of a child a hand plan makes (its built count) is met: the solver's
    child counts at most that and at least 0.97 of it, and the count it records is the
    built child's."""
    p = prepared(name)
    kv = {"num_kv_heads": 1} if name == "llama" else {}  # query heads per KV group kept
    target = {"num_layers": 2, "hidden_size": 32, "num_heads": 2, **kv}
    hand = subclone(p.parent, {"target": target})
    budget = _count(hand.model)
    child = subclone(p.parent, {"target": {"parameters": budget}, "recipe": "data-free"})
    built = _count(child.model)
    assert 0.97 * budget <= built <= budget
    assert child.cut.surgery.budget["child_parameters"] == built
    assert child.cut.surgery.budget["parameters"] == budget


def test_every_budget_gives_a_child_that_fits_and_keeps_what_the_plan_fixes(prepared):
    p = prepared("llama")
    total = _count(p.model)
    for share in (0.35, 0.5, 0.7, 0.9):
        budget = int(share * total)
        plan = {"target": {"parameters": budget, "num_layers": 2}, "recipe": "data-free"}
        child = subclone(p.parent, plan)
        assert _count(child.model) <= budget
        assert child.model.config.num_hidden_layers == 2
        assert child.cut.sizes["num_layers"] == 2


def test_a_per_layer_budget_keeps_every_layer_and_cuts_widths(prepared):
    """With `layout: per_layer` and no `num_layers` in the target, the budget is met by
    the widths, every parent layer kept: the child of the plan that states them."""
    p = prepared("llama")
    budget = int(0.3 * _count(p.model))  # the uniform child of it keeps 2 of the 3 layers
    plan = {"target": {"parameters": budget}, "recipe": "data-free", "layout": "per_layer"}
    child = subclone(p.parent, plan)
    stated = subclone(p.parent, {**plan, "target": {"parameters": budget, "num_layers": 3}})
    assert child.cut.kept["layers"] == [0, 1, 2]
    assert child.cut.kept == stated.cut.kept
    assert _count(child.model) <= budget


def _active(model) -> float:
    """What one token uses, by hand: each routed expert's FFN tensors (the fused
    `experts.*` of Mixtral and Qwen2-MoE) at top-k / experts, everything else whole."""
    c = model.config
    share = c.num_experts_per_tok / (getattr(c, "num_local_experts", None) or c.num_experts)
    named = model.named_parameters()
    return sum(t.numel() * (share if ".experts." in n else 1) for n, t in named)


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe"])
def test_an_active_parameter_budget_counts_experts_at_top_k(prepared, name):
    """`target: {active_parameters: N}` on a mixture of experts: the budget of a hand
    plan's child, counted by hand, is met within three percent, and the count the solver
    records is the hand count of its child."""
    p = prepared(name)
    target = {"num_layers": 2, "hidden_size": 32, "num_heads": 2, "num_kv_heads": 1}
    budget = int(_active(subclone(p.parent, {"target": target}).model))
    plan = {"target": {"active_parameters": budget}, "recipe": "data-free"}
    child = subclone(p.parent, plan)
    active = _active(child.model)
    assert 0.97 * budget <= active <= budget
    assert child.cut.surgery.budget["child_active_parameters"] == active
    assert _count(child.model) > active  # the experts a token skips are still there
    assert "active parameters" in dry_run(p.parent, plan)


def test_an_active_parameter_budget_on_a_dense_model_is_a_one_line_error(prepared):
    with pytest.raises(PlanError, match="state target.parameters instead"):
        subclone(prepared("llama").parent, {"target": {"active_parameters": 1000}})


def test_validate_states_the_chosen_sizes_and_the_budget_used(prepared):
    p = prepared("llama")
    budget = int(0.6 * _count(p.model))
    line = dry_run(p.parent, {"target": {"parameters": budget}})
    assert f"budget {budget:,} parameters" in line and "of it used" in line
    assert "->" in line  # the sizes the solver chose, parent -> child


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ({"target": {"parameters": 10}}, "below the smallest child"),
        ({"target": {"parameters": 10**12}}, "not below the parent's"),
    ],
)
def test_impossible_budgets_are_one_line_errors(prepared, plan, message):
    with pytest.raises(PlanError, match=message) as e:
        dry_run(prepared("llama").parent, plan)
    assert "\n" not in str(e.value)


def test_budget_keys_are_checked_by_the_schema():
    with pytest.raises(PlanError, match="parameters"):
        load_plan({"target": {"parameters": 0}})
    with pytest.raises(PlanError, match="stacks"):
        load_plan({"target": {"parameters": 1000}, "stacks": {"model.layers": {"num_layers": 1}}})
    plan = load_plan({"target": {"parameters": 60_000_000}})
    assert plan.budget == {"parameters": 60_000_000} and "parameters" not in plan.target
    assert "parameters at most 60,000,000" in plan.describe()


def test_a_memory_budget_counts_weights_and_the_kv_cache(prepared):
    """Weights in float32 plus a KV cache of 32 tokens x 2 sequences: the child's bytes,
    computed here from the built child and its config, fit and use at least 0.97."""
    p = prepared("llama")
    config = p.model.config
    head_dim = config.hidden_size // config.num_attention_heads

    def used(model):
        c = model.config
        cache = c.num_hidden_layers * c.num_key_value_heads * 2 * head_dim * 32 * 2 * 4
        return _count(model) * 4 + cache

    hand = subclone(p.parent, {"target": {"num_layers": 2, "intermediate_size": 64}})
    limit = used(hand.model)
    memory = {"bytes": limit, "context": 32, "batch": 2, "dtype": "float32"}
    child = subclone(p.parent, {"target": {"memory": memory}, "recipe": "data-free"})
    assert 0.97 * limit <= used(child.model) <= limit
    assert child.cut.surgery.budget["child_bytes"] == used(child.model)
    with pytest.raises(PlanError, match="one budget at a time"):
        load_plan({"target": {"parameters": 10, "memory": memory}})
    with pytest.raises(PlanError, match="context"):
        load_plan({"target": {"memory": {"bytes": 10}}})


@pytest.mark.parametrize("name", ["gpt_neox", "bert", "vit", "mixtral", "qwen2_moe"])
def test_budgets_fit_encoders_vision_and_experts(prepared, name):
    """Half the parent's parameters on other kinds of model (an encoder, a vision
    transformer, routed experts with and without a shared expert): the built child fits
    and its count is the one recorded."""
    p = prepared(name)
    budget = _count(p.model) // 2
    child = subclone(p.parent, {"target": {"parameters": budget}, "recipe": "data-free"})
    built = _count(child.model)
    assert 0.8 * budget <= built <= budget  # the toy widths move in steps of a third
    assert child.cut.surgery.budget["child_parameters"] == built


@pytest.mark.parametrize("recipe", ["data-free", "surgeon"])
def test_a_budget_cuts_the_neurons_that_carry_nothing_and_keeps_the_parents_output(recipe):
    """Where half of every layer's FFN neurons carry nothing (their weights zero, so
    neither the weights nor the activations score them), a budget of the child without
    them keeps every layer, the whole hidden size and every head, and cuts exactly those
    neurons: of the children that fit, the one that keeps all the importance; unrescaled,
    it computes the parent's output. By sizes (`importance: first`, no scores), the
    solver drops a layer instead and keeps more neurons in the others."""
    model, example = build(
        "llama", tie_word_embeddings=False, hidden_size=128, intermediate_size=512
    )
    dead = torch.arange(1, 512, 2)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate_proj.weight[dead] = 0
            layer.mlp.up_proj.weight[dead] = 0
            layer.mlp.down_proj.weight[:, dead] = 0
    parent = surgeon.prepare(model, example)
    data = {"calibration": [example]} if recipe == "surgeon" else {}
    budget = _count(subclone(parent, {"target": {"intermediate_size": 256}}).model)
    plan = {"target": {"parameters": budget}, "recipe": recipe, "rescale": "none"}
    child = subclone(parent, plan, **data)
    assert child.cut.surgery.budget["chosen_by"] == "importance"
    sizes = child.cut.sizes
    assert (sizes["num_layers"], sizes["hidden_size"], sizes["intermediate_size"]) == (3, 128, 256)
    assert (sizes["num_heads"], sizes["num_kv_heads"]) == (4, 2)
    alive = list(range(0, 512, 2))
    assert all(sorted(kept["intermediate_size"]) == alive for kept in child.cut.kept["per_layer"])
    with torch.no_grad():
        torch.testing.assert_close(
            child.model(**example).logits, model(**example).logits, rtol=1e-4, atol=1e-5
        )
    by_size = subclone(parent, {**plan, "importance": "first"}, **data)
    assert by_size.cut.surgery.budget["chosen_by"] == "size"
    assert by_size.cut.sizes["num_layers"] == 2


def test_a_dry_run_without_the_data_says_its_budget_sizes_may_differ(prepared):
    """`surgeon validate` of a budget plan scored on calibration data it does not have
    chooses by size, and says that the child is cut to other sizes where importance
    chooses them."""
    p = prepared("llama")
    budget = int(0.6 * _count(p.model))
    line = dry_run(p.parent, {"target": {"parameters": budget}, "recipe": "surgeon"})
    assert "sizes chosen here by size" in line
    line = dry_run(p.parent, {"target": {"parameters": budget}, "importance": "first"})
    assert "sizes chosen here" not in line
