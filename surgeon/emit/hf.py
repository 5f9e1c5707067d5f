"""Rebuild the parent's Hugging Face class around the child's weights.

This is the one place that knows Hugging Face config field names: a table, checked
against the graph (the rebuilt model must have exactly the child's tensor shapes and
compute what the child graph computes).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import fx, nn

from ..errors import InvariantError, PlanError
from ..frontends import output_tensors
from ..passes.state import SurgeryState

__all__ = ["CONFIG_FIELDS", "is_hf_model", "child_config", "check_config", "emit_hf"]

# What each size is called in the configs of transformers (first match is set).
CONFIG_FIELDS = {
    "hidden_size": ("hidden_size", "n_embd", "d_model", "embed_dim", "dim"),
    "intermediate_size": ("intermediate_size", "n_inner", "ffn_dim", "d_ff", "hidden_dim"),
    "num_heads": ("num_attention_heads", "n_head", "num_heads"),
    "num_kv_heads": ("num_key_value_heads", "num_kv_heads"),
    "head_dim": ("head_dim",),
    "num_layers": ("num_hidden_layers", "n_layer", "num_layers"),
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
    """A copy of the parent's config with the child's sizes."""
    config = copy.deepcopy(parent.config)
    sizes = state.child_sizes()
    old_hidden = state.analysis.hidden_size
    for key, value in sizes.items():
        for field in CONFIG_FIELDS[key]:
            if getattr(config, field, None) is not None or (
                key == "intermediate_size" and hasattr(config, field)
            ):
                setattr(config, field, value)
                break
    for field in FOLLOW_HIDDEN:
        if getattr(config, field, None) == old_hidden:
            setattr(config, field, sizes["hidden_size"])
    _set_depth(config, state)
    return config


def _set_depth(config: Any, state: SurgeryState) -> None:
    """The layer count, and every per-layer list of the config (layer types, sliding-window
    patterns, ...) taken at the kept layers, so the saved model reloads as it was built."""
    n = len(state.analysis.layers)
    order = list(range(n)) if state.layers is None else state.layers
    if order == list(range(n)):
        return
    for field in CONFIG_FIELDS["num_layers"]:
        if getattr(config, field, None) == n:
            setattr(config, field, len(order))
            break
    else:
        raise PlanError(
            f"{type(config).__name__} has no layer count equal to {n}: cannot change depth"
        )
    for field, value in list(vars(config).items()):
        if isinstance(value, (list, tuple)) and len(value) == n and not field.startswith("_"):
            setattr(config, field, type(value)(value[i] for i in order))


def check_config(parent: nn.Module, state: SurgeryState, expected: dict[str, tuple]) -> Any:
    """Build the parent's class from the child config on the meta device and compare every
    tensor's shape with the child's; `PlanError` (before any weight is cut) if the config
    cannot express the child. Returns the config."""
    config = child_config(parent, state)
    with torch.device("meta"):
        probe = type(parent)(config)
    for name, tensor in probe.state_dict().items():
        want = expected.get(name)
        if want is not None and tuple(tensor.shape) != want:
            raise PlanError(
                f"{type(parent).__name__} cannot hold this child: its config gives {name} the "
                f"shape {tuple(tensor.shape)}, the child needs {want}; choose sizes where "
                "hidden_size, num_heads and head_dim agree"
            )
    return config


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
    state_dict = {}
    for name in model.state_dict():
        source_name = state.parent_name(name)  # child layer j: the graph's layer it came from
        source = own.get(source_name)
        if source is None and source_name in table:
            source = by_canonical.get(table.canonical(source_name))
        if source is None:
            raise InvariantError(f"the child has no tensor for {name}")
        state_dict[name] = source.detach().clone()
    model.load_state_dict(state_dict, strict=True, assign=True)  # the child's dtypes too
    model.tie_weights()
    model.eval()
    _adopt_rebuilt_buffers(model, child)
    _check_same(model, child, state)
    return model


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


@torch.no_grad()
def _check_same(model: nn.Module, child: fx.GraphModule, state: SurgeryState) -> None:
    inputs = state.graph.inputs
    want = output_tensors(inputs.call(child))
    got = output_tensors(inputs.call(model))
    for w, g in zip(want, got, strict=True):
        scale = max(w.abs().max().item(), 1.0)
        if not torch.allclose(g, w, atol=1e-5 * scale, rtol=1e-4):
            raise InvariantError(
                f"the rebuilt {type(model).__name__} differs from the child graph by "
                f"{(g - w).abs().max().item():.3g}: please report this model"
            )
