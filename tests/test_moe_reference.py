"""Mixture-of-experts children against hand-sliced references: one plan cuts the routed
experts, each expert's width, the shared experts' width (and a dense layer's), and the
child must equal the parent's tensors taken by hand at those positions, loaded into a
fresh model of the parent's class with the smaller config.

With `importance: first` and `rescale: none` nothing is reordered or scaled: the child
keeps the leading positions of every cut axis. By hand, per layout:

- experts: the router's first rows (and its score-correction bias, or the per-expert
  scale Gemma 4 gathers by the routing indices); with group-limited routing
  (DeepSeek-V3's 2 groups of 4) the first experts of every group;
- a routed expert's width, in its stacked tensors: gate rows [0, w) and up rows
  [I, I + w) of a fused (gate | up) axis of 2I (Qwen2-MoE, DeepSeek-V3); the first 2w
  positions of an interleaved one (gpt-oss: gate at even positions, up at odd);
- shared experts and dense MLPs (Gemma 4's beside its experts, in their block, is cut as
  a shared expert and written as its config's intermediate_size): gate/up rows and down
  columns [0, w).
"""

import pytest
import torch

from surgeon import PlanError, apply, prepare
from surgeon.api import subclone
from surgeon.frontends import output_tensors
from tests import zoo
from tests.helpers import assert_child_is_a_hand_slice


def _build(name):
    """A zoo parent whose 1-D parameters (biases, norms, score corrections) are distinct
    random values, so a wrong slice of them shows."""
    return zoo.build(name)  # its biases, norms and score corrections random


def _fused(w, width, full):
    """Rows of a (gate | up) axis of 2 * full kept for `width` units, on axis -2."""
    keep = torch.cat([torch.arange(width), full + torch.arange(width)])
    return w.index_select(-2, keep)


def _qwen2_moe(P, experts, moe, shared):
    out = dict(P)
    for i in range(3):
        m = f"model.layers.{i}.mlp."
        out[m + "gate.weight"] = P[m + "gate.weight"][experts]
        out[m + "experts.gate_up_proj"] = _fused(P[m + "experts.gate_up_proj"][experts], moe, 32)
        out[m + "experts.down_proj"] = P[m + "experts.down_proj"][experts][..., :moe]
        for proj in ("gate_proj", "up_proj"):
            out[m + f"shared_expert.{proj}.weight"] = P[m + f"shared_expert.{proj}.weight"][:shared]
        out[m + "shared_expert.down_proj.weight"] = P[m + "shared_expert.down_proj.weight"][
            :, :shared
        ]
    return out


def _deepseek_v3(P, experts, moe, shared, dense):
    out = dict(P)
    m = "model.layers.0.mlp."  # the dense first layer
    for proj in ("gate_proj", "up_proj"):
        out[m + f"{proj}.weight"] = P[m + f"{proj}.weight"][:dense]
    out[m + "down_proj.weight"] = P[m + "down_proj.weight"][:, :dense]
    for i in (1, 2):
        m = f"model.layers.{i}.mlp."
        out[m + "gate.weight"] = P[m + "gate.weight"][experts]
        out[m + "gate.e_score_correction_bias"] = P[m + "gate.e_score_correction_bias"][experts]
        out[m + "experts.gate_up_proj"] = _fused(P[m + "experts.gate_up_proj"][experts], moe, 32)
        out[m + "experts.down_proj"] = P[m + "experts.down_proj"][experts][..., :moe]
        for proj in ("gate_proj", "up_proj"):
            out[m + f"shared_experts.{proj}.weight"] = P[m + f"shared_experts.{proj}.weight"][
                :shared
            ]
        out[m + "shared_experts.down_proj.weight"] = P[m + "shared_experts.down_proj.weight"][
            :, :shared
        ]
    return out


def _gpt_oss(P, experts, moe):
    out = dict(P)
    for i in range(3):
        m = f"model.layers.{i}.mlp."
        for name in ("router.weight", "router.bias", "experts.down_proj_bias"):
            out[m + name] = P[m + name][experts]
        out[m + "experts.gate_up_proj"] = P[m + "experts.gate_up_proj"][experts][..., : 2 * moe]
        out[m + "experts.gate_up_proj_bias"] = P[m + "experts.gate_up_proj_bias"][experts][
            :, : 2 * moe
        ]
        out[m + "experts.down_proj"] = P[m + "experts.down_proj"][experts][:, :moe]
    return out


def _gemma4_text(P, experts, moe, dense):
    out = dict(P)
    for i in range(3):
        m = f"model.layers.{i}."
        for name in ("router.proj.weight", "router.per_expert_scale"):
            out[m + name] = P[m + name][experts]
        out[m + "experts.gate_up_proj"] = _fused(P[m + "experts.gate_up_proj"][experts], moe, 32)
        out[m + "experts.down_proj"] = P[m + "experts.down_proj"][experts][..., :moe]
        for proj in ("gate_proj", "up_proj"):
            out[m + f"mlp.{proj}.weight"] = P[m + f"mlp.{proj}.weight"][:dense]
        out[m + "mlp.down_proj.weight"] = P[m + "mlp.down_proj.weight"][:, :dense]
    return out


def _muse_spark_text(P, experts, moe):
    """The experts' own space (pre_expert_proj's rows, its norm, post_expert_proj's
    columns, the stacked weights' other axis: 48) is kept whole."""
    out = dict(P)
    for i in range(2):
        m = f"layers.{i}.mlp."
        out[m + "gate.weight"] = P[m + "gate.weight"][experts]
        out[m + "gate.e_score_correction_bias"] = P[m + "gate.e_score_correction_bias"][experts]
        out[m + "experts.gate_up_proj"] = _fused(P[m + "experts.gate_up_proj"][experts], moe, 32)
        out[m + "experts.down_proj"] = P[m + "experts.down_proj"][experts][..., :moe]
    return out


def _inkling_text(P, experts, moe, hidden):
    """Routed experts' rows of the router, then its shared experts' (its last 2); heads in
    whole KV groups: the sliding layer's 4 heads on 1 KV head keep heads 0 and 1, the
    full layer's 2 per KV head keep the first of each (heads 0 and 2); the residual
    stream's first `hidden` positions everywhere."""
    out = dict(P)
    h = slice(0, hidden)
    for i, heads in ((0, [0, 1]), (1, [0, 2])):
        m = f"model.layers.{i}."
        q = torch.cat([torch.arange(16 * k, 16 * k + 16) for k in heads])
        r = torch.cat([torch.arange(8 * k, 8 * k + 8) for k in heads])
        a = m + "self_attn."
        out[a + "q_proj.weight"] = P[a + "q_proj.weight"][q][:, h]
        out[a + "r_proj.weight"] = P[a + "r_proj.weight"][r][:, h]
        out[a + "o_proj.weight"] = P[a + "o_proj.weight"][h][:, q]
        for proj in ("k_proj", "v_proj"):
            out[a + f"{proj}.weight"] = P[a + f"{proj}.weight"][:, h]
        e = m + "mlp."
        rows = [*experts, 8, 9]  # the routed experts kept, then the 2 shared ones
        out[e + "gate.weight"] = P[e + "gate.weight"][rows][:, h]
        out[e + "gate.e_score_correction_bias"] = P[e + "gate.e_score_correction_bias"][experts]
        fused = _fused(P[e + "experts.gate_up_proj"][experts], moe, 32)
        out[e + "experts.gate_up_proj"] = fused[..., h]
        out[e + "experts.down_proj"] = P[e + "experts.down_proj"][experts][:, h, :moe]
        for proj in ("gate_proj", "up_proj"):
            out[e + f"shared_experts.{proj}"] = P[e + f"shared_experts.{proj}"][:, :moe, h]
        out[e + "shared_experts.down_proj"] = P[e + "shared_experts.down_proj"][:, h, :moe]
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[m + f"{norm}.weight"] = P[m + f"{norm}.weight"][h]
        for conv in ("attn_sconv", "mlp_sconv"):
            out[m + f"{conv}.conv1d.weight"] = P[m + f"{conv}.conv1d.weight"][h]
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        out[name] = P[name][:, h]
    for name in ("model.embed_tokens.embed_norm.weight", "model.norm.weight"):
        out[name] = P[name][h]
    return out


CASES = {  # name: (target, the config fields it must write, the hand-sliced tensors)
    "qwen2_moe": (
        {"num_experts": 4, "moe_intermediate_size": 16, "shared_expert_intermediate_size": 24},
        {"num_experts": 4, "moe_intermediate_size": 16, "shared_expert_intermediate_size": 24},
        lambda P: _qwen2_moe(P, [0, 1, 2, 3], 16, 24),
    ),
    "deepseek_v3": (  # shared width = moe width x 2 shared experts, as its config derives
        {
            "num_experts": 4,
            "moe_intermediate_size": 16,
            "shared_expert_intermediate_size": 32,
            "intermediate_size": 48,
        },
        {"n_routed_experts": 4, "moe_intermediate_size": 16, "intermediate_size": 48, "n_group": 2},
        lambda P: _deepseek_v3(P, [0, 1, 4, 5], 16, 32, 48),
    ),
    "gpt_oss": (  # its config names the experts' width intermediate_size
        {"num_experts": 4, "moe_intermediate_size": 24},
        {"num_local_experts": 4, "intermediate_size": 24},
        lambda P: _gpt_oss(P, [0, 1, 2, 3], 24),
    ),
    "gemma4_text": (  # the dense MLP in the experts' block: its config's intermediate_size
        {"num_experts": 4, "moe_intermediate_size": 16, "shared_expert_intermediate_size": 24},
        {"num_experts": 4, "moe_intermediate_size": 16, "intermediate_size": 24},
        lambda P: _gemma4_text(P, [0, 1, 2, 3], 16, 24),
    ),
    "muse_spark_text": (  # the experts' own width, moe_hidden_size, is not cut
        {"num_experts": 4, "moe_intermediate_size": 16},
        {"num_local_experts": 4, "moe_intermediate_size": 16, "moe_hidden_size": 48},
        lambda P: _muse_spark_text(P, [0, 1, 2, 3], 16),
    ),
    # one width for routed and shared experts; the sliding layers' heads follow the
    # full layers' (swa_num_attention_heads); the routing scale (8.0) stays though the
    # width it equals the square root of is cut
    "inkling_text": (
        {
            "num_experts": 4,
            "moe_intermediate_size": 16,
            "shared_expert_intermediate_size": 16,
            "num_heads": 2,
            "hidden_size": 32,
        },
        {
            "n_routed_experts": 4,
            "moe_intermediate_size": 16,
            "num_attention_heads": 2,
            "swa_num_attention_heads": 2,
            "num_key_value_heads": 2,
            "swa_num_key_value_heads": 1,
            "hidden_size": 32,
            "route_scale": 8.0,
        },
        lambda P: _inkling_text(P, [0, 1, 2, 3], 16, 32),
    ),
}


TOP_K = {"gemma4_text": "top_k_experts"}  # the configs that name the routers' top-k otherwise


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    model, example = _build(request.param)
    return request.param, model, example, prepare(model, example)


def _logits(model, example):
    """The logits, or the last hidden state of a model without a head."""
    with torch.no_grad():
        return output_tensors(model(**example))[0]


def test_one_plan_cuts_experts_and_every_ffn_role_like_a_hand_slice(case):
    name, model, example, parent = case
    target, fields, by_hand = CASES[name]
    child = apply(parent, {"target": target, "importance": "first", "rescale": "none"})
    for field, value in fields.items():
        assert getattr(child.config, field) == value, field
    P = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert_child_is_a_hand_slice(model, example, child, by_hand(P))


def test_permuting_every_group_keeps_the_parents_output(case):
    name, model, example, parent = case
    child = apply(parent, {"importance": "weight"})
    torch.testing.assert_close(
        _logits(child, example), _logits(model, example), atol=1e-4, rtol=1e-4
    )


def test_attentions_low_rank_projections_are_not_ffn_widths():
    model, example = zoo.build("deepseek_v3")
    analysis = prepare(model, example).analysis
    roles = [sorted(layer.ffn_role.values()) for layer in analysis.layers]
    assert roles == [
        ["intermediate_size"],
        ["moe_intermediate_size", "shared_expert_intermediate_size"],
        ["moe_intermediate_size", "shared_expert_intermediate_size"],
    ]
    ranks = {g.size for g in analysis.groups.values() if g.role == "rank"}
    assert ranks == {48, 32}  # q_lora_rank, kv_lora_rank: kept


def test_the_experts_own_space_is_kept_not_an_ffn_width():
    """Experts that read the stream through a projection into a space of their own and
    write through one out of it: that space's two groups (the experts' input and output
    width, 48 each) are not the experts' width; the FFN width is the 32 inside them."""
    model, example = zoo.build("muse_spark_text")
    analysis = prepare(model, example).analysis
    sizes = {g.id: g.size for g in analysis.groups.values()}
    assert [layer.widths(sizes) for layer in analysis.layers] == [{"moe_intermediate_size": 32}] * 2
    own = [g for g in analysis.groups.values() if g.role == "rank"]
    assert sorted(g.size for g in own) == [48] * 4  # in and out, per layer: kept


def test_a_scale_equal_to_the_square_root_of_a_cut_width_stays():
    """The router scales its weights by `route_scale` (8.0), and sits in a module that
    holds the hidden size (64): a scale that is sqrt(64) by coincidence is not the
    width's square root, so the graph child keeps 8.0 where the hidden size is cut. The
    reference is transformers' forward of the child (its weights the hand slice of
    `test_one_plan_cuts_experts_and_every_ffn_role_like_a_hand_slice`)."""
    model, example = zoo.build("inkling_text")
    plan = {"target": {"hidden_size": 32}, "importance": "first", "rescale": "none"}
    child = subclone(prepare(model, example), plan)
    assert child.model.config.route_scale == 8.0
    want, got = _logits(child.model, example), _logits(child.graph, example)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize(
    ("name", "target", "message"),
    [
        ("deepseek_v3", {"num_experts": 3}, r"in 2 groups of 4 \(n_group\); keep a multiple of 2"),
        (
            "deepseek_v3",
            {"moe_intermediate_size": 16, "shared_expert_intermediate_size": 48},
            r"target.shared_expert_intermediate_size = 48: .* from other sizes, 32 with this plan",
        ),
        (
            "gpt_oss",
            {"shared_expert_intermediate_size": 8},
            r"no shared experts .* widths: moe_inter",
        ),
    ],
)
def test_a_width_the_config_cannot_hold_is_one_line(name, target, message):
    model, example = zoo.build(name)
    with pytest.raises(PlanError, match=message):
        apply(prepare(model, example), {"target": target})


def test_top_k_is_rewritten_in_the_graph_and_the_config(case):
    """`num_experts_per_tok` 1 and 3: the child routes each token to that many experts.
    The reference is transformers' own routing: a fresh model of the parent's class with
    that top-k in its config and the parent's weights (the hand-sliced ones where the
    experts are cut too)."""
    name, model, example, parent = case
    field = TOP_K.get(name, "num_experts_per_tok")
    P = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for target in ({"num_experts_per_tok": 1}, {"num_experts_per_tok": 3}):
        child = apply(parent, {"target": target, "importance": "first", "rescale": "none"})
        assert getattr(child.config, field) == target["num_experts_per_tok"]
        fresh = type(model)(child.config).eval()
        fresh.load_state_dict(P)
        torch.testing.assert_close(_logits(child, example), _logits(fresh, example))
    with pytest.raises(PlanError, match="routed to 5 experts .* keep at least 5"):
        apply(parent, {"target": {"num_experts": 4, "num_experts_per_tok": 5}})
    child = apply(parent, {"target": {"num_experts": 4, "num_experts_per_tok": 1}})
    assert getattr(child.config, field) == 1
