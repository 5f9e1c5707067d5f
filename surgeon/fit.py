"""Fit the parent's Hugging Face config to the child: the one place that knows config field
names. A short table of common ones (`CONFIG_FIELDS`), per-layer lists (`PER_LAYER`), and
what the class itself shows for the rest: a probe built on the meta device from the
config, compared tensor by tensor with the shapes the child needs, fitted field by field.

`fit_config(parent, shape)` takes the child's shape in one object (`ChildShape`, made from
the passes' decisions by `ChildShape.of`); it reads nothing else of the surgery. The
pipeline calls it before any weight is cut (a config that cannot hold the child is a
`PlanError` then), and `emit/hf.py` builds the child's class from the config it returns.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from fractions import Fraction
from functools import cache
from typing import Any

import torch
from torch import nn

from .analysis import FFN_ROLES
from .errors import PlanError, first_line
from .passes.state import SurgeryState

__all__ = [
    "CONFIG_FIELDS",
    "PER_LAYER",
    "ChildShape",
    "config_error",
    "config_value",
    "fit_config",
    "reloaded",
]


@dataclass(frozen=True)
class ChildShape:
    """What the config must express, read once from the passes' decisions.

    `sizes[stack]` is (the child's sizes, the parent's as the analysis sees them) for each
    stack of layers, `None` the stacks on the main residual stream; `hidden_size` the
    parent's residual width; `layer_stacks` the stack of each parent layer, in order;
    `order` the parent layer behind each child layer (None: all kept); `lists` every
    module list of layers (or of their parts) with the parent entry behind each child
    entry; `kept_by_stack` the same per stack; `need(name)` the shape the child needs for
    the tensor its class calls `name` (None for a tensor the child does not constrain).
    """

    sizes: dict[str | None, tuple[dict[str, int], dict[str, int]]]
    hidden_size: int
    layer_stacks: list[str]
    order: list[int] | None
    lists: dict[str, list[int]]
    kept_by_stack: dict[str, list[int]]
    need: Callable[[str], tuple | None]
    # per stack: head counts (`num_heads`, `num_kv_heads`) that differ between its layers
    # and that the child scales by one factor in all of them -> that factor
    scales: dict[str | None, dict[str, Fraction]] = dataclasses.field(default_factory=dict)
    role: Callable[[str], str | None] = lambda name: None  # noqa: E731 - the FFN role a
    # tensor's width is (`FFN_ROLES`), by the child's name; None for other tensors

    @classmethod
    def of(cls, state: SurgeryState, expected: dict[str, tuple]) -> ChildShape:
        """From the decisions in `state`, and `expected`: parent tensor name -> the shape
        the child gives it."""
        whole = replace(state, select={}, top_k=None)
        stacks = [None, *state.analysis.stacks]

        @cache
        def need(name: str) -> tuple | None:
            return expected.get(state.parent_name(name))

        a = state.analysis
        roles = {
            name: layer.ffn_role[g]
            for layer in a.layers
            for g in layer.ffn
            for name, _ in a.groups[g].members
        }
        return cls(
            role=lambda name: roles.get(state.parent_name(name)),
            sizes={s: (state.child_sizes(s), whole.child_sizes(s)) for s in stacks},
            hidden_size=state.analysis.hidden_size,
            layer_stacks=[layer.stack for layer in state.analysis.layers],
            order=state.layers,
            lists=state.lists(),
            kept_by_stack=state.kept_by_stack(),
            need=need,
            scales={s: _head_scales(state, s) for s in stacks},
        )

    @property
    def num_layers(self) -> int:
        """The parent's layer count."""
        return len(self.layer_stacks)


def _head_scales(state: SurgeryState, stack: str | None) -> dict[str, Fraction]:
    """Head counts that differ between the kept attention layers of `stack` (None: the
    main residual stream's) and that the child scales by one factor in every one of them
    (MiMo-V2-Flash's sliding layers hold twice the config's KV heads): one config field
    states them all, scaled by that factor."""
    a, kept = state.analysis, set(state.kept_layers())
    pairs: dict[str, set[tuple[int, int]]] = {}
    for i, layer in enumerate(a.layers):
        if i not in kept or "attention" in state.dropped.get(i, ()):
            continue
        if layer.stack != stack if stack is not None else layer.stream != a.residual:
            continue
        if not layer.heads or not a.cuts_heads(layer):
            continue
        for key, groups in (("num_heads", layer.heads), ("num_kv_heads", layer.kv)):
            old = math.prod(a.atoms.size[g] for g in groups)
            new = math.prod(state.new_size(g) for g in groups)
            pairs.setdefault(key, set()).add((new, old))
    return {
        key: ratios.pop()
        for key, seen in pairs.items()
        if len({old for _, old in seen}) > 1
        and len(ratios := {Fraction(new, old) for new, old in seen}) == 1
    }


# What each size is called in the configs of transformers (first match is set).
CONFIG_FIELDS = {
    "hidden_size": ("hidden_size", "n_embd", "d_model", "embed_dim", "dim"),
    "intermediate_size": ("intermediate_size", "n_inner", "ffn_dim", "d_ff", "hidden_dim")
    + ("intermediate_size_mlp", "dense_intermediate_size", "first_dense_intermediate_size"),
    # each routed expert's width, and the shared experts': their own names first, then
    # those a config may give them with another role (Mixtral's experts use
    # `intermediate_size`; Llama 4's shared expert too)
    "moe_intermediate_size": (
        "moe_intermediate_size",
        "expert_ffn_hidden_size",
        "intermediate_size",
    ),
    "shared_expert_intermediate_size": (
        "shared_expert_intermediate_size",
        "shared_intermediate_size",
        "shared_experts_intermediate_size",
        "moe_shared_expert_intermediate_size",
        "share_expert_dim",
        "moe_intermediate_size",
        "intermediate_size",
    ),
    "num_heads": ("num_attention_heads", "n_head", "num_heads"),
    "num_kv_heads": ("num_key_value_heads", "num_kv_heads"),
    "head_dim": ("head_dim",),
    "num_experts": ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"),
    "num_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "num_experts_per_tok": ("num_experts_per_tok", "top_k", "moe_topk", "top_k_experts")
    + ("num_selected_experts", "moe_k", "experts_per_token"),
}
# The same size spelt for one stack, or for one kind of layer (`swa_`: the sliding-window
# layers' heads beside the full-attention layers'), followed where the parent holds it at
# the same value.
STACK_FIELDS = {
    "num_heads": re.compile(r"^(encoder|decoder|swa)_(num_)?attention_heads$"),
    "num_kv_heads": re.compile(r"^(encoder|decoder|swa)_(num_key_value_heads|kv_heads)$"),
    "intermediate_size": re.compile(r"^(encoder|decoder)_(ffn_dim|intermediate_size)$"),
}
ROLE_NAMES = dict(zip(FFN_ROLES, ("dense MLPs", "routed experts", "shared experts"), strict=True))
# Fields that are the residual width under another name when they equal it in the parent.
FOLLOW_HIDDEN = ("word_embed_proj_dim",)


def child_config(parent: nn.Module, shape: ChildShape) -> Any:
    """A copy of the parent's config with the child's sizes (in its text model's config
    too, where it has one apart: Fuyu's `text_config`)."""
    config = copy.deepcopy(parent.config)
    sizes, full = shape.sizes[None]  # the child's, the parent's as the analysis sees them
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    clashes: list = []
    for part in (config, text) if text is not config else (config,):
        _set_sizes(part, sizes, full, shape.hidden_size, clashes)
        _scale_sizes(part, shape.scales.get(None, {}), sizes)
    for key, value, field, (other, its) in clashes:
        raise PlanError(
            f"target.{key} = {value}: {type(parent).__name__} has one width for the "
            f"{ROLE_NAMES[key]} and the {ROLE_NAMES[other]} (config field {field}), and the "
            f"plan gives the {ROLE_NAMES[other]} {its}: give them one size"
        )
    _set_depth(parent, config, shape)
    return config


def _set_sizes(config: Any, sizes: dict, full: dict, old_hidden: int, clashes=None) -> None:
    """Write the child's `sizes` (`full`: the parent's) into the fields that state them.
    An FFN role's width claims the first field that states it; `clashes` collects the
    (size, value, field, (other size, its value)) where two roles claim one field at two
    values: a config with one width for several roles."""
    was = {}  # size -> (its value in the parent's config, the child's)
    claimed: dict[str, tuple[str, int]] = {}  # FFN width field -> (role, its child value)
    fields = config.to_dict()
    for key in FFN_ROLES[1:]:  # a role left at the parent's width keeps its field
        first = _exact(config, key, full)[:1]
        if key in sizes and full.get(key) == sizes[key] and first:
            claimed[first[0]] = (key, sizes[key])
    # the widths of routed and shared experts before the dense MLPs' (their names are
    # the more specific), then the rest
    for key, value in sorted(sizes.items(), key=lambda kv: kv[0] == FFN_ROLES[0]):
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
        exact = _exact(config, key, full, stacked)
        if key in FFN_ROLES:
            free = [f for f in exact if claimed.get(f, (key, value))[1] == value]
            if exact and not free and clashes is not None:
                clashes.append((key, value, exact[0], claimed[exact[0]]))
            exact = free if key == FFN_ROLES[0] else free[:1]
            claimed.update({f: (key, value) for f in exact})
        for field in exact:  # the fields that state the parent's size
            setattr(config, field, value)
        if exact:
            was[key] = (full.get(key), value)
            continue
        for field in named if key not in FFN_ROLES[1:] else ():  # experts' widths: fitted
            old = config_value(config, field)
            if isinstance(old, (list, tuple)):
                continue  # one per stage (Swin's `num_heads`): `_fit_fields` finds the entry
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
        if config_value(config, field) == old_hidden != sizes["hidden_size"]:
            setattr(config, field, sizes["hidden_size"])


def _scale_sizes(config: Any, scales: dict[str, Fraction], sizes: dict) -> None:
    """A head count that differs between layers (`ChildShape.scales`), scaled by one
    factor in all of them: the first field that states it, scaled by that factor."""
    for key, factor in scales.items():
        if key in sizes or factor == 1:
            continue
        for name in CONFIG_FIELDS[key]:
            value = config_value(config, name)
            if type(value) is int and not _derived(config, name):
                if (value * factor).denominator == 1:
                    setattr(config, name, int(value * factor))
                break


def _exact(config: Any, key: str, full: dict, stacked: list = ()) -> list[str]:
    """The fields of `config` that state the parent's size `key` (`full[key]`)."""
    named = [f for f in (*CONFIG_FIELDS[key], *stacked) if not _derived(config, f)]
    return [f for f in named if config_value(config, f) == full.get(key) is not None]


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


def states_kinds(config: Any, n: int) -> bool:
    """Whether `config` (or its text config) holds a list of one entry per layer of the
    `n` (`PER_LAYER`: `layer_types`, ...), which a child's config takes at its layers."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for part in {id(config): config, id(text): text}.values():
        for field in PER_LAYER:
            value = config_value(part, field)
            if isinstance(value, (list, tuple)) and len(value) == n:
                return True
    return False


def config_heads(model: nn.Module, layers: list) -> set[int] | None:
    """The layers (indices into `layers`, the analysis's) whose attention tensors the
    config sizes by its head count: the model's class built on the meta device with that
    count (`num_attention_heads`, or its alias, of its text config) doubled, or halved,
    and each layer's tensors compared with the parent's. None where there is no such
    count or no class built with another."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    field = next((f for f in CONFIG_FIELDS["num_heads"] if type(config_value(text, f)) is int), 0)
    if not field or not layers:
        return None
    n = config_value(text, field)
    for count in (2 * n, n // 2):
        trial = copy.deepcopy(config)
        t = trial.get_text_config() if hasattr(trial, "get_text_config") else trial
        try:
            setattr(t, field, count)
            with torch.device("meta"):
                built = type(model)(reloaded(trial)).state_dict()
        except Exception:  # noqa: BLE001 - the class refuses this count: try another
            continue
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        changed = {k for k, v in built.items() if k in shapes and tuple(v.shape) != shapes[k]}
        return {
            i
            for i, layer in enumerate(layers)
            if any(
                k.startswith(f"{part}.") for k in changed for part in layer.parts or [layer.name]
            )
        }
    return None


def config_value(config: Any, field: str) -> Any:
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
    "indexer_types",  # HY-V4: a layer's own sparse-attention indexer ("full") or none
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


# Config fields that count the leading layers of another kind (dense MLPs before the
# layers with experts; the layers run once before a loop): with depth, the kept layers
# among them. The same of the trailing layers (those run once after a loop), and of the
# layers between them (the loop's: Dory's `n_recurrent_layers`, what the others leave).
LEADING = ("first_k_dense_replace", "num_dense_layers", "moe_layer_start_index", "n_input_layers")
TRAILING = ("n_output_layers",)
BETWEEN = ("n_recurrent_layers",)


def _set_depth(parent: nn.Module, config: Any, shape: ChildShape) -> None:
    """The layer count, and every per-layer list of the config (`PER_LAYER`: layer types,
    per-layer RoPE switches, ...) taken at the kept layers, so the saved model reloads as
    it was built. With several stacks, each count is a field of its own (BART's
    `decoder_layers`, T5's `num_decoder_layers`), found by `_fit_fields` from the layers
    the class builds under each stack."""
    n = shape.num_layers
    order = list(range(n)) if shape.order is None else shape.order
    if order == list(range(n)) or len(shape.kept_by_stack) > 1:
        return
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    named = [f for c in (config, text) for f in c.to_dict() if "layers" in f]
    where = [  # the usual names first, the top level's before its text model's (Fuyu's)
        (c, f)
        for c in (config, text)
        for f in dict.fromkeys([*CONFIG_FIELDS["num_layers"], *named])
        if type(config_value(c, f)) is int and config_value(c, f) == n
    ]
    if not where:
        raise PlanError(
            f"{type(config).__name__} has no layer count equal to {n}: cannot change depth"
        )
    owner, field = _depth_field(parent, config, where, set(shape.lists), len(order))
    setattr(owner, field, len(order))
    config = owner
    for field in PER_LAYER:
        value = config_value(config, field)
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
    lead = trail = 0
    for field in LEADING:  # the first k layers are of another kind: those kept of them
        k = config_value(config, field)
        if type(k) is int and 0 < k <= n:
            lead = lead or k
            setattr(config, field, sum(i < k for i in order))
    for field in TRAILING:  # and the last k
        k = config_value(config, field)
        if type(k) is int and 0 < k <= n:
            trail = trail or k
            setattr(config, field, sum(i >= n - k for i in order))
    for field in BETWEEN:  # and those between the first and the last (a loop's)
        k = config_value(config, field)
        if type(k) is int and k == n - lead - trail:
            setattr(config, field, sum(lead <= i < n - trail for i in order))
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


def config_error(parent: nn.Module, wrong: dict, shape: ChildShape | None = None) -> PlanError:
    """The one-line error for a config that cannot express the child (`fit_config`)."""
    name, (got, want) = next(iter(wrong.items()))
    role = shape.role(name) if shape is not None else None
    if role in FFN_ROLES[1:]:  # a width the config derives from others (DeepSeek's shared)
        holds, asked = next((g, w) for g, w in zip(got, want, strict=False) if g != w)
        return PlanError(
            f"target.{role} = {asked}: {type(parent).__name__}'s config derives the "
            f"{ROLE_NAMES[role]}' width from other sizes, {holds} with this plan's: ask for "
            f"{holds}, or leave it out"
        )
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


def fit_config(parent: nn.Module, shape: ChildShape):
    """The child config, and the tensors whose shape it still gets wrong: name -> (shape
    the config gives, shape the child needs)."""
    try:
        config = child_config(parent, shape)
        wrong = _mismatches(parent, config, shape)
    except PlanError:
        raise
    except Exception as e:  # noqa: BLE001 - the config or the class refuses these sizes
        raise PlanError(
            f"{type(parent).__name__} cannot be built with this child's sizes "
            f"({first_line(e, 160)}): choose sizes its config accepts (hidden_size a "
            "multiple of num_heads, widths of at least a few units)"
        ) from e
    planned = _head_fields(config, shape)
    if wrong:
        config, wrong = _fit_sub_configs(parent, config, wrong, shape)
    if wrong:
        config, wrong = _fit_fields(parent, config, wrong, shape)
    if not wrong:
        _heads_as_planned(parent, config, shape, planned)
        _own_validation(parent, config, shape)
    return reloaded(config), wrong


def _head_fields(config: Any, shape: ChildShape) -> dict[str, tuple[str, int]]:
    """The config field that states each head count the plan cuts: key -> (field,
    value)."""
    sizes, full = shape.sizes[None]
    out = {}
    for key in ("num_heads", "num_kv_heads"):
        if key in sizes and sizes[key] != full.get(key):
            field = next(
                (f for f in CONFIG_FIELDS[key] if config_value(config, f) is not None), None
            )
            if field is not None and config_value(config, field) == sizes[key]:
                out[key] = (field, sizes[key])
    return out


def _heads_as_planned(parent: nn.Module, config: Any, shape: ChildShape, planned: dict) -> None:
    """`PlanError` where fitting the config to the child's tensors moved a head count
    the plan cut back to another value: the field also sizes tensors that are not
    attention's (RecurrentGemma's `num_attention_heads` is its recurrent gates' block
    count; with its only attention layer dropped, no head is left to cut)."""
    for key, (field, value) in planned.items():
        now = config_value(config, field)
        if now == value:
            continue
        trial = copy.deepcopy(config)
        setattr(trial, field, value)
        try:
            reads = next(iter(_mismatches(parent, trial, shape)), "other tensors")
        except Exception:  # noqa: BLE001 - the class refuses the planned value outright
            reads = "other tensors"
        raise PlanError(
            f"target.{key} = {value}: {type(parent).__name__}'s config field {field} also "
            f"sizes {reads}, which the child keeps at {now}: leave {key} out of the plan, "
            "or keep the layers whose heads it would cut"
        )


def _refusal(config: Any) -> Exception | None:
    """What the config class's own validation says of `config` (None: it accepts it)."""
    try:
        validate = getattr(config, "validate", None)
        if callable(validate):
            validate()
    except Exception as e:  # noqa: BLE001 - the class's validators raise their own kinds
        return e.__cause__ or e
    return None


def _own_validation(parent: nn.Module, config: Any, shape: ChildShape) -> None:
    """`PlanError` where the config class refuses the child's sizes (`save_pretrained`
    and `from_pretrained` would), naming the nearest sizes it accepts for each cut size
    (the others as planned)."""
    refusal = _refusal(config)
    if refusal is None:
        return
    sizes, full = shape.sizes[None]
    near = []
    for key in ("hidden_size", "num_heads", "num_kv_heads", "head_dim", *FFN_ROLES):
        if key not in sizes or key not in full or sizes[key] == full[key]:
            continue  # kept, or the parent's layers differ in it
        value, found = sizes[key], []
        for d in range(1, 65):
            for v in (value - d, value + d):
                if 1 <= v <= full[key] and len(found) < 2 and _whole_groups({**sizes, key: v}):
                    trial = replace(shape, sizes={**shape.sizes, None: ({**sizes, key: v}, full)})
                    try:
                        ok = _refusal(child_config(parent, trial)) is None
                    except Exception:  # noqa: BLE001 - a size the class refuses another way
                        ok = False
                    found += [v] if ok else []
        if found:
            near.append(f"{key} {' or '.join(map(str, sorted(found)))}")
    hint = f"; sizes it accepts nearby: {', '.join(near)}" if near else ""
    raise PlanError(
        f"{type(parent).__name__}'s config refuses this child's sizes: "
        f"{first_line(refusal, 200).rstrip('.')}{hint}"
    )


def _whole_groups(sizes: dict) -> bool:
    """Whether the query heads fill whole key/value groups."""
    heads, kv = sizes.get("num_heads"), sizes.get("num_kv_heads")
    return heads is None or not kv or heads % kv == 0


def reloaded(config: Any) -> Any:
    """`config` as `from_pretrained` will read it back: a class that derives fields from
    others when it is built (Idefics2's resampler width from its text model's) derives them
    from the child's sizes, so the child is built as it will be reloaded."""
    try:
        return type(config).from_dict(config.to_dict())
    except Exception:  # noqa: BLE001 - a config class that cannot read its own dict
        return config


def _mismatches(parent: nn.Module, config: Any, shape: ChildShape, kinds=None) -> dict:
    """Tensor name -> (shape the config gives, shape the child needs), where they differ;
    and the number of layers, where the class builds another number than the child has.
    `kinds`: a set to fill with the names of the tensors built that the child has, a
    layer's index made `*` (`_kinds`)."""
    with torch.device("meta"):
        probe = type(parent)(reloaded(config))
    names = probe.state_dict()
    if kinds is not None:  # (not RoFormer's `embeddings_project`, which its class builds
        # while the config's embedding and hidden sizes differ)
        kinds.update(_kinds([n for n in names if shape.need(n) is not None], shape))
    out = {}
    for name, tensor in names.items():
        want = shape.need(name)  # child layer j: a parent layer's
        if want is not None and tuple(tensor.shape) != want:
            out[name] = (tuple(tensor.shape), want)
    want = {path: len(m) for path, m in _module_lists(parent).items()}  # as in the parent
    want.update({path: len(kept) for path, kept in shape.lists.items()})
    built = _module_lists(probe)
    for path, n in want.items():
        if path in built and len(built[path]) != n:
            out[f"the layers under {path}"] = ((len(built[path]),), (n,))
    return out


def _kinds(names, shape: ChildShape) -> set[str]:
    """Tensor names with the index of a layer in its stack made `*`: what each layer
    holds, whatever the layer count (SegFormer's `sr_ratios` at 1 builds a stage's layers
    without their spatial reduction)."""
    owners = sorted(shape.lists, key=len, reverse=True)
    out = set()
    for name in names:
        for owner in owners:
            index, dot, rest = name[len(owner) + 1 :].partition(".")
            if name.startswith(owner + ".") and index.isdigit() and dot:
                name = f"{owner}.*.{rest}"
                break
        out.add(name)
    return out


def _module_lists(model: nn.Module) -> dict[str, nn.ModuleList]:
    """Every module list of numbered entries (a stack of layers, or any other list: a
    field that changes the count of one the child keeps is the wrong field); a
    `Sequential` of numbered entries is one too (CvT's stages hold their layers so)."""
    return {
        path: m
        for path, m in model.named_modules()
        if isinstance(m, (nn.ModuleList, nn.Sequential))
        and path
        and all(k.isdigit() for k in m._modules)
    }


def _fit_fields(parent: nn.Module, config: Any, wrong: dict, shape: ChildShape, tries=24):
    """Integer fields of the config whose value is a size the config gives wrongly are
    tried, one at a time, at the size the child needs; a ratio that sizes a width from
    another (a field named as one, `RATIOS`: Dinov2's `mlp_ratio`) is tried scaled by the
    factor that size must change by. A change is kept when it leaves fewer mismatched
    tensors and no new one; failing that, when the only new ones are narrower than the
    child's (a group the plan left whole that the class sizes with the field it cut:
    SegFormer's spatial reduction, as wide as its stage; the pipeline cuts such groups to
    the config's size). Returns (config, what is still wrong)."""
    fields = _int_fields(config) + _float_fields(config) + _list_fields(config)
    kinds: set[str] = set()  # what the config builds now: a trial builds all of it
    _mismatches(parent, config, shape, kinds)
    for _ in range(tries):
        better = _better(parent, config, wrong, shape, fields, kinds)
        if better is None:
            return config, wrong
        config, wrong, kinds = better
        if not wrong:
            break
    return config, wrong


def _better(parent, config, wrong, shape, fields, kinds: set):
    """(config, what is still wrong, the kinds of tensor it builds) with one field moved
    toward the size a mismatched tensor needs (see `_fit_fields`), the first such tensor
    first: the first move that leaves no new mismatch, else the first whose new ones are
    all narrower; None where no field does. Each distinct trial is built once."""
    tried, seen, fallback = set(), set(), None
    for name, (got, want) in wrong.items():
        moves = frozenset((g, w) for g, w in zip(got, want, strict=False) if g != w)
        layers = "the layers under "
        stack = name[len(layers) :] if name.startswith(layers) else None
        if (moves, stack) in tried:
            continue
        tried.add((moves, stack))
        for *owners, field in fields:
            for g, w in moves:
                value = config_value(_at(config, owners), field)
                for new in _moved(field, value, g, w):
                    key = (tuple(owners), field, repr(new), stack, g, w)
                    if key in seen:
                        continue
                    seen.add(key)
                    trial = copy.deepcopy(config)
                    found = _tried(
                        parent, trial, owners, field, new, (g, w), value, wrong, shape, stack,
                        kinds,
                    )  # fmt: skip
                    if found and found[3]:
                        return found[:3]
                    fallback = fallback or (found and found[:3])
    return fallback or None


def _moved(field: str, value: Any, g: int, w: int) -> list:
    """The values `field` (now `value`) is tried at where a size it may state moves from
    `g` to `w`: `w` for an integer equal to `g`; a ratio scaled by w/g; for a list of
    sizes (one per stage: Swin's `depths`, `num_heads`), the list with one entry equal to
    `g` made `w`, each such entry in turn."""
    if value == g and type(value) is int:
        return [w]
    if _ratio(field) and type(value) in (int, float) and value > 0:
        new = value * w / g  # a ratio: scaled with the size it gives
        return [int(new) if type(value) is int and new == int(new) else new]
    if _ratio(field) and isinstance(value, (list, tuple)) and g:  # one ratio per stage:
        scaled = [v * w / g for v in value]  # SegFormer's `mlp_ratios`, each entry in turn
        return [
            type(value)([*value[:i], int(x) if x == int(x) else x, *value[i + 1 :]])
            for i, x in enumerate(scaled)
            if type(value[i]) in (int, float) and x > 0
        ]
    if isinstance(value, (list, tuple)):
        return [
            type(value)([*value[:i], w, *value[i + 1 :]]) for i, v in enumerate(value) if v == g
        ]
    return []


def _tried(parent, trial, owners, field, new, move, value, wrong, shape, stack, kinds):
    """(config, what is still wrong, the kinds of tensor it builds, whether no mismatch is
    new) with `field` of `trial`
    at `new`, where that (or that with the per-layer lists taken at the kept layers)
    leaves fewer mismatched tensors, the new ones (if any) narrower than the child needs,
    and builds every kind of tensor in `kinds` (a field that drops a tensor leaves no
    mismatch on it); one without new mismatches first; else None."""
    g, w = move
    try:
        setattr(_at(trial, owners), field, new)
    except Exception:  # noqa: BLE001 - a strict config refuses this value
        return None  # (MPT's int `expansion_ratio` at a fraction)
    candidates = [trial, *_lists_cut(trial, g, w, shape)]
    if stack is not None:  # that config's lists per layer follow its stack (a list of
        cut = copy.deepcopy(trial)  # one entry per stage, Swin's `num_heads`, may be as
        _per_layer_cut(_at(cut, owners), g, shape, stack)  # long: tried as it is after)
        candidates.insert(0, cut)
    fallback = None
    for candidate in candidates:
        try:
            built: set[str] = set()
            left = _mismatches(parent, candidate, shape, built)
        except Exception:  # noqa: BLE001 - the class refuses this value
            continue
        if not kinds <= built or len(left) >= len(wrong):
            continue
        new_ones = set(left) - set(wrong)
        if new_ones and not all(_narrower(k, *left[k]) for k in new_ones):
            continue
        if stack is not None and type(value) is int:
            _scale_layer_counts(_at(candidate, owners), field, g, w)
        if not new_ones:
            return candidate, left, built, True
        fallback = fallback or (candidate, left, built, False)
    return fallback


def _narrower(name: str, got: tuple, want: tuple) -> bool:
    """Whether the shape the config gives tensor `name` is the child's but narrower along
    some axes (a layer count is not a width: fewer layers is never narrower)."""
    if name.startswith("the layers under "):
        return False
    return len(got) == len(want) and all(g <= w for g, w in zip(got, want, strict=True))


def _scale_layer_counts(config: Any, field: str, old: int, new: int) -> None:
    """Where `field` took a stack's layer count from `old` to `new`, a layer count the
    config states beside it as a multiple of it (HRM's `num_hidden_layers`, its cache
    slots: `num_layers_per_stack` x H_cycles x (L_cycles + 1)) keeps the ratio."""
    for name in CONFIG_FIELDS["num_layers"]:
        value = config_value(config, name)
        if name != field and type(value) is int and value > old and value % old == 0:
            if not _derived(config, name):
                setattr(config, name, value // old * new)


def _fit_sub_configs(parent: nn.Module, config: Any, wrong: dict, shape: ChildShape):
    """The child's sizes written into nested configs as into the config itself (an
    encoder-decoder's `encoder.text_config`, a vision tower's `vision_config`), where that
    leaves fewer mismatched tensors (new ones may be tensors the forward never reads, a
    pooler the config sizes with the hidden size: the caller cuts them to the config's
    size): the main stream's sizes in all of them at once (an encoder-decoder's two
    configs, whose widths must agree), then each stack's sizes in each one. Returns
    (config, what is still wrong)."""
    sizes = [shape.sizes[None]]
    for stack in shape.kept_by_stack:
        pair = shape.sizes[stack]
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
            left = _mismatches(parent, trial, shape)
        except Exception:  # noqa: BLE001 - the class refuses these values
            continue
        if len(left) < len(wrong):
            config, wrong = trial, left
        if not wrong:
            break
    return config, wrong


def _per_layer_cut(config: Any, old: int, shape: ChildShape, stack: str) -> None:
    """The `PER_LAYER` lists of `old` entries of (a nested) config taken at the layers the
    child keeps of `stack`."""
    index = [i for i, s in enumerate(shape.layer_stacks) if s == stack]
    kept = shape.kept_by_stack.get(stack)
    if len(index) != old or kept is None:
        return
    for field in PER_LAYER:
        value = config_value(config, field)
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


def _float_fields(config: Any) -> list[tuple[str, ...]]:
    """Paths of the float fields named as ratios (`RATIOS`) of a config and its nested
    configs."""
    out = []
    for owners in [(), *_config_paths(config)]:
        fields = _at(config, owners).to_dict().items()
        out += [(*owners, k) for k, v in fields if type(v) is float and _ratio(k)]
    return out


def _list_fields(config: Any) -> list[tuple[str, ...]]:
    """Paths of the fields of a config and its nested configs that hold a short list of
    sizes (one per stage of a hierarchical backbone: Swin's `depths` and `num_heads`);
    token ids and the per-layer lists (`PER_LAYER`) left out."""
    out = []
    for owners in [(), *_config_paths(config)]:
        for k, v in _at(config, owners).to_dict().items():
            kinds = (int, float) if _ratio(k) else (int,)  # ratios may be fractions
            sizes = isinstance(v, (list, tuple)) and v and all(type(x) in kinds for x in v)
            if sizes and k not in PER_LAYER and not k.endswith(("_id", "_ids")):
                out.append((*owners, k))
    return out


def _ratio(field: str) -> bool:
    return any(word in field for word in RATIOS)


# words of config fields that size one width as a multiple of another (`mlp_ratio`)
RATIOS = ("ratio", "mult")


def _at(config: Any, owners) -> Any:
    for key in owners:
        config = getattr(config, key)
    return config


def _lists_cut(config: Any, old: int, new: int, shape: ChildShape) -> list:
    """`config` with one of its lists of `old` entries (one per layer of a stack: LED's
    `attention_window`) taken at the kept layers of a stack cut from `old` layers to
    `new`: one candidate per such list and stack."""
    out = []
    lists = _lists_of(config, old)
    for stack, kept in shape.kept_by_stack.items() if lists else ():
        index = [i for i, s in enumerate(shape.layer_stacks) if s == stack]
        if len(index) != old or len(kept) != new:
            continue
        for field, value in lists.items():
            candidate = copy.deepcopy(config)
            setattr(candidate, field, type(value)(value[index.index(i)] for i in kept))
            out.append(candidate)
    return out
