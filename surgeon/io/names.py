"""The names tensors have in a Hugging Face checkpoint, and in the model.

transformers 5 renames tensors when it loads a checkpoint and renames them back when it
saves one (its conversion mapping: GPT-NeoX's stored `embed_out.weight` is the model's
`lm_head.weight`; ViT's `vit.encoder.layer.0.attention.attention.query.weight` is
`vit.layers.0.attention.q_proj.weight`). Streaming reads and writes the files itself, so
it renames the same way, with transformers' own functions. A checkpoint whose tensors
are converted on load (fused, split or transposed, not only renamed) is refused with
`NotStreamable`: `surgeon apply` then loads the parent instead.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from ..errors import NotStreamable

__all__ = ["NotStreamable", "load_names", "save_names"]


def _transforms(model: nn.Module, **kwargs) -> list | None:
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
    except ImportError:  # a transformers without conversion mappings stores model names
        return None
    return get_model_conversion_mapping(model, **kwargs)


def load_names(model: nn.Module, stored: Iterable[str]) -> dict[str, str]:
    """For each stored tensor, by the model's name for it: its stored name."""
    transforms = _transforms(model)
    if not transforms:
        return {name: name for name in stored}
    from transformers.core_model_loading import (
        WeightConverter,
        WeightRenaming,
        dot_natural_key,
        rename_source_key,
    )

    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    prefix, meta = model.base_model_prefix, model.state_dict()
    out: dict[str, str] = {}
    for key in sorted(stored, key=dot_natural_key):  # the loader's order; its first wins
        name, converted = rename_source_key(key, renamings, converters, prefix, meta)
        if name not in meta and key in meta:  # as from_pretrained does
            name, converted = rename_source_key(key, [], [], prefix, meta)
        if converted is not None:
            raise NotStreamable(
                f"the checkpoint stores {key} in a layout {type(model).__name__} converts "
                "on load, not one it only renames"
            )
        out.setdefault(name, key)
    return out


def save_names(model: nn.Module, names: Iterable[str]) -> dict[str, str]:
    """For each of the model's tensor names: the name `save_pretrained` would store."""
    transforms = _transforms(model, add_legacy=False)
    if not transforms:
        return {name: name for name in names}
    from transformers.core_model_loading import (
        PrefixChange,
        WeightConverter,
        WeightRenaming,
        apply_converters,
        apply_renamings,
    )

    # as transformers' revert_weight_conversion for a model not made by from_pretrained
    reverse = [t.reverse_transform() for t in transforms[::-1] if not isinstance(t, PrefixChange)]
    renamings = [t for t in reverse if isinstance(t, WeightRenaming)]
    converters = [t for t in reverse if isinstance(t, WeightConverter)]
    out = {}
    for name in names:
        if apply_converters(name, converters)[1] is not None:
            raise NotStreamable(f"{type(model).__name__} stores {name} converted, not renamed")
        out[name] = apply_renamings(name, renamings)
    return out
