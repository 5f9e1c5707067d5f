"""Width- and depth-cut children against independent, hand-sliced references.

With `importance: first` nothing is reordered, so the child keeps the leading positions
of every cut axis; with `rescale: none` its tensors are then plain slices of the parent's.
The references below index the parent's tensors directly (no surgeon code), axis by axis,
from the models' structure:

- residual (hidden) axis: the first `hidden` positions, wherever the stream is read or
  written (embeddings' columns, norms, q/k/v/gate/up inputs, o/down outputs);
- FFN: the first `ffn` units (gate/up rows, down columns);
- attention with GQA: query head h reads KV head h // (heads / kv_heads); keeping `kv`
  KV groups and `heads` query heads keeps KV heads 0..kv-1 and, in each kept group g,
  its first heads / kv query heads;
- depth: child layer j is the parent's layer `DEPTH[j]`.

Each hand-sliced reference is loaded into a freshly built model of the parent's class
with the smaller config, which must compute exactly the child's logits.
"""

import copy
import math

import pytest
import torch

from surgeon.api import subclone
from surgeon.frontends import as_inputs, output_tensors
from tests import zoo

DEPTH = [0, 2]  # of the zoo's 3 layers
HEAD_DIM = 16  # the zoo's head size; it stays
PARENT = {"hidden": 64, "ffn": 96, "heads": 4, "kv": 2}  # the zoo's sizes


def _plan(depth, rescale, **target):
    return {"target": target, "depth": depth, "importance": "first", "rescale": rescale}


def _query_heads(heads, kv, parent_heads=PARENT["heads"], parent_kv=PARENT["kv"]):
    """The parent query heads kept: in each of the first `kv` KV groups, its first
    heads // kv query heads (query head h of the parent belongs to group h // group)."""
    group = parent_heads // parent_kv
    return [g * group + i for g in range(kv) for i in range(heads // kv)]


def _head_rows(heads):
    """Positions of a (heads x HEAD_DIM) axis that hold the given heads."""
    return torch.cat([torch.arange(h * HEAD_DIM, (h + 1) * HEAD_DIM) for h in heads])


def _build(name):
    """A zoo parent whose biases and norm parameters (constant 0 and 1 at initialisation)
    hold distinct values: slicing or scaling them wrongly must show."""
    return zoo.build(name)  # the zoo gives them random values


def _parent_tensors(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------
# Llama: GQA (4 query heads, 2 KV heads), tied embeddings, no biases
# ---------------------------------------------------------------------------------------
def _llama_layer(P, i, hidden, ffn, heads, kv):
    """Parent layer i, hand-sliced, under the child's names relative to the layer."""
    a = f"model.layers.{i}."
    q = _head_rows(_query_heads(heads, kv))
    k = _head_rows(range(kv))  # KV groups 0..kv-1
    return {
        "input_layernorm.weight": P[a + "input_layernorm.weight"][:hidden],
        "self_attn.q_proj.weight": P[a + "self_attn.q_proj.weight"][q][:, :hidden],
        "self_attn.k_proj.weight": P[a + "self_attn.k_proj.weight"][k][:, :hidden],
        "self_attn.v_proj.weight": P[a + "self_attn.v_proj.weight"][k][:, :hidden],
        "self_attn.o_proj.weight": P[a + "self_attn.o_proj.weight"][:hidden][:, q],
        "post_attention_layernorm.weight": P[a + "post_attention_layernorm.weight"][:hidden],
        "mlp.gate_proj.weight": P[a + "mlp.gate_proj.weight"][:ffn, :hidden],
        "mlp.up_proj.weight": P[a + "mlp.up_proj.weight"][:ffn, :hidden],
        "mlp.down_proj.weight": P[a + "mlp.down_proj.weight"][:hidden, :ffn],
    }


def _llama_reference(P, depth, hidden, ffn, heads, kv):
    embed = P["model.embed_tokens.weight"][:, :hidden]
    ref = {
        "model.embed_tokens.weight": embed,
        "model.norm.weight": P["model.norm.weight"][:hidden],
        "lm_head.weight": embed,  # tied
    }
    for j, i in enumerate(depth):
        for k, v in _llama_layer(P, i, hidden, ffn, heads, kv).items():
            ref[f"model.layers.{j}.{k}"] = v
    return ref


def _llama_factors(hidden, ffn, heads):
    """sqrt(fan_in parent / fan_in child) for the weight matrices whose input axis is cut;
    norms and the tied embedding / head keep 1."""
    h = math.sqrt(PARENT["hidden"] / hidden)
    attn = math.sqrt(PARENT["heads"] * HEAD_DIM / (heads * HEAD_DIM))
    f = math.sqrt(PARENT["ffn"] / ffn)
    return {
        "self_attn.q_proj.weight": h,
        "self_attn.k_proj.weight": h,
        "self_attn.v_proj.weight": h,
        "self_attn.o_proj.weight": attn,
        "mlp.gate_proj.weight": h,
        "mlp.up_proj.weight": h,
        "mlp.down_proj.weight": f,
    }


def _llama_config(parent, depth, hidden, ffn, heads, kv):
    config = copy.deepcopy(parent.config)
    config.hidden_size = hidden
    config.intermediate_size = ffn
    config.num_attention_heads = heads
    config.num_key_value_heads = kv
    config.head_dim = HEAD_DIM
    config.num_hidden_layers = len(depth)
    return config


# ---------------------------------------------------------------------------------------
# GPT-2: Conv1D weights stored (in, out), fused c_attn q|k|v, biases, learned positions
# ---------------------------------------------------------------------------------------
def _gpt2_layer(P, i, hidden, ffn, heads):
    a = f"transformer.h.{i}."
    e = PARENT["hidden"]
    q = _head_rows(range(heads))
    qkv = torch.cat([part * e + q for part in range(3)])  # the same heads in q, k and v
    return {
        "ln_1.weight": P[a + "ln_1.weight"][:hidden],
        "ln_1.bias": P[a + "ln_1.bias"][:hidden],
        "attn.c_attn.weight": P[a + "attn.c_attn.weight"][:hidden][:, qkv],
        "attn.c_attn.bias": P[a + "attn.c_attn.bias"][qkv],
        "attn.c_proj.weight": P[a + "attn.c_proj.weight"][q][:, :hidden],
        "attn.c_proj.bias": P[a + "attn.c_proj.bias"][:hidden],
        "ln_2.weight": P[a + "ln_2.weight"][:hidden],
        "ln_2.bias": P[a + "ln_2.bias"][:hidden],
        "mlp.c_fc.weight": P[a + "mlp.c_fc.weight"][:hidden, :ffn],
        "mlp.c_fc.bias": P[a + "mlp.c_fc.bias"][:ffn],
        "mlp.c_proj.weight": P[a + "mlp.c_proj.weight"][:ffn, :hidden],
        "mlp.c_proj.bias": P[a + "mlp.c_proj.bias"][:hidden],
    }


def _gpt2_reference(P, depth, hidden, ffn, heads):
    wte = P["transformer.wte.weight"][:, :hidden]
    ref = {
        "transformer.wte.weight": wte,
        "transformer.wpe.weight": P["transformer.wpe.weight"][:, :hidden],
        "transformer.ln_f.weight": P["transformer.ln_f.weight"][:hidden],
        "transformer.ln_f.bias": P["transformer.ln_f.bias"][:hidden],
        "lm_head.weight": wte,  # tied
    }
    for j, i in enumerate(depth):
        for k, v in _gpt2_layer(P, i, hidden, ffn, heads).items():
            ref[f"transformer.h.{j}.{k}"] = v
    return ref


def _gpt2_factors(hidden, ffn, heads):
    """Conv1D: the input axis is dim 0. Biases, norms, wte (tied) and wpe keep 1."""
    h = math.sqrt(PARENT["hidden"] / hidden)
    attn = math.sqrt(PARENT["hidden"] / (heads * HEAD_DIM))  # GPT-2: heads x head_dim = E
    f = math.sqrt(PARENT["ffn"] / ffn)
    return {
        "attn.c_attn.weight": h,
        "attn.c_proj.weight": attn,
        "mlp.c_fc.weight": h,
        "mlp.c_proj.weight": f,
    }


def _gpt2_config(parent, depth, hidden, ffn, heads):
    config = copy.deepcopy(parent.config)
    config.n_embd = hidden
    config.n_inner = ffn
    config.n_head = heads
    config.n_layer = len(depth)
    return config


# ---------------------------------------------------------------------------------------
# shared parents and children
# ---------------------------------------------------------------------------------------
LLAMA_CUT = {"hidden": 32, "ffn": 48, "heads": 2, "kv": 1}
GPT2_CUT = {"hidden": 32, "ffn": 48, "heads": 2}


def _target(cut):
    names = {"hidden": "hidden_size", "ffn": "intermediate_size", "heads": "num_heads"}
    names["kv"] = "num_kv_heads"
    return {names[k]: v for k, v in cut.items()}


@pytest.fixture(scope="module")
def llama():
    model, example = _build("llama")
    child = subclone(model, _plan(DEPTH, "none", **_target(LLAMA_CUT)), example)
    return model, example, child


@pytest.fixture(scope="module")
def gpt2():
    model, example = _build("gpt2")
    child = subclone(model, _plan(DEPTH, "none", **_target(GPT2_CUT)), example)
    return model, example, child


def _logits(model, example):
    return output_tensors(as_inputs(example).call(model))[0]


def _assert_tensors_equal(child_model, ref):
    got = child_model.state_dict()
    assert sorted(got) == sorted(ref)
    for name, want in ref.items():
        assert got[name].shape == want.shape, name
        assert torch.equal(got[name], want), name


def _fresh(cls, config, ref):
    """The parent's class with the smaller config, holding exactly the reference tensors."""
    torch.manual_seed(123)  # whatever it draws is overwritten below
    model = cls(config).eval()
    missing, unexpected = model.load_state_dict(ref, strict=True)
    assert not missing and not unexpected
    return model


# ---------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------
def test_llama_child_is_the_hand_sliced_parent(llama):
    model, example, child = llama
    P = _parent_tensors(model)
    ref = _llama_reference(P, DEPTH, **LLAMA_CUT)
    _assert_tensors_equal(child.model, ref)
    assert child.state.layers == DEPTH
    config = child.model.config
    assert (config.hidden_size, config.intermediate_size) == (32, 48)
    assert (config.num_attention_heads, config.num_key_value_heads) == (2, 1)
    assert (config.head_dim, config.num_hidden_layers) == (HEAD_DIM, 2)
    assert child.model.lm_head.weight.data_ptr() == child.model.model.embed_tokens.weight.data_ptr()

    fresh = _fresh(type(model), _llama_config(model, DEPTH, **LLAMA_CUT), ref)
    _assert_computes_like(child, fresh, example)


def test_gpt2_child_is_the_hand_sliced_parent(gpt2):
    model, example, child = gpt2
    P = _parent_tensors(model)
    assert P["transformer.h.0.attn.c_attn.weight"].shape == (64, 192)  # Conv1D: (in, out)
    ref = _gpt2_reference(P, DEPTH, **GPT2_CUT)
    _assert_tensors_equal(child.model, ref)
    assert child.state.layers == DEPTH
    config = child.model.config
    assert (config.n_embd, config.n_inner, config.n_head, config.n_layer) == (32, 48, 2, 2)
    assert child.model.lm_head.weight.data_ptr() == child.model.transformer.wte.weight.data_ptr()

    fresh = _fresh(type(model), _gpt2_config(model, DEPTH, **GPT2_CUT), ref)
    _assert_computes_like(child, fresh, example)


def _assert_computes_like(child, fresh, example):
    """The HF child and the graph child give the logits of the class built from the
    hand-sliced reference."""
    expected = _logits(fresh, example)
    assert expected.shape == (zoo.BATCH, zoo.SEQ, zoo.VOCAB)
    torch.testing.assert_close(_logits(child.model, example), expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(_logits(child.graph, example), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_child_layer_j_is_parent_layer_depth_j(which, llama, gpt2):
    """Of the parent's 3 layers, hand-sliced, exactly DEPTH[j] matches child layer j."""
    model, _, child = {"llama": llama, "gpt2": gpt2}[which]
    P = _parent_tensors(model)
    got = child.model.state_dict()
    if which == "llama":
        prefix = "model.layers.{}."
        slices = [_llama_layer(P, i, **LLAMA_CUT) for i in range(3)]
    else:
        prefix = "transformer.h.{}."
        slices = [_gpt2_layer(P, i, **GPT2_CUT) for i in range(3)]
    for j in range(len(DEPTH)):
        same = [
            i
            for i, layer in enumerate(slices)
            if all(torch.equal(got[prefix.format(j) + k], v) for k, v in layer.items())
        ]
        assert same == [DEPTH[j]], j


def _assert_rescaled(child_model, ref, factors, layer_prefix):
    got = child_model.state_dict()
    assert sorted(got) == sorted(ref)
    scaled = 0
    for name, plain in ref.items():
        local = name.split(".", 3)[3] if name.startswith(layer_prefix) else None
        factor = factors.get(local, 1.0)
        scaled += factor != 1.0
        want = plain * factor if factor != 1.0 else plain
        torch.testing.assert_close(got[name], want, rtol=1e-6, atol=0, msg=name)
    return scaled


def test_llama_rescale_paper_scales_each_cut_input_by_hand():
    # distinct factors: hidden 64 -> 48 (sqrt 4/3), heads 4 -> 2 (sqrt 2), FFN 96 -> 24 (2);
    # both KV groups kept with one query head each: query heads 0 and 2
    model, example = _build("llama")
    cut = {"hidden": 48, "ffn": 24, "heads": 2, "kv": 2}
    depth = [1, 2]
    child = subclone(model, _plan(depth, "paper", **_target(cut)), example)
    ref = _llama_reference(_parent_tensors(model), depth, **cut)
    factors = _llama_factors(cut["hidden"], cut["ffn"], cut["heads"])
    assert sorted(set(factors.values())) == pytest.approx([math.sqrt(4 / 3), math.sqrt(2), 2])
    assert _assert_rescaled(child.model, ref, factors, "model.layers.") == 7 * len(depth)


def test_gpt2_rescale_paper_scales_each_cut_input_by_hand():
    # hidden 64 -> 48 with 3 heads of 16 (sqrt 4/3), FFN 96 -> 24 (2); biases stay
    model, example = _build("gpt2")
    cut = {"hidden": 48, "ffn": 24, "heads": 3}
    depth = [1, 2]
    child = subclone(model, _plan(depth, "paper", **_target(cut)), example)
    ref = _gpt2_reference(_parent_tensors(model), depth, **cut)
    factors = _gpt2_factors(cut["hidden"], cut["ffn"], cut["heads"])
    assert _assert_rescaled(child.model, ref, factors, "transformer.h.") == 4 * len(depth)


def test_gqa_cut_keeps_what_the_parent_computes():
    """Silence, in the parent, everything the cut drops: the o_proj columns of the query
    heads not kept, the down_proj columns of FFN units 48.., and all that layer 1 writes.
    The parent then computes only with what the child keeps, so (the residual width being
    kept) the child must compute the parent's logits. Keeping the wrong query heads for a
    KV group, or the wrong KV group, would not."""
    model, example = _build("llama")
    heads, kv, ffn = LLAMA_CUT["heads"], LLAMA_CUT["kv"], LLAMA_CUT["ffn"]
    kept = _query_heads(heads, kv)
    assert kept == [0, 1]
    dropped = _head_rows([h for h in range(PARENT["heads"]) if h not in kept])
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[:, dropped] = 0
            layer.mlp.down_proj.weight[:, ffn:] = 0
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    plan = _plan(DEPTH, "none", intermediate_size=ffn, num_heads=heads, num_kv_heads=kv)
    child = subclone(model, plan, example)
    torch.testing.assert_close(_logits(child.model, example), _logits(model, example))
    assert child.model.config.num_attention_heads == heads
    assert child.model.config.num_key_value_heads == kv
