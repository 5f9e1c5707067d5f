"""Heads found alike in every layer (issue 32): a layer whose attention sits beside a
second product q·kᵀ that only picks keys (a sparse attention's indexer, HY-V4's), and
attention written as an einsum with an ellipsis (LongT5's local attention). Each cut of
heads is compared with the parent's class built with fewer heads and its weights sliced
by hand."""

from __future__ import annotations

import warnings

import pytest
import torch

import surgeon
from benchmarks.sweep import _like_trained, head_class, tiny_config, tiny_inputs
from surgeon.analysis.rules.linalg import _expand_ellipsis

FIRST = {"importance": "first", "rescale": "none"}


def _tiny(model_type: str, **changes):
    """The sweep's tiny model of `model_type` (`benchmarks.sweep.build`), with `changes`
    to its config (fewer layers, to stay fast), and its inputs."""
    warnings.filterwarnings("ignore")
    cls, _ = head_class(model_type)
    config = tiny_config(model_type)
    for key, value in changes.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = cls(config).eval()
    _like_trained(model)
    return model, tiny_inputs(model, config)


def _reference(model, changes: dict, sliced: dict[str, torch.Tensor]):
    """The parent's class with `changes` to its config, holding the parent's weights with
    those in `sliced` replaced."""
    config = model.config.__class__(**{**model.config.to_dict(), **changes})
    ref = type(model)(config).eval()
    state = {**model.state_dict(), **sliced}
    ref.load_state_dict(state, strict=True)
    return ref


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def test_expand_ellipsis():
    fresh = [chr(0x100 + i) for i in range(3)]
    specs, rhs = _expand_ellipsis(["...qhd", "...khd"], "...hqk", True, [5, 5])
    assert specs == ["".join(fresh[:2]) + "qhd", "".join(fresh[:2]) + "khd"]
    assert rhs == "".join(fresh[:2]) + "hqk"
    # aligned from the right: the shorter operand's ellipsis is the last of the longer's
    specs, rhs = _expand_ellipsis(["...ij", "...jk"], "...ik", True, [4, 3])
    assert specs == [fresh[0] + fresh[1] + "ij", fresh[1] + "jk"] and rhs[:2] == "".join(fresh[:2])
    assert _expand_ellipsis(["...i", "i"], "", False, [3, 4])[1] == "".join(fresh[:2])
    assert _expand_ellipsis(["....i"], "i", True, [3]) is None


@pytest.fixture(scope="module")
def longt5():
    model, inputs = _tiny("longt5", num_layers=2, num_decoder_layers=2)
    return model, inputs, surgeon.prepare(model, inputs)


def test_longt5_local_attention_heads(longt5):
    """The encoder's local attention ("...qhd,...khd->...hqk") has the config's heads, as
    the decoder's attention does; a cut to 2 of 4 heads in both stacks computes what
    LongT5 with 2 heads computes from the first 2 heads' weights."""
    model, inputs, parent = longt5
    config = model.config
    heads = {(x.num_heads, x.head_dim) for x in parent.analysis.layers}
    assert heads == {(config.num_heads, config.d_kv)}
    child = surgeon.apply(parent, {**FIRST, "target": {"num_heads": 2, "num_kv_heads": 2}})
    width = 2 * config.d_kv
    sliced = {}
    for name, w in model.state_dict().items():
        if name.endswith((".q.weight", ".k.weight", ".v.weight")):
            sliced[name] = w[:width]
        elif name.endswith(".o.weight"):
            sliced[name] = w[:, :width]
        elif name.endswith("relative_attention_bias.weight"):
            sliced[name] = w[:, :2]
    assert any("LocalSelfAttention.q" in n for n in sliced)
    ref = _reference(model, {"num_heads": 2}, sliced)
    torch.testing.assert_close(_logits(child, inputs), _logits(ref, inputs), atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def hy_v4():
    model, inputs = _tiny(
        "hy_v4",
        num_hidden_layers=2,
        mlp_layer_types=["dense", "sparse"],
        indexer_types=["full", "shared"],
        layer_types=["indexed_attention"] * 2,
    )
    return model, inputs, surgeon.prepare(model, inputs)


def test_indexer_beside_attention(hy_v4):
    """A layer with an indexer (its own 16 heads of 128, summed over to pick keys) has the
    attention's heads like one without; the indexer is kept whole, and a cut to 2 of 4
    heads computes what the class with 2 heads computes from the first 2 heads' weights."""
    model, inputs, parent = hy_v4
    config = model.config
    found = [(x.num_heads, x.head_dim) for x in parent.analysis.layers]
    assert found == [(config.num_attention_heads, config.qk_head_dim)] * 2
    # no FFN width from the attention's low-rank projections, read by the indexer too
    moe = config.moe_intermediate_size * (1 + config.n_shared_experts)
    assert [x.intermediate_size for x in parent.analysis.layers] == [config.intermediate_size, moe]
    child = surgeon.apply(parent, {**FIRST, "target": {"num_heads": 2, "num_kv_heads": 1}})
    per_head = {
        "q_b_proj": config.qk_head_dim,
        "kv_b_proj": config.qk_nope_head_dim + config.v_head_dim,
        "gate_proj": config.v_head_dim,
    }
    sliced = {}
    for name, w in model.state_dict().items():
        if ".self_attn.indexer." in name:
            continue  # kept whole
        if name.endswith(".self_attn.sinks"):
            sliced[name] = w[:2]
        elif name.endswith(".self_attn.o_proj.weight"):
            sliced[name] = w[:, : 2 * config.v_head_dim]
        for proj, size in per_head.items():
            if name.endswith(f".self_attn.{proj}.weight"):
                sliced[name] = w[: 2 * size]
    assert len(sliced) == 5 * config.num_hidden_layers
    indexer = {n: w.shape for n, w in model.state_dict().items() if ".indexer." in n}
    assert {n: child.state_dict()[n].shape for n in indexer} == indexer
    changes = {"num_attention_heads": 2, "num_key_value_heads": 2}
    ref = _reference(model, changes, sliced)
    torch.testing.assert_close(_logits(child, inputs), _logits(ref, inputs), atol=1e-5, rtol=1e-4)
