"""Attention laid out otherwise (issue 32), each child against the parent's own class at
the child's sizes holding the parent's weights sliced by hand:

- CodeGen's fused qkv is 4 model-parallel blocks of q | v | k, each holding
  num_heads / 4 heads: heads are cut inside every block, the blocks stay 4;
- XLNet's relative positions are sines | cosines of d_model / 2 frequencies that its
  forward computes from d_model and each layer's `r` reads: with half the hidden size its
  class computes every other frequency of the parent's, and `r` keeps those rows.
"""

import copy

import pytest
import torch

import surgeon
from tests.zoo import build

FIRST = {"importance": "first", "rescale": "none"}


def _logits(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out[0]


def _narrowed(t: torch.Tensor, wide: int, keep: int) -> torch.Tensor:
    """`t` with every axis of size `wide` cut to its first `keep` positions."""
    for axis, n in enumerate(t.shape):
        if n == wide:
            t = t.narrow(axis, 0, keep)
    return t


def test_codegen_heads_are_cut_inside_each_model_parallel_block():
    model, inputs = build("codegen")
    plan = {"target": {"hidden_size": 32, "num_heads": 4, "intermediate_size": 48}, **FIRST}
    child = surgeon.apply(model, plan)
    config = copy.deepcopy(model.config)
    config.n_embd, config.n_head, config.n_inner = 32, 4, 48
    ref = type(model)(config).eval()
    state = {}
    for name, t in model.state_dict().items():
        if name.endswith("qkv_proj.weight"):  # 4 blocks x (q, v, k) x 2 heads x head_dim 8
            t = t.view(4, 3, 2, 8, 64)[:, :, :1].reshape(-1, 64)[:, :32]
        elif name.endswith("out_proj.weight"):
            t = t.view(64, 4, 2, 8)[:32, :, :1].reshape(32, 32)
        elif name.endswith("embed_positions"):
            pass  # rotary_dim 8 = head_dim: unchanged
        else:
            t = _narrowed(_narrowed(t, 96, 48), 64, 32)
        state[name] = t
    ref.load_state_dict(state)
    torch.testing.assert_close(_logits(child, inputs), _logits(ref, inputs), rtol=1e-5, atol=1e-5)


def test_codegen_heads_not_a_multiple_of_the_blocks_are_one_line():
    model, inputs = build("codegen")
    with pytest.raises(surgeon.PlanError) as e:
        surgeon.apply(model, {"target": {"num_heads": 6}}, example_inputs=inputs)
    message = str(e.value)
    assert "\n" not in message
    assert "in 4 blocks of 2; keep a multiple of 4 heads" in message


def test_xlnet_keeps_the_frequencies_its_child_computes():
    model, inputs = build("xlnet")
    plan = {"target": {"hidden_size": 32, "num_heads": 2, "intermediate_size": 48}, **FIRST}
    child = surgeon.apply(model, plan)
    assert child.config.d_model == 32 and child.config.n_head == 2
    config = copy.deepcopy(model.config)
    config.d_model, config.n_head, config.d_inner = 32, 2, 48
    ref = type(model)(config).eval()
    # the child's class: frequencies 10000^(-2j/32) = the parent's 10000^(-4j/64), the
    # even ones, in the sines (0..31) and in the cosines (32..63)
    even = torch.arange(0, 32, 2)
    rows = torch.cat([even, 32 + even])
    state = {}
    for name, t in model.state_dict().items():
        if name.endswith("rel_attn.r"):
            t = t[rows, :2]
        elif name.rpartition(".")[2] in ("q", "k", "v", "o"):
            t = t[:32, :2]
        elif name.endswith(("r_r_bias", "r_s_bias", "r_w_bias")):
            t = t[:2]
        elif name.endswith("seg_embed"):
            t = t[:, :2]
        else:
            t = _narrowed(_narrowed(t, 96, 48), 64, 32)
        state[name] = t
    ref.load_state_dict(state)
    torch.testing.assert_close(_logits(child, inputs), _logits(ref, inputs), rtol=1e-5, atol=1e-5)


def test_a_model_built_on_meta_has_every_tensor_there():
    """XLNet's `nn.Parameter(torch.FloatTensor(...))` ignores the meta device: moved there,
    ties kept (its LM head is its word embedding)."""
    from surgeon.frontends.graph import built_on_meta

    model, _ = build("xlnet")
    with torch.device("meta"):
        built = type(model)(model.config)
    assert any(p.device.type == "cpu" for p in built.parameters())  # what it fixes
    moved = built_on_meta(lambda: type(model)(model.config))
    assert {p.device.type for p in moved.parameters()} == {"meta"}
    assert moved.lm_loss.weight is moved.transformer.word_embedding.weight


def test_number_minus_tensor_exports_to_onnx(tmp_path):
    """`1.0 - mask` on an integer mask: PyTorch decomposes it into aten.sub(1.0, mask),
    which the ONNX exporter cannot type-promote; surgeon exports it as -mask + 1.0."""
    from surgeon.emit.onnx import check_onnx, export_onnx

    class Masked(torch.nn.Module):
        def forward(self, x, mask):
            return x * (1.0 - mask)[..., None]

    x = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]])
    path = export_onnx(Masked(), {"x": x, "mask": mask}, tmp_path / "m.onnx")
    assert check_onnx(Masked(), path, [{"x": x, "mask": mask}]) < 1e-6
