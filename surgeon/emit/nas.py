"""A per-layer child (`layout: per_layer`) as a Nemotron-NAS folder: the DeciLM format
(`DeciLMForCausalLM`, a `block_configs` entry per layer stating its FFN width as
`ffn_mult` and its key/value heads as `n_heads_in_group`), which stock runtimes load:
llama.cpp through its own converter (`conversion/deci.py`, checked here); vLLM reads the
format too (not tried here).

The format is Llama's layer with per-layer widths, so it holds children of Llama-shaped
parents only (the tensors named as Llama's, RMSNorm, SiLU-gated MLP without biases,
plain RoPE, head_dim = hidden_size / num_attention_heads); anything else is refused in
one line. The FFN width the format derives from `ffn_mult` is rounded up to a multiple
of 256, so every layer's width must be one (per_layer deals FFN neurons in steps of 256
where the parent's width is a multiple of 256). A dropped block (`target.drop_blocks`) is
the format's no-op block (`attention: {no_op: true, n_heads_in_group: null}`, `ffn:
{no_op: true, ffn_mult: null}`, as Nemotron-51B's and -253B's configs write them), its
tensors (the norm before it included) absent.

`check_nas` converts the folder to an f32 GGUF with llama.cpp's converter and compares
llama.cpp's logits, position by position, with the graph child's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import SurgeonError

__all__ = ["NAS_FFN_STEP", "check_nas", "llama_cpp_limits", "nas_config", "write_nas"]

NAS_FFN_STEP = 256
LAYER = (
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)
OUTSIDE = ("model.embed_tokens.weight", "model.norm.weight")


def nas_config(
    config: Any, tensors: dict[str, torch.Tensor], dropped: list[tuple[str, ...]] | None = None
) -> dict:
    """The DeciLM config of the child whose tensors (Llama's names) are `tensors`, its
    other fields from the parent's `config`; `dropped`: per child layer, the kinds of its
    blocks the child drops ("attention", "mlp"), written as the format's no-op blocks.
    `SurgeonError` where the format cannot state the child."""
    _refuse_unless_llama_shaped(config)
    layers = len(dropped) if dropped is not None else _layer_count(tensors)
    dropped = dropped if dropped is not None else [()] * layers
    hidden = tensors["model.embed_tokens.weight"].shape[1]
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attending = [i for i in range(layers) if "attention" not in dropped[i]]
    if not attending:
        raise SurgeonError(
            "the Nemotron-NAS format states the head count from a layer with attention: "
            "this child drops every attention block"
        )
    counts = [tensors[f"model.layers.{i}.self_attn.q_proj.weight"].shape[0] for i in attending]
    heads = counts[0] // head_dim
    if len(set(counts)) > 1:
        raise SurgeonError(
            f"the child's layers hold {sorted({c // head_dim for c in counts})} query heads: "
            "the Nemotron-NAS format holds one count in every layer (layout: per_layer "
            "keeps every layer's heads; per_layer_heads deals them)"
        )
    if heads * head_dim != hidden:
        raise SurgeonError(
            f"the Nemotron-NAS format derives head_dim from hidden_size / "
            f"num_attention_heads: this child has {heads} heads of {head_dim} in a hidden "
            f"size of {hidden}; cut the hidden size to heads x head_dim"
        )
    blocks = []
    for i in range(layers):
        no_op = {"no_op": False, "replace_with_linear": False}
        gone = {"no_op": True, "replace_with_linear": False}  # the block is x -> x
        if "attention" in dropped[i]:
            attention = {"n_heads_in_group": None, **gone}
        else:
            kv = tensors[f"model.layers.{i}.self_attn.k_proj.weight"].shape[0] // head_dim
            if heads % kv:  # every layer's query head count is `heads` (checked above)
                raise SurgeonError(
                    f"layer {i} has {heads} query heads and {kv} key/value heads: the "
                    "Nemotron-NAS format holds query heads in whole groups"
                )
            attention = {"n_heads_in_group": heads // kv, **no_op}
        if "mlp" in dropped[i]:
            ffn = {"ffn_mult": None, **gone}
        else:
            width = tensors[f"model.layers.{i}.mlp.down_proj.weight"].shape[1]
            if width % NAS_FFN_STEP:
                raise SurgeonError(
                    f"layer {i}'s FFN width is {width}: the Nemotron-NAS format rounds FFN "
                    f"widths up to a multiple of {NAS_FFN_STEP}; cut to such widths"
                )
            ffn = {"ffn_mult": 1.5 * width / hidden, **no_op}
        blocks.append({"attention": attention, "ffn": ffn})
    rope = dict(getattr(config, "rope_parameters", None) or {})
    return {
        "architectures": ["DeciLMForCausalLM"],
        "model_type": "nemotron-nas",
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "vocab_size": tensors["model.embed_tokens.weight"].shape[0],
        "max_position_embeddings": getattr(config, "max_position_embeddings", 2048),
        "rms_norm_eps": getattr(config, "rms_norm_eps", 1e-6),
        "rope_theta": rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)),
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": getattr(config, "bos_token_id", None),
        "eos_token_id": getattr(config, "eos_token_id", None),
        "pad_token_id": getattr(config, "pad_token_id", None),
        "torch_dtype": "float32",
        "block_configs": blocks,
    }


def _layer_count(tensors: dict) -> int:
    """Layers numbered in `tensors` (`model.layers.<i>.`)."""
    found = {int(k.split(".")[2]) for k in tensors if k.startswith("model.layers.")}
    return max(found, default=-1) + 1


def _refuse_unless_llama_shaped(config: Any) -> None:
    rope = dict(getattr(config, "rope_parameters", None) or {})
    checks = [
        (getattr(config, "hidden_act", None) == "silu", "an MLP activation other than SiLU"),
        (not getattr(config, "attention_bias", False), "attention biases"),
        (not getattr(config, "mlp_bias", False), "MLP biases"),
        (rope.get("rope_type", "default") == "default", "RoPE scaling"),
    ]
    for ok, what in checks:
        if not ok:
            raise SurgeonError(
                f"the Nemotron-NAS format (Llama's layer) cannot state {what} "
                f"({type(config).__name__}): write the child as a graph (model.pt) instead"
            )


def write_nas(child, folder: Path, tokenizer: Any = None) -> dict:
    """Write the per-layer graph child `child` (`surgeon.subclone`'s result) into `folder`
    as a Nemotron-NAS folder (config.json, model.safetensors, the tokenizer); returns the
    config written. Child layer j is the parent layer kept j-th; a dropped attention or
    MLP block (`target.drop_blocks`) is the format's no-op block, without tensors."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().float().contiguous() for k, v in child.model.state_dict().items()}
    tensors = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}
    head, embedding = "lm_head.weight", "model.embed_tokens.weight"
    for a, b in ((head, embedding), (embedding, head)):  # tied: the format writes both
        if a not in tensors and b in tensors:
            tensors[a] = tensors[b].clone()
    state = child.cut.state
    kept = state.kept_layers()
    layers = state.analysis.layers
    renamed = {}
    for j, i in enumerate(kept):  # the graph child keeps the parent's layer names
        renamed[layers[i].name + "."] = f"model.layers.{j}."
    tensors = {_renamed(k, renamed): v for k, v in tensors.items()}
    dropped = [state.dropped.get(i, ()) for i in kept]
    expected = {*OUTSIDE, "lm_head.weight"} | {
        f"model.layers.{j}.{name}"
        for j in range(len(kept))
        for name in LAYER
        if _block_of(name) not in dropped[j]
    }
    if set(tensors) != expected:
        odd = sorted(set(tensors) ^ expected)[:3]
        raise SurgeonError(
            f"the Nemotron-NAS format holds Llama-shaped decoders; this child's tensors do "
            f"not match Llama's names ({', '.join(odd)}): write it as a graph (model.pt)"
        )
    config = nas_config(child.cut.parent.model.config, tensors, dropped)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return config


def _renamed(name: str, prefixes: dict[str, str]) -> str:
    for old, new in prefixes.items():
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def _block_of(name: str) -> str:
    """The block (as `target.drop_blocks` names it) a layer tensor of LAYER belongs to:
    the norm before a block is the block's."""
    return "attention" if name.startswith(("input_layernorm", "self_attn")) else "mlp"


def llama_cpp_limits(config: dict) -> str:
    """Why llama.cpp (src/models/deci.cpp, as in llama-cpp-python 0.3.36) cannot run a
    Nemotron-NAS config whose no-op blocks it reads otherwise ("" where it can): it
    takes head_dim from the first layer's head count, skips a layer's attention where its
    FFN is a no-op (`if (n_ff == 0) continue;` before the attention's addition), and
    aborts where the last layer's FFN is a no-op."""
    blocks = config["block_configs"]
    if blocks[0]["attention"].get("no_op"):
        return "it drops the first layer's attention (llama.cpp reads head_dim from it)"
    for i, b in enumerate(blocks):
        if b["ffn"].get("no_op") and not b["attention"].get("no_op"):
            return (
                f"layer {i} drops its MLP and keeps its attention (llama.cpp's DeciLM graph "
                "then skips the layer's attention as well)"
            )
    if blocks[-1]["ffn"].get("no_op"):
        return "the last layer drops its MLP (llama.cpp aborts on it)"
    return ""


def check_nas(child, folder: Path, inputs: dict) -> dict:
    """llama.cpp's logits for each row of `inputs["input_ids"]`, from the folder converted
    to an f32 GGUF by llama.cpp's own converter, against the graph child's on the same
    inputs: the largest difference relative to the largest logit magnitude."""
    import numpy as np

    from .gguf import load_llama, write_gguf

    config = json.loads((folder / "config.json").read_text())
    why = llama_cpp_limits(config)
    if why:
        raise SurgeonError(
            f"llama.cpp cannot run this Nemotron-NAS child, so it cannot be checked: {why}; "
            "the folder states it as the format does (no_op blocks), which llama.cpp's "
            "DeciLM support does not follow here: choose other blocks (drop_blocks lists "
            "layers), or write a graph child"
        )
    path = folder / "model.f32.gguf"
    write_gguf(folder, path, "f32")
    ids = inputs["input_ids"]
    with torch.no_grad():
        out = child.model(**inputs)
    want = (out["logits"] if hasattr(out, "keys") else out[0]).float().numpy()
    runtime = load_llama(path, ids.shape[1], logits_all=True)
    worst = 0.0
    for row, tokens in enumerate(ids.tolist()):
        runtime.reset()
        runtime.eval(tokens)
        got = np.asarray(runtime.scores[: len(tokens)], dtype=np.float32)
        scale = max(float(np.abs(want[row]).max()), 1.0)
        worst = max(worst, float(np.abs(got - want[row]).max()) / scale)
    return {"gguf": path.name, "max_relative_difference": worst, "rows": len(ids)}
