"""Every model type of the installed transformers, tried as a new user would.

For each model type of transformers' auto mappings, a tiny random model is built from its
config class alone (vocab 128, hidden 64, 4 layers, 4 heads / 2 KV heads, FFN 128, 32 px
images), and put through seven checks, in order:

    trace     surgeon.prepare(model, inputs)
    inspect   the analysis finds the config's number of layers and hidden size
    permute   importance-only plan: the child computes the parent's output (atol 1e-4)
    shrink    half the layers, hidden size, FFN and heads: the child runs, a copy of it
              trains one step, the parent is unchanged, its config states the plan's
              sizes, and analysed afresh it has them (layers per stack, widths, FFN
              by role, heads, experts; where the parent's analysis agrees with its
              config)
    hf        the child's save_pretrained + from_pretrained computes the same output (the
              child as surgeon made it: a trained PixioBackbone loses the difference
              between its two layer norms on save, a transformers matter)
    onnx      the shrunk child exported and checked against onnxruntime
    folder    a `save_pretrained` folder with the config's defaults, through the CLI

The same checks run on the type's base model class (`AutoModel`'s), where it is not the
class checked first (a task head's): a row passes only where both pass (`--skip base`
leaves it out).

Each check is `ok`, `refused` (a SurgeonError: one line naming the problem), `wrong` (a
numerical or structural mismatch that surgeon did not notice: a silent wrong child),
`caught` (surgeon's own check, an InvariantError, stopped a child that did not compute
what its graph computes: no child, a message asking for a report; a bug, not support),
`crash` (any other exception) or `skipped` (an earlier check did not pass). A type whose
tiny model cannot be built or run by transformers itself (or needs over 8 GiB) is "not
buildable", with the reason, and counts in no check. Each type runs in its own process
(forked from a driver that has imported the libraries only), under a timeout; one JSON
line per type.

    python benchmarks/sweep.py                       # all types -> benchmarks/results/sweep.jsonl
    python benchmarks/sweep.py --only gpt_neo,bloom  # some types, results printed
    python benchmarks/sweep.py --resume              # skip types already in the file
    python benchmarks/sweep.py --docs                # docs/support.md from the file

The check of one type is also importable: `check_type("llama")` returns its record.
"""

from __future__ import annotations

import argparse
import copy
import inspect as pyinspect
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the repository holds `benchmarks`
    sys.path.insert(0, str(ROOT))

from benchmarks.support import CHECKS, summary, write_support  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "sweep.jsonl"
SUPPORT = ROOT / "docs" / "support.md"
BATCH, SEQ, VOCAB, IMAGE = 2, 8, 128, 32
MEMORY_GB = 8  # address space of one type's process

# The tiny sizes, under every name configs use for them (aliases in a config's
# attribute_map resolve to its own field names). Only names the config has are set.
TINY = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "d_model": 64,
    "n_embd": 64,
    "embed_dim": 64,
    "num_hidden_layers": 4,
    "num_layers": 4,
    "n_layer": 4,
    "encoder_layers": 4,
    "decoder_layers": 4,
    "num_decoder_layers": 4,
    "num_encoder_layers": 4,
    "num_attention_heads": 4,
    "num_heads": 4,
    "n_head": 4,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_kv_heads": 2,
    "head_dim": 16,
    "rotary_dim": 8,
    "d_kv": 16,
    "intermediate_size": 128,
    "ffn_dim": 128,
    "d_ff": 128,
    "n_inner": 128,
    "encoder_ffn_dim": 128,
    "decoder_ffn_dim": 128,
    "moe_intermediate_size": 64,
    "shared_expert_intermediate_size": 64,
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "max_position_embeddings": 128,
    "n_positions": 128,
    "max_source_positions": 128,
    "max_target_positions": 128,
    "image_size": IMAGE,
    "patch_size": 8,
    "num_channels": 3,
    "num_labels": 4,
    "use_cache": False,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "decoder_start_token_id": 1,
}

# Per-type fix-ups: only what a tiny config needs to be valid, each with its reason.
_MLA = {  # multi-head latent attention's head sizes, tiny (the defaults are 128 and 64 wide)
    "num_key_value_heads": 4,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 16,
    "v_head_dim": 16,
    "head_dim": 8,
}
FIXUPS: dict[str, tuple[dict, str]] = {
    "deepseek_v2": (
        {"num_key_value_heads": 4},
        "latent attention expands keys and values to every query head",
    ),
    "deepseek_v3": (
        {**_MLA, "n_routed_experts": 8, "n_group": 2, "topk_group": 1},
        "latent attention's head sizes; 2 groups of 4 experts (the default is 8 groups of "
        "32; each group is scored by its best 2, so 2 per group would leave none to cut)",
    ),
    "longcat_flash": (_MLA, "latent attention's head sizes"),
    **{
        t: (
            {"patch_size": 4, "window_size": 2, "depths": [2, 2], "num_heads": [4, 8]},
            "two stages of 2 layers, heads doubling with the width as in Swin-T; windows "
            "of 2 x 2 patches in an 8 x 8 grid (the default 7 x 7 windows do not divide a "
            "tiny image's grid)",
        )
        for t in ("swin", "swinv2", "donut-swin")
    },
    "kimi_linear": (
        {
            **_MLA,
            "linear_attn_config": {
                "full_attn_layers": [4],
                "kda_layers": [1, 2, 3],
                "head_dim": 16,
                "num_heads": 4,
            },
        },
        "latent attention's head sizes; a checkpoint's layer pattern (every 4th layer full "
        "attention, 1-indexed): the default's (0-indexed) gives 4 layers none; the linear "
        "attention's heads tiny (the default is 32 of 128)",
    ),
    "inkling_text": (
        {
            "local_layer_ids": [0, 1, 2],
            "swa_num_attention_heads": 4,
            "swa_num_key_value_heads": 1,
            "swa_head_dim": 16,
        },
        "a full-attention layer after the sliding ones (the default's every 6th layer gives "
        "4 layers none); the sliding layers' heads tiny (the default is 64 of 128, 16 KV)",
    ),
    "jamba": (
        {"attn_layer_period": 2, "attn_layer_offset": 1},
        "an attention layer every 2nd layer (the default's every 8th from layer 4 gives 4 "
        "layers none, which no Jamba checkpoint is and its cache cannot run)",
    ),
    "doge": ({"is_moe": True}, "its defaults turn the experts off; the sweep cuts them"),
    "gemma4_text": (
        {"enable_moe_block": True, "top_k_experts": 2},
        "its defaults turn the experts off; the sweep cuts them",
    ),
    "gemma4": (
        {"text_config": {"enable_moe_block": True, "top_k_experts": 2}},
        "its text model's defaults turn the experts off; the sweep cuts them",
    ),
    "gpt_neo": ({"attention_types": [[["global", "local"], 2]]}, "one entry per layer (4)"),
    "dory": (
        {"n_input_layers": 1, "n_output_layers": 1},
        "its defaults run 8 layers before its loop and 8 after, more than the tiny 4 (each "
        "layer would run once before and once after, which its config's validation "
        "refuses): 1 before, 2 in the loop, 1 after",
    ),
    "codegen": (
        {"n_head": 8},
        "its forward hard-codes 4 model-parallel chunks (mp_num); with 4 heads the chunks "
        "are the heads, a coincidence no CodeGen checkpoint has (they have 16 or more)",
    ),
}

# Types whose forward cannot run here as it runs where it is used: not buildable.
NOT_RUNNABLE = {
    "mra": "its attention is a CUDA kernel of its own; without one (this machine) the "
    "forward returns zeros for every attention output",
}

# The head class tried first wins: an encoder-decoder's own model is its seq2seq LM (not
# the decoder alone that some also register as a causal LM); BERT's is its masked LM.
_MAPPINGS = (
    "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
    "MODEL_FOR_BACKBONE_MAPPING_NAMES",
    "MODEL_MAPPING_NAMES",
)
SEQ2SEQ, MASKED, CAUSAL, IMAGE_CLASSES, BACKBONE, BASE = _MAPPINGS


class Wrong(Exception):
    """The child or the analysis disagrees with what the parent is."""


class TooBig(Exception):
    """The "tiny" model still needs more memory than MEMORY_GB: not a tiny model."""


class NoLayers(Exception):
    """surgeon reports no residual layers: it says it cannot cut depth (not a silent error)."""


# ---------------------------------------------------------------------------------------
# Which types, which class, which category
# ---------------------------------------------------------------------------------------
def mappings() -> dict[str, dict[str, str]]:
    from transformers.models.auto import modeling_auto

    return {m: dict(getattr(modeling_auto, m)) for m in _MAPPINGS}


def _speech_out() -> set[str]:
    """The types transformers lists as making audio from text."""
    from transformers.models.auto import modeling_auto

    names = (
        "MODEL_FOR_TEXT_TO_WAVEFORM_MAPPING_NAMES",
        "MODEL_FOR_TEXT_TO_SPECTROGRAM_MAPPING_NAMES",
    )
    return {t for n in names for t in getattr(modeling_auto, n, {})}


def model_types() -> list[str]:
    """Every model type with a class in one of the mappings, sorted."""
    return sorted({t for names in mappings().values() for t in names})


def head_class(model_type: str):
    import transformers

    for m, names in mappings().items():
        name = names.get(model_type)
        if isinstance(name, (tuple, list)):
            name = name[0]
        if name and hasattr(transformers, name):
            return getattr(transformers, name), m
    raise LookupError(f"no class for {model_type} in the installed transformers")


def _get(config, *names):
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return None


def category(model_type: str, config, mapping: str) -> str:
    maps = mappings()
    keys = set(getattr(config, "sub_configs", {}) or {})
    if keys & {"vision_config", "audio_config", "speech_config"} and "text_config" in keys:
        return "multimodal"
    if model_type in _speech_out():  # text in, audio out (VITS): not a text encoder
        return "multimodal"
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    blocks = " ".join(map(str, _get(text, "layer_types", "layers_block_type") or []))
    ssm_fields = ("ssm_state_size", "state_size", "mamba_d_state", "d_state", "mamba_expand")
    if any(hasattr(text, f) for f in ssm_fields) or "mamba" in blocks or "ssm" in blocks:
        return "ssm/hybrid"
    experts = _get(text, "num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
    if isinstance(experts, int) and experts > 1:
        return "moe"
    if getattr(config, "is_encoder_decoder", False) or model_type in maps[SEQ2SEQ]:
        return "encoder-decoder"
    heads = _get(text, "num_attention_heads", "num_heads", "n_head", "encoder_attention_heads")
    if heads is None:
        return "other"  # no attention: convolutional, recurrent, ...
    if mapping == CAUSAL:
        return "decoder"
    if mapping in (IMAGE_CLASSES, BACKBONE) or getattr(config, "image_size", None) is not None:
        return "vision"
    if mapping == MASKED or getattr(config, "vocab_size", None):
        return "encoder"
    return "other"


# ---------------------------------------------------------------------------------------
# The tiny model
# ---------------------------------------------------------------------------------------
def _config_kwargs(config_cls, extra: dict) -> dict:
    """TINY restricted to the names the config class knows, under its own names."""
    default = config_cls()
    alias = dict(getattr(config_cls, "attribute_map", {}) or {})
    params = set(pyinspect.signature(config_cls.__init__).parameters)
    out = {}
    stated = default.to_dict()
    for key, value in TINY.items():
        real = alias.get(key, key)
        if isinstance(getattr(config_cls, real, None), property):
            continue  # derived from the others (Falcon's head_dim)
        if real in params or hasattr(default, real):
            out[real] = value
            per_stage = stated.get(real)  # one per stage (Swin's num_heads: [3, 6, 12, 24])
            if isinstance(per_stage, (list, tuple)) and key not in _NOT_PER_STAGE:
                out[real] = [value] * len(per_stage)
    for key, sub_cls in (getattr(config_cls, "sub_configs", {}) or {}).items():
        sub = getattr(default, key, None)  # its default instance tells the class (AutoConfig)
        if not hasattr(sub, "to_dict"):
            continue
        try:
            out[key] = _config_kwargs(type(sub), {})
        except Exception:  # noqa: BLE001 - the sub-config keeps its defaults
            continue
        if getattr(sub_cls, "__name__", "") == "AutoConfig":
            out[key]["model_type"] = sub.model_type
    for key, value in extra.items():  # a sub-config's fix-ups join its tiny sizes
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = {**out[key], **value} if both else value
    return out


# TINY's keys whose list defaults are not one size per stage (token ids, an image's sides)
_NOT_PER_STAGE = {"eos_token_id", "bos_token_id", "pad_token_id", "image_size", "patch_size"}


def tiny_config(model_type: str):
    from transformers import AutoConfig

    config_cls = type(AutoConfig.for_model(model_type))
    extra, _ = FIXUPS.get(model_type, ({}, ""))
    return config_cls(**_config_kwargs(config_cls, extra))


def tiny_inputs(model, config) -> dict:
    import torch

    g = torch.Generator().manual_seed(1)
    name = getattr(model, "main_input_name", "input_ids")
    fwd = set(pyinspect.signature(model.forward).parameters)
    if name == "input_ids":
        vocab = getattr(config.get_text_config(), "vocab_size", None) or VOCAB
        ids = torch.randint(3, min(vocab, VOCAB), (BATCH, SEQ), generator=g)
        inputs = {"input_ids": ids}
        if "attention_mask" in fwd:
            inputs["attention_mask"] = torch.ones_like(ids)
        if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in fwd:
            inputs["decoder_input_ids"] = ids.clone()
        return inputs
    if name == "pixel_values":
        size = getattr(config, "image_size", None) or IMAGE
        size = size[0] if isinstance(size, (list, tuple)) else size
        channels = getattr(config, "num_channels", 3)
        inputs = {"pixel_values": torch.randn(BATCH, channels, size, size, generator=g)}
        if "noise" in fwd:  # ViT-MAE shuffles patches by this noise, else draws it
            patches = (size // config.patch_size) ** 2
            inputs["noise"] = torch.rand(BATCH, patches, generator=g)
        return inputs
    raise LookupError(f"the sweep builds no {name!r} input")


def base_class(model_type: str):
    """The type's base model class (`AutoModel`'s), None where that is its task-head
    class (the one the sweep checks first) or transformers has none."""
    import transformers

    name = mappings()[BASE].get(model_type)
    name = name[0] if isinstance(name, (tuple, list)) else name
    cls = getattr(transformers, name, None) if name else None
    return None if cls is None or cls is head_class(model_type)[0] else cls


def build(model_type: str, base: bool = False):
    """(model in eval mode, inputs, category, class name); raises when transformers
    cannot build or run the tiny model. `base`: the base model class (`base_class`)."""
    import torch

    if model_type in NOT_RUNNABLE:
        raise RuntimeError(NOT_RUNNABLE[model_type])
    cls, mapping = head_class(model_type)
    if base:
        cls = base_class(model_type)
    config = tiny_config(model_type)
    torch.manual_seed(0)
    model = cls(config).eval()
    _like_trained(model)
    inputs = tiny_inputs(model, config)
    with torch.no_grad():
        model(**inputs)
    return model, inputs, category(model_type, config, mapping), cls.__name__


def _like_trained(model) -> None:
    """Weight matrices initialised to zero get small random values: a router of zeros
    ties every expert, so which ones a token goes to depends on their order alone (no
    trained checkpoint routes by ties), and a zero projection hides what it connects.
    1-D parameters (biases, norm weights, score corrections) get distinct values around
    their initial ones: an init of zeros and ones hides a wrong permutation of them."""
    import torch

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if not p.is_floating_point():
                continue
            if p.dim() >= 2 and not p.any():
                p.copy_(0.02 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            elif p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))


# ---------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------
def _out(model, inputs):
    import torch

    from surgeon.frontends import output_tensors

    with torch.no_grad():
        return output_tensors(model(**inputs))[0]


def _close(a, b, what: str, atol: float = 1e-4) -> float:
    """The largest difference; `Wrong` above `atol` times the output's scale (its largest
    magnitude, at least 1): float32 rounding grows with the activations, and a tiny random
    model's can reach 1e4 (CPM-Ant's)."""
    if a.shape != b.shape:
        raise Wrong(f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}")
    diff = (a.float() - b.float()).abs().max().item()
    bound = atol * max(1.0, b.float().abs().max().item())
    if not diff <= bound:
        raise Wrong(f"{what}: max difference {diff:.2e} > {bound:.1e}")
    return diff


def _layers_and_hidden(config):
    """What the analysis should find: the layers of every stack, and the hidden size."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = _get(text, "encoder_layers", "num_hidden_layers", "num_layers", "n_layer")
    parts = [getattr(config, n, None) for n in ("encoder", "decoder")]
    if all(hasattr(p, "to_dict") for p in parts):  # a config per stack (T5Gemma's)
        texts = [p.get_text_config() if hasattr(p, "get_text_config") else p for p in parts]
        layers = sum(_get(t, "num_hidden_layers", "num_layers") or 0 for t in texts)
    elif getattr(config, "is_encoder_decoder", False):
        layers += _get(text, "decoder_layers", "num_decoder_layers") or 0
    return layers, _get(text, "hidden_size", "d_model", "n_embd", "embed_dim")


def _stage_depths(config) -> list[int] | None:
    """The layers of each stage of a hierarchical backbone, where its config lists them
    (`depths`: Swin's, PVT's, SegFormer's; `depth`: CvT's)."""
    for name in ("depths", "depth"):  # CvT's `depth`
        depths = getattr(config, name, None)
        if isinstance(depths, (list, tuple)) and len(depths) > 1:
            return list(depths)
    return None


def _stage_widths(config) -> set[int]:
    """The widths of the stages of a hierarchical backbone, where its config lists them
    (`hidden_sizes`: SegFormer's, PVT's, MobileViT's)."""
    sizes = getattr(config, "hidden_sizes", None)
    return set(sizes) if isinstance(sizes, (list, tuple)) else set()


def _module_counts(config) -> set[int]:
    """The layer counts a single-stack config states under any of its names."""
    if getattr(config, "is_encoder_decoder", False):
        return set()
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    names = ("num_hidden_layers", "num_layers", "n_layer")
    return {v for n in names if type(v := getattr(text, n, None)) is int}


def shrink_plan(report: dict) -> dict:
    """Half of everything the analysis found: layers, hidden, each FFN role's width,
    heads, KV groups and routed experts; heads per stack where the stacks count them
    differently (and in none where the analysis finds no heads in one: configs often
    count them once)."""
    from surgeon.analysis import FFN_ROLES

    target = {  # every stack (an encoder-decoder's two) to half its layers
        "num_layers": max(1, min(report["stacks"].values()) // 2),
        "hidden_size": report["hidden_size"] // 2,
    }
    for role in FFN_ROLES:
        widths = {x.get(role) for x in report["layers"]} - {0, None}
        if len(widths) == 1:
            target[role] = widths.pop() // 2
    by_stack: dict[str, list] = {}
    for x in report["layers"]:
        by_stack.setdefault(x.get("stack"), []).append(x)
    heads = {stack: _half_heads(layers) for stack, layers in by_stack.items()}
    plan: dict = {"target": target}
    if len({json.dumps(h, sort_keys=True) for h in heads.values()}) == 1:
        target.update(next(iter(heads.values())))
    elif all(heads.values()):  # a stack whose heads are not found keeps every stack's
        plan["stacks"] = heads
    experts = {x.get("num_experts") for x in report["layers"]} - {0, None}
    if len(experts) == 1:
        target["num_experts"] = max(1, experts.pop() // 2)
    widths = {s: v["hidden_size"] for s, v in report.get("stack_sizes", {}).items()}
    some = [bool(h) for h in heads.values()]
    if widths and min(widths.values()) <= target["hidden_size"] and len(set(some)) == 1:
        # stages of their own widths (Swin's 64, then 128): half of the widest would not
        # cut the narrower, so each stack gets half of its own width, and of its FFN
        plan["stacks"] = {s: {**h, **_half_stack(by_stack[s], widths[s])} for s, h in heads.items()}
        for size in ("num_heads", "num_kv_heads"):  # (FocalNet's stages have no heads)
            target.pop(size, None)
        del target["hidden_size"]
        for role in FFN_ROLES:
            target.pop(role, None)
    return plan


def _half_stack(layers: list[dict], width: int) -> dict:
    """Half a stack's width, and of each FFN role's width where its layers agree on it."""
    from surgeon.analysis import FFN_ROLES

    out = {"hidden_size": width // 2}
    for role in FFN_ROLES:
        found = {x.get(role) for x in layers} - {0, None}
        if len(found) == 1:
            out[role] = found.pop() // 2
    return out


# Per size of the full plan: the config fields that say a model has it.
HAS = {
    "FFN": ("intermediate_size", "ffn_dim", "d_ff", "n_inner", "encoder_ffn_dim"),
    "num_heads": ("num_attention_heads", "n_head", "num_heads", "encoder_attention_heads"),
    "num_experts": ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"),
}


def full_plan_gaps(report: dict, plan: dict, config) -> tuple[dict, dict]:
    """(absent, unplanned): sizes the model does not have, with the reason (an SSM has no
    attention heads), and sizes it has (its config says so) that the plan does not cut
    (the analysis does not find them, or finds them differing between layers)."""
    from surgeon.analysis import FFN_ROLES
    from surgeon.fit import config_value

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    sizes = {
        **plan["target"],
        **{k: v for st in plan.get("stacks", {}).values() for k, v in st.items()},
    }
    found = {
        "FFN": any(k in sizes for k in FFN_ROLES),
        "num_heads": "num_heads" in sizes,
        "num_experts": "num_experts" in sizes,
    }
    seen = {
        "FFN": any(x.get(r) for x in report["layers"] for r in FFN_ROLES),
        "num_heads": any(x.get("num_heads") for x in report["layers"]),
        "num_experts": any(x.get("num_experts") for x in report["layers"]),
    }
    absent, unplanned = {}, {}
    bare = [x["name"] for x in report["layers"] if not x.get("num_heads")]
    if found["num_heads"] and bare:  # hybrids: linear attention or SSM layers among them
        absent["heads"] = f"no attention found in {len(bare)} of {len(report['layers'])} layers"
    other = [x["name"] for x in report["layers"] if "heads_kept" in x]
    if found["num_heads"] and other:  # their own config fields, not in the plan's keys
        absent["heads"] = (
            f"{len(other)} of {len(report['layers'])} layers hold another kind of attention "
            "than the config's heads (linear attention): kept"
        )
    for size, fields in HAS.items():
        if found[size]:
            continue
        stated = next((v for f in fields if type(v := config_value(text, f)) is int), None)
        if not stated or (size == "num_experts" and stated < 2):
            absent[size] = f"no {'|'.join(fields[:2])} in its config, none found"
        elif seen[size]:
            unplanned[size] = "found, but not the same in every layer"
        else:
            unplanned[size] = f"its config says {fields[0]}={stated}; the analysis finds none"
    return absent, unplanned


def _half_heads(layers: list[dict]) -> dict:
    """Half the heads of a stack, in whole KV groups, where its layers agree on them."""
    # a hybrid's attention: not its layers without any, nor those whose heads are of
    # another kind than the config's (linear attention), which heads targets keep, nor
    # those with a single product over no heads axis (a Mamba layer's scan beside Jamba's
    # attention: nothing to halve)
    many = [x for x in layers if x.get("num_heads", 0) > 1 and "heads_kept" not in x]
    layers = many or [x for x in layers if x.get("num_heads") and "heads_kept" not in x] or layers
    heads, kv = layers[0].get("num_heads"), layers[0].get("num_kv_heads")
    kinds = {(x.get("num_heads"), x.get("num_kv_heads")) for x in layers}
    if heads and len(kinds) == 1:
        kv = kv or heads
        half = max(1, kv // 2)  # half the heads, whole groups (a 1-KV-head model too)
        return {"num_kv_heads": half, "num_heads": max(half, heads // 2 // half * half)}
    if heads and len({h for h, _ in kinds}) == 1:  # one head count, KV groups differ
        groups = {k for _, k in kinds if k and k < heads}  # grouped-query layers' KV counts
        if all(heads // 2 % k == 0 for k in groups):
            return {"num_heads": heads // 2}
    return {}


# A plan refused for one of these reasons is tried again without those sizes: the child
# keeps them as its parent has them (heads whose positions carry meaning, like ALiBi
# slopes; an FFN width the config derives from the hidden size, like xLSTM's; experts
# fewer than a token is routed to, or kept whole by the routing; a shared expert beside
# the routed ones).
RELAX = (
    ("target.num_heads", ("num_heads", "num_kv_heads")),
    ("target.num_kv_heads", ("num_heads", "num_kv_heads")),
    ("target.num_experts", ("num_experts",)),
    ("FFN groups", ("intermediate_size",)),
    ("cannot hold this child", ("intermediate_size",)),
    ("times in one forward (layers that share", ("num_layers",)),  # ALBERT
)


def _relaxed(plan: dict, why: str) -> dict | None:
    """The plan without the sizes a refusal names, or None when there is none to drop."""
    stacks = plan.get("stacks", {})
    for sign, keys in RELAX:
        named = [plan["target"], *stacks.values()]
        if sign in why and any(k in sizes for k in keys for sizes in named):
            out = {"target": {k: v for k, v in plan["target"].items() if k not in keys}}
            kept = {s: {k: v for k, v in v.items() if k not in keys} for s, v in stacks.items()}
            return {**out, **({"stacks": {s: v for s, v in kept.items() if v}} if stacks else {})}
    return None


# Sizes `inspect` compares with the config: the report's key, the config's fields.
STATED = (
    ("num_heads", HAS["num_heads"] + ("decoder_attention_heads",)),
    ("num_kv_heads", ("num_key_value_heads", "num_kv_heads")),
    ("num_experts", HAS["num_experts"]),
    ("moe_intermediate_size", ("moe_intermediate_size",)),
    ("shared_expert_intermediate_size", ("shared_expert_intermediate_size",)),
)


def size_gaps(report: dict, config) -> list[str]:
    """Per-layer sizes the analysis finds unlike the config's (heads, KV heads, experts,
    FFN widths by role), where the config states one and the analysis finds any."""
    from surgeon.fit import config_value

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    out = []
    for key, fields in STATED:
        # a hybrid's other attention (`heads_kept`) has config fields of its own
        layers = [x for x in report["layers"] if "heads" not in key or "heads_kept" not in x]
        found = {x.get(key) for x in layers} - {0, None}
        stated = {v for f in fields if type(v := config_value(text, f)) is int and v > 0}
        heads = {x.get("num_heads") for x in layers} - {0, None}
        if key == "num_kv_heads" and found in ({1}, heads):
            continue  # multi-query (latent attention's rope key) or multi-head: as heads
        if key == "num_heads":  # with the heads one axis holds beside attention's (a
            # convolution's): what a config counts together (ConvBERT's head_ratio)
            found |= {x["num_heads"] + x["heads_beside"] for x in layers if "heads_beside" in x}
        if found and stated and not found & stated:
            said = "/".join(map(str, sorted(stated)))
            out.append(f"{key} {'/'.join(map(str, sorted(found)))}, config {said}")
    return out


def config_gaps(parent_config, child_config, report: dict, plan: dict) -> list[str]:
    """Where the child's config does not state a size the plan cut: for each size of the
    target, one of the config fields that state the parent's size (as the analysis finds
    it) must hold the planned one in the child's config."""
    from surgeon.analysis import FFN_ROLES
    from surgeon.fit import CONFIG_FIELDS, config_value

    def text(c):
        return c.get_text_config() if hasattr(c, "get_text_config") else c

    had = {"hidden_size": report["hidden_size"]}
    if len(report["stacks"]) == 1 and not any("applied" in x for x in report["layers"]):
        had["num_layers"] = next(iter(report["stacks"].values()))
    for key in (*FFN_ROLES, "num_heads", "num_kv_heads", "num_experts"):
        layers = [x for x in report["layers"] if "heads" not in key or "heads_kept" not in x]
        values = {x.get(key) for x in layers} - {0, None}
        if len(values) == 1:
            had[key] = values.pop()
    out = []
    parent, child = text(parent_config), text(child_config)
    for key, want in plan["target"].items():
        fields = list(CONFIG_FIELDS.get(key, ())) if key in had else []
        if key == "num_layers":  # a stack's own count (WhisperForCausalLM's decoder_layers)
            fields += [f for f in parent.to_dict() if f.endswith("_layers")]
        stating = [f for f in fields if config_value(parent, f) == had.get(key)]
        if stating and all(config_value(child, f) != want for f in stating):
            out.append(f"config {stating[0]} {config_value(child, stating[0])}, planned {want}")
    return out


def plan_gaps(report: dict, plan: dict, parent: dict | None = None) -> list[str]:
    """Where a child's analysis (`report`) differs from the plan it was made with: layers
    per stack, each stack's residual width, and per layer each FFN role's width, heads,
    KV heads and experts (a size the layer has and the plan names; heads a hybrid keeps
    aside: where the `parent` report has such, the heads of child layers whose head_dim
    is not one of the cut attention's, which a child without that attention no longer
    tells apart)."""
    from surgeon.analysis import FFN_ROLES

    target, stacks = plan["target"], plan.get("stacks", {})
    cut = [x for x in (parent or {}).get("layers", []) if x.get("num_heads")]
    dims = {x["head_dim"] for x in cut if "heads_kept" not in x}
    hybrid = any("heads_kept" in x for x in cut)
    # a parent whose layers hold one product over no heads axis (a Mamba layer's scan)
    # beside attention with heads: such layers keep theirs (`_half_heads`)
    heads = {x["num_heads"] for x in cut}
    scans = 1 in heads and max(heads) > 1
    out = []
    for stack, sizes in report["stack_sizes"].items():
        want = {**target, **stacks.get(stack, {})}
        if "num_layers" in want and sizes["num_layers"] != want["num_layers"]:
            out.append(f"{stack}: {sizes['num_layers']} layers, planned {want['num_layers']}")
        if "hidden_size" in want and sizes["hidden_size"] != want["hidden_size"]:
            out.append(f"{stack}: hidden {sizes['hidden_size']}, planned {want['hidden_size']}")
    dense = any(x.get(FFN_ROLES[0]) for x in report["layers"])
    for x in report["layers"]:
        want = {**target, **stacks.get(x["stack"], {})}
        if not dense and FFN_ROLES[0] in want:  # every role the plan gives no width
            want = {**{r: want[FFN_ROLES[0]] for r in FFN_ROLES}, **want}
        keys = [*FFN_ROLES, "num_experts"]
        scan = scans and x.get("num_heads") == 1
        if "heads_kept" not in x and (not hybrid or x.get("head_dim") in dims) and not scan:
            keys += ["num_heads", "num_kv_heads"]
        for key in keys:
            if x.get(key) and key in want and x[key] != want[key]:
                out.append(f"{x['name']}: {key} {x[key]}, planned {want[key]}")
    return out[:3]


def _sizes(plan: dict) -> list[str]:
    """The sizes a plan cuts, `stack/size` for a stack's own."""
    own = [f"{st}/{k}" for st, sizes in plan.get("stacks", {}).items() for k in sizes]
    return [*plan["target"], *own]


def _through_the_cli(model, plan: dict) -> str:
    """As a user holds the model: a `save_pretrained` folder whose config keeps its class's
    defaults for everything the tiny sizes do not set (the cache on, as in every
    pretrained checkpoint); `surgeon inspect` and `surgeon apply` on it, inputs derived by
    surgeon; the child folder reloads and runs."""
    import contextlib
    import io

    import yaml

    from surgeon.cli import main as cli
    from surgeon.errors import InvariantError

    config = copy.deepcopy(model.config)
    for key in ("use_cache",):  # the sweep's only departure from the class's defaults
        default = getattr(type(config)(), key, None)
        if default is not None:
            setattr(config, key, default)
    with tempfile.TemporaryDirectory() as tmp:
        parent = type(model)(config).eval()
        parent.load_state_dict(model.state_dict())
        parent.save_pretrained(f"{tmp}/parent")
        Path(f"{tmp}/plan.yaml").write_text(yaml.safe_dump(plan))
        for argv in (
            ["inspect", "--model", f"{tmp}/parent"],
            [
                "apply",
                "--model",
                f"{tmp}/parent",
                "--plan",
                f"{tmp}/plan.yaml",
                "--out",
                f"{tmp}/c",
            ],
        ):
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = cli(argv)
            if code:
                why = err.getvalue().strip().splitlines()[-1:] or [f"exit code {code}"]
                kind = NoLayers  # a one-line refusal
                if "internal error" in why[0]:  # (it asks for a report too)
                    kind = RuntimeError
                elif "please report" in why[0]:  # surgeon's own check stopped it
                    kind = InvariantError
                raise kind(f"surgeon {argv[0]}: {why[0]}")
        child = type(model).from_pretrained(f"{tmp}/c").eval()
        return f"cli child: {sum(p.numel() for p in child.parameters()):,} parameters"


def _train_step(model, inputs) -> None:
    import torch

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=1e-2)
    from surgeon.frontends import output_tensors

    loss = output_tensors(model(**inputs))[0].float().pow(2).mean()
    if not torch.isfinite(loss):
        raise Wrong(f"training loss is {loss.item()}")
    loss.backward()
    opt.step()
    model.eval()
    if all(torch.equal(a, p) for a, p in zip(before, params, strict=True)):
        raise Wrong("one training step changed no parameter")


def run_checks(model, inputs, record: dict, skip: tuple = ()) -> None:
    """Fill record["checks"]; a check runs only when every earlier one passed (and is not
    in `skip`)."""
    import torch

    import surgeon
    from surgeon.emit.onnx import emit_onnx
    from surgeon.errors import InvariantError, PlanError, SurgeonError, first_line
    from tests.helpers import fingerprint

    checks = record["checks"] = {}
    state: dict = {}

    def trace():
        state["parent"] = surgeon.prepare(model, inputs)
        state["want"] = _out(model, inputs)
        state["print"] = fingerprint(model)

    def inspect():
        report = state["report"] = surgeon.inspect(state["parent"]).to_dict()
        layers, hidden = _layers_and_hidden(model.config)
        # layers applied several times: configs count the modules (Dory: 4 layers, each
        # applied twice) or the applications (ALBERT: one layer, applied 4 times)
        found = (len(report["layers"]), report["hidden_size"])
        applied = sum(x.get("applied", 1) for x in report["layers"])
        if applied == layers != found[0]:
            found = (applied, found[1])
        if found[0] != layers and found[0] in _module_counts(model.config):
            layers = found[0]  # LongCat: num_layers modules, num_hidden_layers = 2x that
        widths = {x["hidden_size"] for x in report.get("stack_sizes", {}).values()}
        stages = _stage_depths(model.config)
        if stages and list(report["stacks"].values()) == stages:
            layers = sum(stages)  # stages of layers (Swin): the config states each's depth
        if isinstance(hidden, (list, tuple)):  # one width per stage (CvT's embed_dim)
            hidden = tuple(hidden)
        stated = _stage_widths(model.config) or set(hidden if type(hidden) is tuple else [hidden])
        if found[1] in stated and (len(widths) < 2 or stated & widths == widths):
            hidden = found[1]  # each stage's width as the config states it (`hidden_sizes`),
            # or the first stage's (Swin's `embed_dim`) where the others double it
        elif len(widths) > 1 and hidden in widths:
            hidden = found[1]
        if layers is None and len(widths) > 1 and hidden == found[1]:
            layers = found[0]  # no layer count in the config (MobileViT's are its class's)
        if not found[0]:
            raise NoLayers(f"surgeon inspect finds no residual layers (config: {layers})")
        other = state["parent"].analysis.couplings["other_stacks"]
        if found != (layers, hidden) and other:
            raise NoLayers(
                f"surgeon finds {found[0]} layers (config: {layers}): "
                f"{', '.join(other)} on another residual stream"
            )
        if found != (layers, hidden):
            raise Wrong(f"found {found[0]} layers of width {found[1]}; config: {layers}, {hidden}")
        gaps = size_gaps(report, model.config)
        if gaps:  # found, but not as the config states them
            state["partial"] = {"why": "; ".join(gaps), "kept": []}
        return f"{layers} layers, hidden {hidden}"

    def permute():
        child = surgeon.apply(state["parent"], {"importance": "weight"})
        return f"max diff {_close(_out(child, inputs), state['want'], 'output'):.1e}"

    def shrink():
        plan = full = shrink_plan(state["report"])
        absent, unplanned = full_plan_gaps(state["report"], full, model.config)
        if absent:
            record["absent"] = absent
        refusal = None
        while True:
            try:
                child = state["child"] = surgeon.apply(state["parent"], plan)
                break
            except PlanError as e:
                refusal = refusal or first_line(e)
                plan = _relaxed(plan, str(e))
                if plan is None:
                    raise
        dropped = sorted(set(_sizes(full)) - set(_sizes(plan)))
        if dropped or unplanned:  # a smaller plan than the full one passed: partial
            state["partial"] = {
                "why": refusal or "; ".join(f"{k}: {v}" for k, v in unplanned.items()),
                "kept": dropped + sorted(unplanned),
            }
        got = _out(child, inputs)
        if got.dim() != state["want"].dim() or not torch.isfinite(got).all():
            raise Wrong(f"child output {tuple(got.shape)} is not like the parent's or not finite")
        _train_step(copy.deepcopy(child), inputs)  # the checks below see the child as made
        if fingerprint(model) != state["print"]:
            raise Wrong("the parent changed")
        # the child's config states the plan's sizes, and the child analysed afresh has
        # them (judged where the parent's analysis agrees with its config)
        gaps = config_gaps(model.config, child.config, state["report"], plan)
        if not size_gaps(state["report"], model.config):
            seen = surgeon.inspect(surgeon.prepare(child, inputs)).to_dict()
            gaps += plan_gaps(seen, plan, state["report"])
        if gaps:
            raise Wrong(f"the child is not the plan's: {'; '.join(gaps)}")
        state["plan"] = plan
        return json.dumps({**plan["target"], **plan.get("stacks", {})})

    def hf():
        child = state["child"]
        if not hasattr(child, "save_pretrained"):
            raise Wrong(f"the child is a {type(child).__name__}, not a Hugging Face model")
        with tempfile.TemporaryDirectory() as tmp:
            child.save_pretrained(tmp)
            again = type(child).from_pretrained(tmp).eval()
        try:
            diff = _close(_out(again, inputs), _out(child, inputs), "reloaded", 1e-5)
        except Wrong:
            with tempfile.TemporaryDirectory() as tmp:  # transformers' own round trip
                model.save_pretrained(tmp)
                back = type(model).from_pretrained(tmp).eval()
            own = (_out(back, inputs) - state["want"]).abs().max().item()
            if own > 1e-5 * max(1.0, state["want"].abs().max().item()):
                raise NoLayers(
                    f"the parent itself does not survive save_pretrained + from_pretrained "
                    f"(its output moves by {own:.2g}): transformers', not the child's"
                ) from None
            raise
        return f"max diff {diff:.1e}"

    def onnx():
        with tempfile.TemporaryDirectory() as tmp:
            return f"relative diff {emit_onnx(state['child'], inputs, tmp):.1e}"

    def folder():
        return _through_the_cli(model, state["plan"])

    failed = None
    checks_fns = (trace, inspect, permute, shrink, hf, onnx, folder)
    for name, fn in zip(CHECKS, checks_fns, strict=True):
        if name in skip:
            continue
        if failed:
            checks[name] = {"result": "skipped", "why": f"{failed} did not pass"}
            continue
        start = time.perf_counter()
        try:
            detail = fn()
            entry = {"result": "ok", **({"detail": detail} if detail else {})}
            if "partial" in state:  # it passed with less than it was asked: not a pass
                entry.update(result="partial", **state.pop("partial"))
        except Wrong as e:
            entry = {"result": "wrong", "why": first_line(e)}
        except InvariantError as e:  # surgeon's own check stopped a child it found wrong
            entry = {"result": "caught", "why": first_line(e)}
        except (SurgeonError, NoLayers) as e:
            entry = {"result": "refused", "why": first_line(e)}
        except Exception as e:  # noqa: BLE001 - a crash is a result here
            if isinstance(e, MemoryError) or "can't allocate memory" in str(e):
                raise TooBig(f"{type(e).__name__} in {name}: {first_line(e, 120)}") from e
            frame = traceback.extract_tb(e.__traceback__)[-1]
            where = f"{Path(frame.filename).name}:{frame.lineno}"
            entry = {"result": "crash", "why": f"{type(e).__name__} at {where}: {first_line(e)}"}
        entry["seconds"] = round(time.perf_counter() - start, 2)
        checks[name] = entry
        if entry["result"] not in ("ok", "partial"):  # a partial child is checked on
            failed = name


def check_type(model_type: str, skip: tuple = ()) -> dict:
    """Build `model_type` tiny and run every check but those in `skip`; the JSON record."""
    from surgeon.errors import first_line

    start = time.perf_counter()
    record = {"type": model_type}
    try:
        model, inputs, cat, cls = build(model_type)
    except Exception as e:  # noqa: BLE001 - transformers itself cannot build or run it
        record.update(buildable=False, why=f"{type(e).__name__}: {first_line(e)}")
        record["seconds"] = round(time.perf_counter() - start, 2)
        return record
    nparams = sum(p.numel() for p in model.parameters())
    record.update(category=cat, cls=cls, buildable=True, parameters=nparams)
    try:
        run_checks(model, inputs, record, skip)
    except TooBig as e:
        record.update(buildable=False, why=f"over the sweep's {MEMORY_GB} GiB: {e}")
        record.pop("checks", None)
        return record
    record["passed"] = all(c["result"] == "ok" for c in record["checks"].values())
    if "base" not in skip and base_class(model_type) is not None:
        record["base"] = _check_base(model_type, skip)
        record["passed"] &= record["base"].get("passed", True)  # (unbuildable: not counted)
    record["seconds"] = round(time.perf_counter() - start, 2)
    return record


def _check_base(model_type: str, skip: tuple) -> dict:
    """The same checks on the type's base model class (`AutoModel`'s: what a backbone
    user holds), built from the same tiny config; its record, `passed` where it builds."""
    from surgeon.errors import first_line

    base = {"cls": base_class(model_type).__name__}
    try:
        model, inputs = build(model_type, base=True)[:2]
    except Exception as e:  # noqa: BLE001 - transformers itself cannot build or run it
        return {**base, "buildable": False, "why": f"{type(e).__name__}: {first_line(e)}"}
    try:
        run_checks(model, inputs, base, skip)
    except TooBig as e:
        return {**base, "buildable": False, "why": f"over the sweep's {MEMORY_GB} GiB: {e}"}
    base["passed"] = all(c["result"] == "ok" for c in base["checks"].values())
    return base


# ---------------------------------------------------------------------------------------
# The driver: one forked process per type
# ---------------------------------------------------------------------------------------
def _child_main(model_type: str, path: str, skip: tuple = ()) -> None:
    import resource
    import warnings

    limit = MEMORY_GB * 2**30  # a default-sized sub-model fails to build, not the machine
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    from transformers.utils import logging

    logging.set_verbosity_error()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1), os.dup2(devnull, 2)  # the exporter and transformers are chatty
    record = check_type(model_type, skip)
    Path(path).write_text(json.dumps(record))


def _category_only(model_type: str) -> str | None:
    try:
        _, mapping = head_class(model_type)
        return category(model_type, tiny_config(model_type), mapping)
    except Exception:  # noqa: BLE001
        return None


def sweep(types: list[str], jobs: int, timeout: float, out, skip: tuple = ()) -> list[dict]:
    ctx = mp.get_context("fork")
    pending, running, records = list(types), {}, []
    tmp = Path(tempfile.mkdtemp(prefix="sweep-"))
    while pending or running:
        while pending and len(running) < jobs:
            t = pending.pop(0)
            path = tmp / f"{t}.json"
            p = ctx.Process(target=_child_main, args=(t, str(path), skip))
            p.start()
            running[t] = (p, time.monotonic(), path)
        time.sleep(0.2)
        for t, (p, started, path) in list(running.items()):
            late = time.monotonic() - started > timeout
            if p.is_alive() and not late:
                continue
            if p.is_alive():
                p.kill()
            p.join()
            del running[t]
            if path.exists():
                record = json.loads(path.read_text())
            else:
                why = f"timed out after {timeout:.0f} s" if late else f"exit code {p.exitcode}"
                record = {"type": t, "buildable": True, "category": _category_only(t)}
                record.update(checks={}, passed=False, died=why)
                record["seconds"] = round(time.monotonic() - started, 2)
            records.append(record)
            out(record)
    return records


def _summary_line(r: dict) -> str:
    if not r.get("buildable"):
        return f"{r['type']:<28} not buildable: {r['why'][:100]}"
    if r.get("died"):
        return f"{r['type']:<28} {r.get('category')}: DIED ({r['died']})"
    checks = [
        *r["checks"].items(),
        *((f"base {k}", c) for k, c in r.get("base", {}).get("checks", {}).items()),
    ]
    bad = [(k, c) for k, c in checks if c["result"] not in ("ok", "skipped")]
    bad = bad or [("base", {"result": "failed", "why": "the base class did not pass"})]
    status = "pass" if r["passed"] else f"{bad[0][0]} {bad[0][1]['result']}: {bad[0][1]['why']}"
    return f"{r['type']:<28} {r['category']:<16} {r['seconds']:6.1f}s {status[:160]}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated model types")
    ap.add_argument("--resume", action="store_true", help="skip types already in --results")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--docs", action="store_true", help="write docs/support.md and stop")
    ap.add_argument("--skip", default="", help="checks not to run, e.g. onnx (a quick look)")
    ap.add_argument("--after", default="", help="only the types sorted after this one")
    args = ap.parse_args(argv)
    if args.docs:
        write_support(load(args.results), SUPPORT)
        print(f"wrote {SUPPORT}")
        return 0
    import torch  # noqa: F401 - imported once, before the forks
    import transformers  # noqa: F401

    import surgeon  # noqa: F401
    import tests.helpers  # noqa: F401

    types = args.only.split(",") if args.only else model_types()
    types = [t for t in types if t > args.after]
    old = {r["type"]: r for r in load(args.results)} if args.results.exists() else {}
    partial = args.results.with_suffix(".partial")
    if partial.exists():  # an interrupted run: what it finished counts
        old.update({r["type"]: r for r in load(partial)})
        partial.unlink()
    if args.resume:
        types = [t for t in types if t not in old]
    start = time.perf_counter()
    print(f"{len(types)} model types, {args.jobs} at a time, timeout {args.timeout:.0f} s")
    partial = args.results.with_suffix(".partial")  # each record as it comes (a kill keeps them)
    partial.parent.mkdir(parents=True, exist_ok=True)

    code = _commit()

    def report(record: dict) -> None:
        record.update(commit=code, timeout=args.timeout)
        with partial.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        print(_summary_line(record), flush=True)

    skip = tuple(c for c in args.skip.split(",") if c)
    records = sweep(types, args.jobs, args.timeout, report, skip)
    old.update({r["type"]: r for r in records})
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("w") as f:
        for t in sorted(old):
            f.write(json.dumps(old[t], sort_keys=True) + "\n")
    partial.unlink(missing_ok=True)
    wall = time.perf_counter() - start
    print(f"{len(records)} types in {wall:.0f} s ({wall / max(1, len(records)):.1f} s each)")
    print(summary(list(old.values())))
    return 0


def _commit() -> str:
    """The code a record ran at: the short commit, `-dirty` with uncommitted changes."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    code = ["surgeon", "benchmarks", ":!benchmarks/results"]  # results are not code
    dirty = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", *code])
    return head.stdout.strip() + ("-dirty" if dirty.returncode else "")


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    raise SystemExit(main())
