"""A hybrid decoder: linear-attention layers beside softmax attention in one stack
(Qwen3.5's gated delta net, whose head counts are config fields of their own,
`linear_num_key_heads` / `linear_num_value_heads`). A heads target cuts the attention
whose heads the config states (`num_attention_heads`); the linear attention keeps its
heads. The reference is the parent's tensors sliced by hand, loaded into a fresh model
of the parent's class with the child's config."""

import pytest
import torch

from surgeon import apply, inspect, prepare
from surgeon.errors import PlanError
from tests import zoo

# most tests here build and trace the same hybrid: on one xdist worker, traced once
pytestmark = pytest.mark.xdist_group("qwen3_5_text")


def _logits(model, example):
    with torch.no_grad():
        return model(**example).logits


def test_heads_cut_the_configs_attention_and_keep_the_linear_attentions():
    model, example = zoo.build("qwen3_5_text")  # its biases and norms random
    parent = prepare(model, example)
    kept = [x["name"] for x in inspect(parent).to_dict()["layers"] if "heads_kept" in x]
    assert kept == ["model.layers.0", "model.layers.2"]  # the linear-attention layers

    target = {"num_heads": 2, "num_kv_heads": 1}
    child = apply(parent, {"target": target, "importance": "first", "rescale": "none"})
    config = child.config
    assert (config.num_attention_heads, config.num_key_value_heads) == (2, 1)
    assert (config.linear_num_key_heads, config.linear_num_value_heads) == (2, 4)

    # by hand: KV head 0 and the two query heads of its group (heads 0 and 1); each
    # query head's rows are [query (16) | gate (16)], so q_proj keeps rows [0, 64)
    want = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for i in (1, 3):
        a = f"model.layers.{i}.self_attn."
        want[a + "q_proj.weight"] = want[a + "q_proj.weight"][:64]
        want[a + "k_proj.weight"] = want[a + "k_proj.weight"][:16]
        want[a + "v_proj.weight"] = want[a + "v_proj.weight"][:16]
        want[a + "o_proj.weight"] = want[a + "o_proj.weight"][:, :32]
    got = child.state_dict()
    assert set(got) == set(want)
    for key, tensor in want.items():
        torch.testing.assert_close(got[key], tensor, atol=0, rtol=0, msg=key)
    fresh = type(model)(config).eval()
    fresh.load_state_dict(want)
    torch.testing.assert_close(
        _logits(child, example), _logits(fresh, example), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("name", ["conv_mixer", "gated_conv_mixer"])
def test_a_convolutions_channels_are_not_the_ffn(name):
    """The channels of a short convolution (a token mixer) are kept, and so is the rank of
    a low-rank projection into them (a gate's): `intermediate_size` cuts the MLP alone,
    as a hand slice of its two projections."""
    make = getattr(zoo, name)
    model, example = make()
    parent = prepare(model, example)
    layers = inspect(parent).to_dict()["layers"]
    assert [x["intermediate_size"] for x in layers] == [24, 24]
    child = apply(
        parent, {"target": {"intermediate_size": 8}, "importance": "first", "rescale": "none"}
    )
    want = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for i in (0, 1):
        m = f"layers.{i}."
        want[m + "up.weight"], want[m + "up.bias"] = (
            want[m + "up.weight"][:8],
            want[m + "up.bias"][:8],
        )
        want[m + "down.weight"] = want[m + "down.weight"][:, :8]
    reference, _ = make()
    for layer in reference.layers:
        layer.up, layer.down = torch.nn.Linear(12, 8), torch.nn.Linear(8, 12)
    reference.load_state_dict(want)
    with torch.no_grad():
        torch.testing.assert_close(child(*example), reference(*example), atol=1e-6, rtol=1e-6)


def test_a_size_no_kept_layer_holds_is_stated_as_the_plan_cut_it():
    """Depth keeps only the linear-attention layers, so no kept layer holds the softmax
    attention's heads: the child's config states them as the plan cut them (2 of 4, 1 KV
    head of 2), not the parent's, and the child computes what a fresh model of its class
    holding the kept layers' weights computes."""
    model, example = zoo.build("qwen3_5_text")
    parent = prepare(model, example)
    plan = {"target": {"num_heads": 2, "num_kv_heads": 1}, "depth": [0, 2], "rescale": "none"}
    child = apply(parent, {**plan, "importance": "first"})
    config = child.config
    assert (config.num_attention_heads, config.num_key_value_heads) == (2, 1)
    assert config.layer_types == ["linear_attention"] * 2
    want = {}
    for name, value in model.state_dict().items():
        layer = name.split(".")[2] if name.startswith("model.layers.") else None
        if layer in ("1", "3"):
            continue
        if layer == "2":
            name = name.replace("model.layers.2.", "model.layers.1.")
        want[name] = value
    reference = type(model)(config).eval()
    reference.load_state_dict(want)
    with torch.no_grad():
        torch.testing.assert_close(child(**example).logits, reference(**example).logits)


def test_a_head_count_other_layers_read_is_not_cut_when_no_attention_is_kept():
    """RecurrentGemma's recurrent gates are block-diagonal in `num_attention_heads` blocks.
    With its only attention layer dropped, cutting heads would cut those blocks, which the
    child keeps: refused in one line naming the field and the tensor (the child had 4
    heads in its config against the plan's 2). Without the heads, the plan goes through and
    the child computes what a fresh model of its class holding the kept layers computes."""
    model, example = zoo.build("recurrent_gemma")
    parent = prepare(model, example)
    plan = {"target": {"num_heads": 2, "num_kv_heads": 1}, "depth": [0, 1], "rescale": "none"}
    with pytest.raises(PlanError, match=r"target\.num_heads = 2: .*num_attention_heads also "
                       r"sizes model\.layers\.0\.temporal_block\.rg_lru"):  # fmt: skip
        apply(parent, {**plan, "importance": "first"})
    child = apply(parent, {"depth": [0, 1], "rescale": "none", "importance": "first"})
    assert child.config.num_attention_heads == 4
    assert child.config.num_hidden_layers == 2
    reference = type(model)(child.config).eval()
    want = {k: v for k, v in model.state_dict().items() if ".layers.2." not in k}
    reference.load_state_dict(want)
    with torch.no_grad():
        torch.testing.assert_close(child(**example).logits, reference(**example).logits)


def test_a_counted_depth_keeps_one_softmax_attention_layer():
    """`depth: last` keeping 1 of 4 layers would keep layer 0, a linear-attention layer:
    a hybrid's child keeps one layer of the config's softmax attention (its cache needs
    one), so the nearest, layer 1, comes in for it. The child computes what a fresh model
    of its class holding layer 1's weights computes."""
    model, example = zoo.build("qwen3_5_text")
    parent = prepare(model, example)
    child = apply(parent, {"target": {"num_layers": 1}, "depth": "last", "importance": "first"})
    assert child.config.layer_types == ["full_attention"]
    want = {}
    for name, value in model.state_dict().items():
        layer = name.split(".")[2] if name.startswith("model.layers.") else None
        if layer in ("0", "2", "3"):
            continue
        want[name.replace("model.layers.1.", "model.layers.0.")] = value
    reference = type(model)(child.config).eval()
    reference.load_state_dict(want)
    with torch.no_grad():
        torch.testing.assert_close(child(**example).logits, reference(**example).logits)


@pytest.mark.parametrize(
    ("picked", "scores", "want"),
    [
        ([0], None, [1]),  # the nearest attention layer, for the kept one nearest it
        ([0, 2], None, [1, 2]),  # 1 and 3 are as near; 1, then 0 and 2 as near to it: 0
        ([0, 2], [0.5, 0.1, 0.3, 0.9], [0, 3]),  # the best attention layer for the worst kept
        ([0, 1], None, [0, 1]),  # already keeps one
    ],
)
def test_which_attention_layer_comes_in_for_which(picked, scores, want):
    from surgeon.passes.depth import keep_one_of

    assert keep_one_of(picked, [1, 3], set(), scores) == want
