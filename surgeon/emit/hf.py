"""Rebuild the parent's Hugging Face class around the child's weights.

This is the one place that knows Hugging Face config field names: a short table of common
ones, and what the class itself shows for the rest (a probe built on the meta device,
fitted field by field: `fit_config`). All of it is checked against the graph: the rebuilt
model must have exactly the child's tensor shapes and compute what the child graph
computes.
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import fx, nn

from ..errors import InvariantError, PlanError, first_line
from ..frontends import output_tensors
from ..passes.state import SurgeryState
from .decoder import is_causal_lm

__all__ = [
    "CONFIG_FIELDS",
    "PER_LAYER",
    "is_hf_model",
    "child_config",
    "check_config",
    "fit_config",
    "config_error",
    "emit_hf",
]

# What each size is called in the configs of transformers (first match is set).
CONFIG_FIELDS = {
    "hidden_size": ("hidden_size", "n_embd", "d_model", "embed_dim", "dim"),
    "intermediate_size": ("intermediate_size", "n_inner", "ffn_dim", "d_ff", "hidden_dim"),
    "num_heads": ("num_attention_heads", "n_head", "num_heads"),
    "num_kv_heads": ("num_key_value_heads", "num_kv_heads"),
    "head_dim": ("head_dim",),
    "num_experts": ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"),
    "num_layers": ("num_hidden_layers", "n_layer", "num_layers"),
}
STACK_FIELDS = {
    "num_heads": re.compile(r"^(encoder|decoder)_(num_)?attention_heads$"),
    "num_kv_heads": re.compile(r"^(encoder|decoder)_(num_key_value_heads|kv_heads)$"),
    "intermediate_size": re.compile(r"^(encoder|decoder)_(ffn_dim|intermediate_size)$"),
}
# Fields that are the residual width under another name when they equal it in the parent.
FOLLOW_HIDDEN = ("word_embed_proj_dim",)


def is_hf_model(model: nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return isinstance(model, PreTrainedModel)


def child_config(parent: nn.Module, state: SurgeryState) -> Any:
    """A copy of the parent's config with the child's sizes (in its text model's config
    too, where it has one apart: Fuyu's `text_config`)."""
    config = copy.deepcopy(parent.config)
    sizes = state.child_sizes()
    full = replace(state, select={}).child_sizes()  # the parent's, as the analysis sees them
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for part in (config, text) if text is not config else (config,):
        _set_sizes(part, sizes, full, state.analysis.hidden_size)
    _set_depth(parent, config, state)
    return config


def _set_sizes(config: Any, sizes: dict, full: dict, old_hidden: int) -> None:
    was = {}  # size -> (its value in the parent's config, the child's)
    fields = config.to_dict()
    for key, value in sizes.items():
        if full.get(key) == value:
            continue  # not cut: the config already says it, in its own terms
        named = [f for f in CONFIG_FIELDS[key] if not _derived(config, f)]
        # The same size spelt per stack (BART's decoder_attention_heads beside the
        # num_attention_heads its attribute_map sends to the encoder's). Head counts do
        # not show in tensor shapes, so `_fit_fields` cannot find these.
        stacked = [
            f
            for f in fields
            if key in STACK_FIELDS and STACK_FIELDS[key].match(f) and not _derived(config, f)
        ]
        for field in _per_layer_lists(fields, key):  # num_key_value_heads_per_layer
            setattr(config, field, [value if x == full.get(key) else x for x in fields[field]])
        exact = [f for f in (*named, *stacked) if _value(config, f) == full.get(key)]
        for field in exact:  # the fields that state the parent's size
            setattr(config, field, value)
        if exact:
            was[key] = (full.get(key), value)
            continue
        for field in named:
            old = _value(config, field)
            if old is not None or (key == "intermediate_size" and hasattr(config, field)):
                new = value
                was_full = full.get(key)
                if isinstance(old, int) and was_full and old * value % was_full == 0:
                    new = old * value // was_full  # a multiple of the size (2x the FFN)
                was[key] = (old, new)
                setattr(config, field, new)
                break
    for field, v in fields.items():
        for key, pattern in STACK_FIELDS.items():
            if key in was and v == was[key][0] and pattern.match(field):
                if not _derived(config, field):
                    setattr(config, field, was[key][1])
    for field in FOLLOW_HIDDEN:
        if _value(config, field) == old_hidden != sizes["hidden_size"]:
            setattr(config, field, sizes["hidden_size"])


def _per_layer_lists(fields: dict, key: str) -> list[str]:
    """Lists of ints per layer that spell the size `key` (their names begin with one of its
    fields': `num_key_value_heads_per_layer`)."""
    return [
        f
        for f, v in fields.items()
        if f in PER_LAYER
        and f.startswith(CONFIG_FIELDS[key])
        and isinstance(v, list)
        and all(type(x) is int for x in v)
    ]


def _value(config: Any, field: str) -> Any:
    """The config's field, or None where it has none or reading it raises (a per-layer
    attribute that differs between layers)."""
    try:
        return getattr(config, field, None)
    except Exception:  # noqa: BLE001 - transformers raises its own error types here
        return None


def _derived(config: Any, field: str) -> bool:
    attr = getattr(type(config), field, None)
    return isinstance(attr, property) and attr.fset is None


# Config fields that hold one entry per layer (found in transformers' configuration
# files), re-indexed with the layers when depth changes. Other lists are kept as they are,
# whatever their length: `eos_token_id: [2, 5, 7]` in a 3-layer model is not per layer.
PER_LAYER = (
    "layer_types",  # Gemma2/3, Qwen2/3, Mistral, Cohere2, ... ("sliding_attention", ...)
    "mlp_layer_types",  # dense or sparse MLP per layer
    "layers_block_type",  # hybrid models (Jamba, Zamba, Granite hybrid, ...)
    "block_types",  # RecurrentGemma-style block kinds
    "attention_layers",  # GPT-Neo's expanded attention types
    "no_rope_layers",  # SmolLM3, Llama 4: 0/1 per layer
    "layer_rope_theta",  # Granite SWA
    "block_configs",  # Nemotron-NAS: one block config per layer
    "num_attention_heads_per_layer",
    "num_key_value_heads_per_layer",
    "activation_sparsity_pattern",  # Gemma3n
    "intermediate_size",  # a list only where sizes differ per layer (Gemma3n)
    "num_key_value_heads",
    "num_attention_heads",
)


def _set_depth(parent: nn.Module, config: Any, state: SurgeryState) -> None:
    """The layer count, and every per-layer list of the config (`PER_LAYER`: layer types,
    per-layer RoPE switches, ...) taken at the kept layers, so the saved model reloads as
    it was built. With several stacks, each count is a field of its own (BART's
    `decoder_layers`, T5's `num_decoder_layers`), found by `_fit_fields` from the layers
    the class builds under each stack."""
    n = len(state.analysis.layers)
    order = list(range(n)) if state.layers is None else state.layers
    if order == list(range(n)) or len(state.analysis.stacks) > 1:
        return
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    named = [f for c in (config, text) for f in c.to_dict() if "layers" in f]
    where = [  # the usual names first, the top level's before its text model's (Fuyu's)
        (c, f)
        for c in (config, text)
        for f in dict.fromkeys([*CONFIG_FIELDS["num_layers"], *named])
        if type(_value(c, f)) is int and _value(c, f) == n
    ]
    if not where:
        raise PlanError(
            f"{type(config).__name__} has no layer count equal to {n}: cannot change depth"
        )
    owner, field = _depth_field(parent, config, where, set(state.lists()), len(order))
    setattr(owner, field, len(order))
    config = owner
    for field in PER_LAYER:
        value = _value(config, field)
        if isinstance(value, (list, tuple)) and len(value) == n:
            setattr(config, field, type(value)(value[i] for i in order))
    for field, value in config.to_dict().items():
        if _layer_indices(field, value, n):  # `mlp_only_layers: [0, 1]`: which layers are
            setattr(config, field, [j for j, i in enumerate(order) if i in value])
        keys = list(value) if isinstance(value, dict) and "layer" in field else []
        if keys and all(str(k).isdigit() and int(k) < n for k in keys):  # not id2label
            # one entry per layer index (`per_layer_config: {3: ...}`), for some layers
            kept = {int(k): v for k, v in value.items()}
            setattr(config, field, {j: kept[i] for j, i in enumerate(order) if i in kept})
    _set_stages(config, order)
    _fit_lists(parent, config, order, n)


def _fit_lists(parent: nn.Module, config: Any, order: list[int], n: int) -> None:
    """Where the class refuses the config with the new layer count (Longformer asserts
    one `attention_window` per layer), a list as long as the parent's layer count that
    `PER_LAYER` does not name is taken at the kept layers: the first one, tried one at a
    time, with which the class builds."""
    for field, value in [(None, None), *_lists_of(config, n).items()]:
        if field is not None:
            setattr(config, field, type(value)(value[i] for i in order))
        try:
            with torch.device("meta"):
                type(parent)(reloaded(config))
            return
        except Exception:  # noqa: BLE001 - the class refuses the config
            if field is not None:
                setattr(config, field, value)


def _lists_of(config: Any, n: int) -> dict[str, list]:
    """The config's lists of `n` entries that `PER_LAYER` does not name (nor token ids)."""
    return {
        f: v
        for f, v in config.to_dict().items()
        if isinstance(v, (list, tuple))
        and len(v) == n
        and f not in PER_LAYER
        and not f.endswith(("_id", "_ids"))
    }


def _depth_field(parent: nn.Module, config: Any, where: list, stack: set[str], count: int):
    """Of the fields that hold the parent's layer count, the one that gives the lists of
    `stack` (one, or the several a layer spans) `count` entries and leaves every other
    module list as long as it was (Whisper's
    `num_hidden_layers` is its encoder's; its decoder's is `decoder_layers`), tried on
    the meta device; the first one when none does (the shape checks then say so)."""
    lists = {p: len(m) for p, m in _module_lists(parent).items()}
    for owner, field in where:
        old = getattr(owner, field)
        setattr(owner, field, count)
        try:
            with torch.device("meta"):
                built = {
                    p: len(m) for p, m in _module_lists(type(parent)(reloaded(config))).items()
                }
        except Exception:  # noqa: BLE001 - the class refuses this value
            built = {}
        finally:
            setattr(owner, field, old)
        others = all(built.get(p, n) == n for p, n in lists.items() if p not in stack)
        if all(built.get(p) == count for p in stack) and others:
            return owner, field
    return where[0]


def _layer_indices(field: str, value: Any, n: int) -> bool:
    """Whether a config field lists layer indices (`mlp_only_layers: [0, 1]`): a list named
    `..._layers`, not one entry per layer (`PER_LAYER`), of distinct indices below `n`."""
    return (
        field.endswith("_layers")
        and field not in PER_LAYER
        and isinstance(value, list)
        and all(type(i) is int and 0 <= i < n for i in value)
        and len(set(value)) == len(value)
    )


def _set_stages(config: Any, order: list[int]) -> None:
    """A backbone config (`stage_names`, `out_indices`, `out_features`: stage i is the
    output of layer i, stage 0 the embeddings) gets the child's stages: each output stage
    becomes the last kept layer at or before it."""
    names = getattr(config, "stage_names", None)
    indices = getattr(config, "out_indices", None)
    if not isinstance(names, (list, tuple)) or not isinstance(indices, (list, tuple)):
        return
    stages = ["stem"] + [f"stage{i}" for i in range(1, len(order) + 1)]
    n = len(names)
    kept = sorted({sum(1 for j in order if j < (i % n)) for i in indices})
    config.stage_names = stages
    if hasattr(config, "_out_indices") or hasattr(config, "_out_features"):
        config._out_indices, config._out_features = kept, [stages[i] for i in kept]
    else:
        config.out_indices, config.out_features = kept, [stages[i] for i in kept]


def check_config(parent: nn.Module, state: SurgeryState, expected: dict[str, tuple]) -> Any:
    """Build the parent's class from the child config on the meta device and compare every
    tensor's shape with the child's; `PlanError` (before any weight is cut) if the config
    cannot express the child. Sizes under names `CONFIG_FIELDS` does not know (BART's
    `decoder_ffn_dim`, ...) are found by `_fit_fields`. Returns the config."""
    config, wrong = fit_config(parent, state, expected)
    if wrong:
        raise config_error(parent, wrong)
    return config


def config_error(parent: nn.Module, wrong: dict) -> PlanError:
    """The one-line error for a config that cannot express the child (`fit_config`)."""
    name, (got, want) = next(iter(wrong.items()))
    if name.startswith("the layers"):
        return PlanError(
            f"{type(parent).__name__} cannot hold this child: its config builds {got[0]} "
            f"of {name}, the child has {want[0]}; no config field changes that count"
        )
    return PlanError(
        f"{type(parent).__name__} cannot hold this child: its config gives {name} the "
        f"shape {got}, the child needs {want}; choose sizes where "
        "hidden_size, num_heads and head_dim agree"
    )


def fit_config(parent: nn.Module, state: SurgeryState, expected: dict[str, tuple]):
    """The child config, and the tensors whose shape it still gets wrong: name -> (shape
    the config gives, shape the child needs)."""
    config = child_config(parent, state)
    wrong = _mismatches(parent, config, expected, state)
    if wrong:
        config, wrong = _fit_sub_configs(parent, config, expected, wrong, state)
    if wrong:
        config, wrong = _fit_fields(parent, config, expected, wrong, state)
    return reloaded(config), wrong


def reloaded(config: Any) -> Any:
    """`config` as `from_pretrained` will read it back: a class that derives fields from
    others when it is built (Idefics2's resampler width from its text model's) derives them
    from the child's sizes, so the child is built as it will be reloaded."""
    try:
        return type(config).from_dict(config.to_dict())
    except Exception:  # noqa: BLE001 - a config class that cannot read its own dict
        return config


def _mismatches(parent: nn.Module, config: Any, expected: dict[str, tuple], state) -> dict:
    """Tensor name -> (shape the config gives, shape the child needs), where they differ;
    and the number of layers, where the class builds another number than the child has."""
    with torch.device("meta"):
        probe = type(parent)(reloaded(config))
    names = probe.state_dict()
    out = {}
    for name, tensor in names.items():
        want = expected.get(state.parent_name(name))  # child layer j: a parent layer's
        if want is not None and tuple(tensor.shape) != want:
            out[name] = (tuple(tensor.shape), want)
    want = {path: len(m) for path, m in _module_lists(parent).items()}  # as in the parent
    want.update({path: len(kept) for path, kept in state.lists().items()})
    built = _module_lists(probe)
    for path, n in want.items():
        if path in built and len(built[path]) != n:
            out[f"the layers under {path}"] = ((len(built[path]),), (n,))
    return out


def _module_lists(model: nn.Module) -> dict[str, nn.ModuleList]:
    """Every module list of numbered entries (a stack of layers, or any other list: a
    field that changes the count of one the child keeps is the wrong field)."""
    return {
        path: m
        for path, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and path and all(k.isdigit() for k in m._modules)
    }


def _fit_fields(parent: nn.Module, config: Any, expected: dict, wrong: dict, state, tries=24):
    """Integer fields of the config whose value is a size the config gives wrongly are
    tried, one at a time, at the size the child needs; a change is kept when it leaves
    fewer mismatched tensors and no new one. Returns (config, what is still wrong)."""
    fields = _int_fields(config)
    for _ in range(tries):
        name, (got, want) = next(iter(wrong.items()))
        moves = {(g, w) for g, w in zip(got, want, strict=False) if g != w}
        layers = "the layers under "
        stack = name[len(layers) :] if name.startswith(layers) else None
        better = None
        for *owners, field in fields:
            for g, w in moves:
                if _value(_at(config, owners), field) != g:
                    continue
                trial = copy.deepcopy(config)
                setattr(_at(trial, owners), field, w)
                if stack is not None:  # that config's lists per layer follow its stack
                    _per_layer_cut(_at(trial, owners), g, state, stack)
                for candidate in [trial, *_lists_cut(trial, g, w, state)]:
                    try:
                        left = _mismatches(parent, candidate, expected, state)
                    except Exception:  # noqa: BLE001 - the class refuses this value
                        continue
                    if len(left) < len(wrong) and set(left) <= set(wrong):
                        better = (candidate, left)
                        break
                if better:
                    break
            if better:
                break
        if better is None:
            return config, wrong
        config, wrong = better
        if not wrong:
            break
    return config, wrong


def _fit_sub_configs(parent: nn.Module, config: Any, expected: dict, wrong: dict, state):
    """The child's sizes written into nested configs as into the config itself (an
    encoder-decoder's `encoder.text_config`, a vision tower's `vision_config`), where that
    leaves fewer mismatched tensors (new ones may be tensors the forward never reads, a
    pooler the config sizes with the hidden size: the caller cuts them to the config's
    size): the main stream's sizes in all of them at once (an encoder-decoder's two
    configs, whose widths must agree), then each stack's sizes in each one. Returns
    (config, what is still wrong)."""
    unselected = replace(state, select={})
    sizes = [(state.child_sizes(), unselected.child_sizes())]
    for stack in state.analysis.stacks:
        pair = (state.child_sizes(stack), unselected.child_sizes(stack))
        sizes += [pair] if pair not in sizes and pair[0] != pair[1] else []
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    paths = [p for p in _config_paths(config) if _at(config, p) is not text]  # sized already
    trials = [(paths, *sizes[0])] if paths else []
    trials += [([path], *pair) for path in paths for pair in sizes]
    for owners, new, full in trials:
        trial = copy.deepcopy(config)
        for path in owners:
            _set_sizes(_at(trial, path), new, full, full["hidden_size"])
        try:
            left = _mismatches(parent, trial, expected, state)
        except Exception:  # noqa: BLE001 - the class refuses these values
            continue
        if len(left) < len(wrong):
            config, wrong = trial, left
        if not wrong:
            break
    return config, wrong


def _per_layer_cut(config: Any, old: int, state, stack: str) -> None:
    """The `PER_LAYER` lists of `old` entries of (a nested) config taken at the layers the
    child keeps of `stack`."""
    layers = state.analysis.layers
    index = [i for i, layer in enumerate(layers) if layer.stack == stack]
    kept = state.kept_by_stack().get(stack)
    if len(index) != old or kept is None:
        return
    for field in PER_LAYER:
        value = _value(config, field)
        if isinstance(value, (list, tuple)) and len(value) == old:
            setattr(config, field, type(value)(value[index.index(i)] for i in kept))


def _config_paths(config: Any, owners: tuple = ()) -> list[tuple[str, ...]]:
    """Paths of the configs nested in a config, outermost first."""
    out = []
    for key, value in config.to_dict().items():
        if isinstance(value, dict) and hasattr(getattr(config, key, None), "to_dict"):
            out += [(*owners, key), *_config_paths(getattr(config, key), (*owners, key))]
    return out


def _int_fields(config: Any) -> list[tuple[str, ...]]:
    """Paths of the integer fields of a config and of the configs nested in it (an
    encoder-decoder's `encoder.text_config.hidden_size`), ids left out."""
    out = []
    for owners in [(), *_config_paths(config)]:
        fields = _at(config, owners).to_dict().items()
        out += [(*owners, k) for k, v in fields if type(v) is int and not k.endswith("_id")]
    return out


def _at(config: Any, owners) -> Any:
    for key in owners:
        config = getattr(config, key)
    return config


def _lists_cut(config: Any, old: int, new: int, state) -> list:
    """`config` with one of its lists of `old` entries (one per layer of a stack: LED's
    `attention_window`) taken at the kept layers of a stack cut from `old` layers to
    `new`: one candidate per such list and stack."""
    layers, out = state.analysis.layers, []
    lists = _lists_of(config, old)
    for stack, kept in state.kept_by_stack().items() if lists else ():
        index = [i for i, layer in enumerate(layers) if layer.stack == stack]
        if len(index) != old or len(kept) != new:
            continue
        for field, value in lists.items():
            candidate = copy.deepcopy(config)
            setattr(candidate, field, type(value)(value[index.index(i)] for i in kept))
            out.append(candidate)
    return out


def emit_hf(parent: nn.Module, config: Any, child: fx.GraphModule, state: SurgeryState):
    """The parent's class built from `config`, loaded with the child's weights, ties
    restored, buffers rebuilt by its constructor; checked against the child graph."""
    model = type(parent)(config)
    table = state.graph.params
    own = {
        n: t
        for n, t in (
            *child.named_parameters(remove_duplicate=False),
            *child.named_buffers(remove_duplicate=False),
        )
    }
    by_canonical = {table.canonical(n): t for n, t in own.items() if n in table}
    parent_tensors = parent.state_dict()
    state_dict, fresh = {}, []
    for name, init in model.state_dict().items():
        source_name = state.parent_name(name)  # child layer j: the graph's layer it came from
        used = source_name in table and table.canonical(source_name) in state.analysis.dims.tensors
        source = own.get(source_name)
        if source is None and source_name in table:
            source = by_canonical.get(table.canonical(source_name))
        if not used or source is None:
            # not read by the traced forward, or read by nothing that reaches its outputs
            # (a mask token, a contact head, the pooler of a masked LM): the parent's when
            # the child's class gives it the same shape, else the class's own init
            source = parent_tensors.get(source_name)
            if source is None or source.shape != init.shape:
                source = (
                    init if init.device.type != "meta" else torch.zeros_like(init, device="cpu")
                )
                fresh.append(name)
        state_dict[name] = source.detach().clone()
    if fresh:
        warnings.warn(
            f"{len(fresh)} tensor(s) that the traced forward never reads keep "
            f"{type(model).__name__}'s own initialisation in the child: {', '.join(fresh[:4])}",
            stacklevel=2,
        )
    model.load_state_dict(state_dict, strict=True, assign=True)  # the child's dtypes too
    model.tie_weights()
    model.eval()
    _adopt_rebuilt_buffers(model, child)
    _adopt_rebuilt_scalars(parent, model, child, state)
    _check_same(model, child, state, parent)
    _save_everything(model)
    return model


def _save_everything(model: nn.Module) -> None:
    """Tensors the class leaves out of its files because its constructor computes them
    (Marian's sinusoidal positions, `_keys_to_ignore_on_save`) are saved all the same: the
    child's are cut from the parent's, and the constructor would compute others for the
    child's width."""
    if getattr(model, "_keys_to_ignore_on_save", None):
        model._keys_to_ignore_on_save = None


def _adopt_rebuilt_buffers(model: nn.Module, child: fx.GraphModule) -> None:
    """Buffers the constructor derives from the config (e.g. an embedding scale of
    sqrt(hidden_size)) hold the child's values: give the graph child the same ones, in
    the dtype the parent had (a bfloat16 parent's graph expects bfloat16 buffers)."""
    persistent = set(model.state_dict())
    for name, buffer in list(model.named_buffers()):
        if name in persistent:
            continue
        owner, _, attr = name.rpartition(".")
        try:
            module = child.get_submodule(owner) if owner else child
        except AttributeError:
            continue
        old = module._buffers.get(attr)
        if old is not None and old.shape == buffer.shape:
            value = buffer.detach().to(old.dtype)
            module._buffers[attr] = value.clone()
            model.get_submodule(owner)._buffers[attr] = value


def _adopt_rebuilt_scalars(parent: nn.Module, model: nn.Module, child: fx.GraphModule, state):
    """Float attributes that a module's constructor derives from the config (an embedding
    scale of sqrt(hidden_size)) are constants in the graph: where the rebuilt module holds
    another value than the parent's, the graph's calls inside that module that pass the
    parent's value take the child's, as `_adopt_rebuilt_buffers` does for buffers. So do
    the square root of a size (an int attribute, or a field of the module's config) and
    its inverse, also where the forward makes it a tensor (`torch.tensor(hidden ** 0.5)`)."""
    changed = _changed_scalars(parent, model, state)
    if not changed:
        return
    for node in child.graph.nodes:
        swap = changed.get(_owner(node))
        if node.op == "call_function" and swap:
            node.args = tuple(swap.get(a, a) if type(a) is float else a for a in node.args)
            node.kwargs = {  # baddbmm(..., alpha=inv_norm_factor)
                k: swap.get(a, a) if type(a) is float else a for k, a in node.kwargs.items()
            }
        elif node.op == "get_attr" and node.users:
            swaps = [changed.get(_owner(u)) for u in node.users]
            _swap_constant(
                child, node.target, swaps[0] if all(swaps[0] == w for w in swaps) else None
            )
    child.recompile()


def _changed_scalars(parent: nn.Module, model: nn.Module, state) -> dict[str, dict[float, float]]:
    """Per module path of the parent: {the parent's value: the rebuilt module's}."""
    modules = dict(model.named_modules())
    child_path = {state.parent_name(f"{p}.w")[:-2]: p for p in modules if p}
    changed: dict[str, dict[float, float]] = {}
    new_sizes = state.child_sizes()
    full = replace(state, select={}).child_sizes()
    cut = {(full[k], v) for k, v in new_sizes.items() if full.get(k, v) != v and full[k] > 4}
    for path, old in parent.named_modules():
        new = modules.get(child_path.get(path, path))
        if new is None:
            continue
        for value, other in _attribute_pairs(old, new):
            if type(value) is float and type(other) is float and other != value:
                swap = changed.setdefault(path, {})
                swap[value] = other
                # and its complement unless a value maps it: `(1 - self.lambda_init) * x`
                swap.setdefault(1 - value, 1 - other)
            elif type(value) is int and type(other) is int and (value, other) in cut:
                # a size the forward scales by (`x * sqrt(d_model)`, `q * head_dim**-0.5`)
                swap = changed.setdefault(path, {})
                swap[math.sqrt(value)], swap[value**-0.5] = math.sqrt(other), other**-0.5
    return changed


def _attribute_pairs(old: nn.Module, new: nn.Module):
    """(parent's, rebuilt's) of each attribute of a module, and of each field of its
    config where it holds one."""
    mine = vars(new)
    for key, value in vars(old).items():
        other = mine.get(key)
        yield value, other
        if hasattr(value, "to_dict") and hasattr(other, "to_dict"):
            yield from ((v, _value(other, k)) for k, v in vars(value).items())


def _owner(node: fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else None


def _swap_constant(child: fx.GraphModule, target: str, swap: dict | None) -> None:
    """A number the forward made a tensor, read only inside modules whose scalars change."""
    owner, _, attr = target.rpartition(".")
    module = child.get_submodule(owner) if owner else child
    value = getattr(module, attr, None)
    if (
        not swap
        or not isinstance(value, torch.Tensor)
        or value.dim()
        or not value.is_floating_point()
    ):
        return
    new = swap.get(value.item())
    if new is None:  # float32 stores sqrt(64) exactly, not sqrt(2): compare in its dtype
        near = [v for k, v in swap.items() if torch.tensor(k, dtype=value.dtype) == value]
        new = near[0] if near else None
    if new is not None:
        setattr(module, attr, torch.tensor(new, dtype=value.dtype))


@torch.no_grad()
def _check_same(
    model: nn.Module, child: fx.GraphModule, state: SurgeryState, parent: nn.Module
) -> None:
    """The rebuilt model computes what the child graph computes, on three inputs:

    1. the traced inputs: every output, graph against rebuilt model;
    2. where the model takes token ids and an `attention_mask`: the same tokens with the
       last quarter of row 0 masked out (right padding). The graph, traced by
       torch.export with an all-ones mask, may have specialised on it, so for a causal
       language model the rebuilt model's outputs at the unmasked positions (row 0's
       first positions, every other row) are compared with the graph's on the traced
       inputs: causally they only see unmasked tokens. For other models the rebuilt
       model's outputs are only checked to be finite;
    3. a second sequence length (half the traced one): the graph's shapes are fixed at
       the traced ones, so for a causal language model the rebuilt model's outputs on
       the first half of the tokens are compared with the graph's first positions on
       the traced inputs; for other models they are checked to be finite.

    The traced inputs must agree to 1e-5 of the output scale; the other two run other
    kernels (masked attention, another length), so in bfloat16 or float16 they may
    differ by 8 of the dtype's eps. `InvariantError` on a difference. Inputs the parent
    refuses as well (a prompt whose image tokens a half length cuts) are skipped."""
    inputs = state.graph.inputs
    try:
        raw = inputs.call(child)
    except Exception as e:  # noqa: BLE001 - the child graph itself is broken: a bug
        raise InvariantError(
            f"the child graph fails on the traced inputs ({first_line(e, 160)}): please "
            "report this model"
        ) from e
    want, got = _same_fields(raw, inputs.call(model))
    _compare(model, want, got, "the traced inputs", other_kernels=False)
    want = output_tensors(raw)
    ids = inputs.kwargs.get("input_ids")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[1] < 2:
        return
    causal = is_causal_lm(model) and _causal_in_fact(model, inputs.kwargs)
    seq = ids.shape[1]
    logits = want[0]
    mask = inputs.kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.shape == ids.shape:
        padded = mask.clone()
        keep = seq - max(1, seq // 4)
        padded[0, keep:] = 0
        out = _variant(model, parent, (), {**inputs.kwargs, "attention_mask": padded})
        if out is None:
            pass
        elif causal:
            _compare(model, [logits[0, :keep]], [out[0, :keep]], "a padded attention mask")
            if ids.shape[0] > 1:
                _compare(model, [logits[1:]], [out[1:]], "a padded attention mask")
        else:
            _finite(model, out, "a padded attention mask")
    half = seq // 2
    short = {
        k: v[:, :half] if isinstance(v, torch.Tensor) and v.shape == ids.shape else v
        for k, v in inputs.kwargs.items()
    }
    out = _variant(model, parent, inputs.args, short)
    if out is None:
        return
    if causal:
        _compare(model, [logits[:, :half]], [out], f"a sequence length of {half}")
    else:
        _finite(model, out, f"a sequence length of {half}")


def _variant(model: nn.Module, parent: nn.Module, args, kwargs) -> torch.Tensor | None:
    """The rebuilt model's first output on other inputs than the traced ones; None where
    the parent refuses them too."""
    try:
        return output_tensors(model(*args, **kwargs))[0]
    except Exception:
        try:
            parent(*args, **kwargs)
        except Exception:  # noqa: BLE001 - not inputs this model takes
            return None
        raise


def _same_fields(want, got) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The tensors of two outputs, paired field by field (`text_output.hidden_states`):
    a field holding another number of tensors in each (one per layer, where the graph
    keeps the entries of removed layers) is left out; the first tensors always pair."""
    a, b = _by_field(want), _by_field(got)
    same = [k for k, ws in a.items() if len(b.get(k, ())) == len(ws)]
    pairs = [pair for k in same for pair in zip(a[k], b[k], strict=True)]
    flat_a, flat_b = output_tensors(want), output_tensors(got)
    pairs = [(flat_a[0], flat_b[0])] + pairs if flat_a and flat_b else pairs
    if len(pairs) < 2:  # not keyed alike (plain tuples): in order, as many as both have
        pairs = list(zip(flat_a, flat_b, strict=False))
    return [w for w, _ in pairs], [g for _, g in pairs]


def _by_field(output, prefix: str = "") -> dict[str, list[torch.Tensor]]:
    if isinstance(output, Mapping):
        fields = {}
        for k, v in output.items():
            fields.update(_by_field(v, f"{prefix}{k}."))
        return fields
    tensors = output_tensors(output)
    return {prefix.rstrip("."): tensors} if tensors else {}


def _causal_in_fact(model: nn.Module, kwargs: dict) -> bool:
    """Whether another last token leaves every earlier output as it was: a causal-LM class
    may still attend both ways (BERT's LM head with `is_decoder` off)."""
    ids = kwargs["input_ids"]
    other = ids.clone()
    other[:, -1] = torch.where(ids[:, -1] > 0, ids[:, -1] - 1, ids[:, -1] + 1)
    a = output_tensors(model(**kwargs))[0][:, :-1]
    b = output_tensors(model(**{**kwargs, "input_ids": other}))[0][:, :-1]
    return torch.allclose(a, b, atol=1e-5 * max(a.abs().max().item(), 1.0), rtol=1e-4)


def _compare(model: nn.Module, want, got, what: str, other_kernels: bool = True) -> None:
    """`other_kernels`: the two ran different kernels (another length, a mask), so they
    round differently: in bfloat16 or float16 the tolerance is 8 of the dtype's eps."""
    for w, g in zip(want, got, strict=False):  # the first outputs (some add optional ones)
        scale = max(w.abs().max().item(), 1.0)
        eps = torch.finfo(w.dtype).eps if w.is_floating_point() and other_kernels else 0.0
        atol, rtol = max(1e-5, 8 * eps) * scale, max(1e-4, 8 * eps)
        if g.shape != w.shape or not torch.allclose(g, w, atol=atol, rtol=rtol):
            diff = (g - w).abs().max().item() if g.shape == w.shape else float("nan")
            raise InvariantError(
                f"the rebuilt {type(model).__name__} differs from the child graph by "
                f"{diff:.3g} on {what}: please report this model"
            )


def _finite(model: nn.Module, out: torch.Tensor, what: str) -> None:
    if out.is_floating_point() and not torch.isfinite(out).all():
        raise InvariantError(
            f"the rebuilt {type(model).__name__} gives non-finite outputs on {what}: please "
            "report this model"
        )
