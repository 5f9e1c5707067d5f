"""Mixture-of-experts types the sweep found partial (issue 32), built tiny as
`benchmarks/sweep.py` builds them, against references surgeon does not compute:

- Ergo guards its expert ids with `clamp_max(num_experts - 1)`: the experts are cut; the
  child equals the parent's tensors taken by hand at the kept experts (the router's rows,
  its score correction, each expert's weights and its own norm), loaded into a fresh model
  of the parent's class with the child's config;
- MiMo-V2-Flash's sliding layers hold twice the config's KV heads: halving the heads
  halves every layer's KV heads (one config field states them all); the child equals the
  hand-sliced attention tensors in a fresh model of the child's config;
- Doge picks experts by product keys (ids `i * num_keys + j` of two routers' picks):
  cutting them is refused in one line that names the op and what to do.

With `importance: first` and `rescale: none` the child keeps the leading positions of
every cut axis.
"""

import pytest
import torch

from benchmarks.sweep import _like_trained, head_class, tiny_config, tiny_inputs
from surgeon import PlanError, apply, prepare
from tests.helpers import assert_child_is_a_hand_slice

PLAIN = {"importance": "first", "rescale": "none"}


def _build(model_type, **overrides):
    """The sweep's tiny model of `model_type` (its 1-D parameters random), some config
    fields smaller, and its inputs."""
    config = tiny_config(model_type)
    for field, value in overrides.items():
        setattr(config, field, value)
    for field in ("layer_types", "mlp_layer_types"):  # per layer: as many as the layers
        if isinstance(getattr(config, field, None), list):
            setattr(config, field, getattr(config, field)[: config.num_hidden_layers])
    cls, _ = head_class(model_type)
    torch.manual_seed(0)
    model = cls(config).eval()
    _like_trained(model)
    return model, tiny_inputs(model, config)


def test_clamped_expert_ids_let_the_experts_be_cut_like_a_hand_slice():
    model, inputs = _build(
        "ergo", num_hidden_layers=2, first_dense_intermediate_size=64, shared_intermediate_size=64
    )
    child = apply(prepare(model, inputs), {"target": {"num_experts": 2}, **PLAIN})
    assert child.config.num_experts == 2
    per_expert = (
        "experts.up_proj",
        "experts.down_proj",
        "experts.post_expert_norm.weight",
        "gate.linear.weight",
        "gate.e_score_correction_bias",
    )
    want = {
        k: v[:2].clone() if k.endswith(per_expert) else v.clone()
        for k, v in model.state_dict().items()
    }
    assert sum(k.endswith(per_expert) for k in want) == len(per_expert)  # one MoE layer
    assert_child_is_a_hand_slice(model, inputs, child, want)


def test_layers_with_twice_the_kv_heads_halve_them_with_the_config():
    model, inputs = _build("mimo_v2_flash", num_hidden_layers=2, v_head_dim=16)
    c = model.config
    assert c.layer_types[0] == "full_attention" and c.layer_types[1] == "sliding_attention"
    child = apply(prepare(model, inputs), {"target": {"num_heads": 2}, **PLAIN})
    assert (child.config.num_attention_heads, child.config.num_key_value_heads) == (2, 1)
    d, v = c.head_dim, c.v_head_dim
    want = {k: t.clone() for k, t in model.state_dict().items()}
    for i, kind in enumerate(c.layer_types):
        # full: 2 KV groups of 2 heads -> the first group, both its heads; sliding: 4 KV
        # heads of one query head each -> the first 2
        kv = 1 if kind == "full_attention" else 2
        a = f"model.layers.{i}.self_attn."
        want[a + "q_proj.weight"] = want[a + "q_proj.weight"][: 2 * d]
        want[a + "k_proj.weight"] = want[a + "k_proj.weight"][: kv * d]
        want[a + "v_proj.weight"] = want[a + "v_proj.weight"][: kv * v]
        want[a + "o_proj.weight"] = want[a + "o_proj.weight"][:, : 2 * v]
        if a + "sinks" in want:
            want[a + "sinks"] = want[a + "sinks"][:2]
    assert_child_is_a_hand_slice(model, inputs, child, want)


def test_experts_picked_by_product_keys_are_refused_in_one_line():
    model, inputs = _build("doge", num_hidden_layers=2)
    with pytest.raises(PlanError) as e:
        apply(prepare(model, inputs), {"target": {"num_experts": 2}})
    message = str(e.value)
    assert "\n" not in message
    assert "no routed experts found" in message
    assert "read by mul" in message and "modeling_doge.py:" in message
    assert message.endswith("leave num_experts out")
