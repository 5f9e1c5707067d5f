"""Mixture-of-experts decoders: a layer's routed experts are one group (the router's rows
and every expert's stacked weights), found in the graph where a router's top-k indices
pick rows of the expert weights. Permuting them keeps the output; `num_experts` cuts
them, keeping the experts the importance ranks first."""

import copy

import pytest
import torch

from surgeon import PlanError, apply, prepare
from surgeon.analysis import permuted_tensors
from tests import zoo

EXPERTS = 8


@pytest.fixture(params=zoo.MOE_NAMES)
def moe(request, prepared):
    return prepared(request.param)


def _logits(model, example) -> torch.Tensor:
    with torch.no_grad():
        return model(**example).logits


def _stacked(model, layer: str) -> dict[str, torch.Tensor]:
    """The layer's tensors with one slice per routed expert (router rows included)."""
    return {
        n: t
        for n, t in model.state_dict().items()
        if n.startswith(layer + ".") and t.dim() >= 1 and t.shape[0] == EXPERTS
    }


def test_experts_are_one_group_per_layer(moe):
    analysis = moe.parent.analysis
    assert len(analysis.layers) == moe.model.config.num_hidden_layers
    for layer in analysis.layers:
        assert layer.num_experts == EXPERTS and len(layer.experts) == 1
        group = analysis.groups[layer.experts[0]]
        assert group.movable and group.role == "experts"
        members = {name for name, axis in group.members if axis == 0}
        assert members == set(_stacked(moe.model, layer.name)), layer.name
        assert len(layer.ffn) == (2 if moe.name == "qwen2_moe" else 1)  # + the shared expert


def test_permuting_experts_keeps_the_output_and_one_tensor_alone_breaks_it(moe):
    analysis = moe.parent.analysis
    reference = _logits(moe.model, moe.example)
    perm = torch.randperm(EXPERTS, generator=torch.Generator().manual_seed(0))
    for layer in analysis.layers:
        group = layer.experts[0]
        model = copy.deepcopy(moe.model)
        model.load_state_dict(permuted_tensors(analysis, {group: perm}), strict=False)
        torch.testing.assert_close(_logits(model, moe.example), reference, atol=1e-5, rtol=1e-5)
        router = min(_stacked(moe.model, layer.name), key=lambda n: moe.model.state_dict()[n].dim())
        model = copy.deepcopy(moe.model)
        only = {(router, 0)}
        model.load_state_dict(permuted_tensors(analysis, {group: perm}, only), strict=False)
        assert (_logits(model, moe.example) - reference).abs().max() > 1e-4


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe"])  # OLMoE routes as Mixtral does
def test_num_experts_cuts_router_and_experts_together(name, prepared, tmp_path):
    moe = prepared(name)
    target = {"num_experts": 4, "hidden_size": 32, "num_heads": 2, "num_kv_heads": 1}
    child = apply(moe.parent, {"target": target})
    config = child.config
    assert getattr(config, "num_local_experts", getattr(config, "num_experts", None)) == 4
    assert config.num_experts_per_tok == 2
    for layer in moe.parent.analysis.layers:
        for name in _stacked(moe.model, layer.name):
            assert child.state_dict()[name].shape[0] == 4, name
    logits = _logits(child, moe.example)
    assert torch.isfinite(logits).all()
    child.save_pretrained(tmp_path)
    back = type(child).from_pretrained(tmp_path)
    torch.testing.assert_close(_logits(back, moe.example), logits, atol=1e-6, rtol=1e-6)


def test_fewer_experts_than_a_token_is_routed_to_is_refused(prepared):
    parent = prepared("mixtral").parent
    with pytest.raises(PlanError, match=r"routed to 2 experts .* keep at least 2"):
        apply(parent, {"target": {"num_experts": 1}})


IMPORTANT = [1, 3, 4, 6]
OTHERS = [e for e in range(EXPERTS) if e not in IMPORTANT]


def _rigged_mixtral(rig: str):
    """A Mixtral whose experts IMPORTANT matter by construction. `routed`: the router sends
    tokens only to them (its rows for the others are zero; theirs large, in opposite
    pairs, so two of them score above zero for any token) while the others
    have the larger weights, so routing and weight magnitude disagree. `output`: every
    expert is routed as the random router likes, but the others' outputs are 100x
    smaller (their down projections scaled down)."""
    model, example = zoo.build("mixtral")
    with torch.no_grad():
        for layer in model.model.layers:
            experts = layer.mlp.experts
            if rig == "routed":  # rows +u, -u, +v, -v: every token has two positive
                gate = layer.mlp.gate.weight  # logits among them, the others' are 0
                u, v = gate[IMPORTANT[0]].clone(), gate[IMPORTANT[1]].clone()
                gate[OTHERS] = 0
                gate[IMPORTANT] = 50 * torch.stack([u, -u, v, -v])
                experts.gate_up_proj[OTHERS] *= 10
                experts.down_proj[OTHERS] *= 10
            else:
                experts.down_proj[OTHERS] *= 0.01
    return model, example


def _kept(parent_model, child) -> set[int]:
    """Which parent experts the child holds, matched by the norm of their up projection
    (which the reordering of its other axes keeps)."""
    parent_w = parent_model.model.layers[0].mlp.experts.gate_up_proj.detach()
    child_w = child.model.layers[0].mlp.experts.gate_up_proj.detach()
    norms = parent_w.flatten(1).norm(dim=1)
    return {int((norms - w.norm()).abs().argmin()) for w in child_w}


@pytest.mark.parametrize(
    ("rig", "plans"),
    [
        (
            "routed",
            [
                ({"importance": "activation", "expert_importance": "frequency"}, IMPORTANT),
                ({"importance": "weight"}, OTHERS),
            ],
        ),
        (  # the random router's favourites are not IMPORTANT: frequency keeps others
            "output",
            [
                ({"importance": "activation", "expert_importance": "reap"}, IMPORTANT),
                ({"importance": "activation", "expert_importance": "frequency"}, None),
            ],
        ),
    ],
)
def test_the_importance_keeps_the_experts_it_ranks_first(rig, plans):
    """`expect` None: anything but IMPORTANT (so the REAP case cannot pass by falling back
    to routing frequency)."""
    model, example = _rigged_mixtral(rig)
    parent = prepare(model, example)
    for plan, expect in plans:
        calibration = [example] * 2 if plan["importance"] == "activation" else None
        child = apply(parent, {"target": {"num_experts": 4}, **plan}, calibration=calibration)
        kept = _kept(model, child)
        assert kept == set(expect) if expect is not None else kept != set(IMPORTANT), plan
