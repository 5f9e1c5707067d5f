"""Hugging Face helpers for the frontends: synthetic inputs from a config, tracing settings.

Nothing here names a model family: it reads generic config fields (`vocab_size`,
`image_size`, `num_channels`, `use_cache`) and the model's `forward` signature.
"""

from __future__ import annotations

import contextlib
import inspect as _inspect
from collections.abc import Iterator

import torch
from torch import nn

from .graph import Inputs

__all__ = ["synthetic_inputs", "tracing_settings"]


def _forward_params(model: nn.Module) -> set[str]:
    return set(_inspect.signature(model.forward).parameters)


def synthetic_inputs(model: nn.Module, batch: int = 2, seq_len: int = 16) -> Inputs | None:
    """A small batch the model accepts, derived from its config; None if none can be derived.

    Token models get `input_ids` (and an all-ones `attention_mask` where `forward` takes
    one); image models get `pixel_values` of the configured size. Tensors are made on the
    model's device, so a model on the meta device gets meta inputs.
    """
    config = getattr(model, "config", None)
    if config is None:
        return None
    device = next(iter(model.parameters()), torch.empty(0)).device
    params = _forward_params(model)
    if "input_ids" in params and getattr(config, "vocab_size", None):
        max_pos = getattr(config, "max_position_embeddings", None) or seq_len
        seq = max(2, min(seq_len, max_pos))
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, config.vocab_size, (batch, seq), generator=g).to(device)
        kwargs = {"input_ids": ids}
        if "attention_mask" in params:
            kwargs["attention_mask"] = torch.ones_like(ids)
        return Inputs((), kwargs)
    if "pixel_values" in params and getattr(config, "image_size", None):
        size = config.image_size
        size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        channels = getattr(config, "num_channels", 3)
        g = torch.Generator().manual_seed(0)
        pixels = torch.randn(batch, channels, *size, generator=g).to(device)
        return Inputs((), {"pixel_values": pixels})
    return None


@contextlib.contextmanager
def tracing_settings(model: nn.Module) -> Iterator[None]:
    """Trace with the KV cache off (export rejects a cache in the output) and experts run
    as `batched_mm` (each token's experts gathered from the stacked weights: plain ops of
    static shape, where the grouped kernels are a custom op over data-dependent offsets);
    restore both after."""
    config = getattr(model, "config", None)
    changes = {}
    if getattr(config, "use_cache", False):
        changes["use_cache"] = False
    if hasattr(config, "_experts_implementation"):  # experts that don't dispatch ignore it
        changes["_experts_implementation"] = "batched_mm"
    saved = {key: getattr(config, key) for key in changes}
    for key, value in changes.items():
        setattr(config, key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(config, key, value)
