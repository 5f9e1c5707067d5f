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


_SPECIAL = ("pad", "bos", "eos", "decoder_start", "unk", "sep", "cls", "mask")
_PARTS = ("encoder", "decoder")  # the sub-configs of a model built of two


# the image size of a model whose config states none (ImageNet's; a backbone of any stride
# up to 32 reads it)
IMAGE_SIZE = 224


def synthetic_inputs(model: nn.Module, batch: int = 2, seq_len: int = 16) -> Inputs | None:
    """A small batch the model accepts, derived from its config; None if none can be derived.

    Token models get `input_ids` (and an all-ones `attention_mask` where `forward` takes
    one; an encoder-decoder's decoder the same tokens shifted right); image models get
    `pixel_values` of the configured size (`IMAGE_SIZE` where the config states none).
    Tensors are made on the model's device, so a model on the meta device gets meta
    inputs.
    """
    config = getattr(model, "config", None)
    if config is None:
        return None
    device = next(iter(model.parameters()), torch.empty(0)).device
    params = _forward_params(model)
    # a multimodal model's vocabulary is its text model's (text alone is a valid input)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    # an encoder-decoder built of two configs (EncoderDecoderModel): tokens both read
    parts = [c for c in (config, text, *(getattr(config, k, None) for k in _PARTS)) if c]
    vocab = min((v for c in parts if type(v := getattr(c, "vocab_size", None)) is int), default=0)
    if "input_ids" in params and vocab:
        max_pos = [getattr(c, "max_position_embeddings", None) for c in parts]
        seq = max(2, min([seq_len, *(p for p in max_pos if type(p) is int)]))
        g = torch.Generator().manual_seed(0)
        # ordinary tokens: a pad or end-of-sequence token among them changes the forward
        # (masks derived from pads, checks on where sequences end)
        special = {getattr(x, f"{k}_token_id", None) for x in (config, text) for k in _SPECIAL}
        ordinary = torch.tensor([i for i in range(vocab) if i not in special] or [0])
        ids = ordinary[torch.randint(0, len(ordinary), (batch, seq), generator=g)].to(device)
        kwargs = {"input_ids": ids}
        if "attention_mask" in params:
            kwargs["attention_mask"] = torch.ones_like(ids)
        if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in params:
            # the decoder reads the same tokens one step behind, after its start token
            # (T5's forward needs them; BART's would shift input_ids itself)
            start = getattr(config, "decoder_start_token_id", None)
            start = start if isinstance(start, int) else (getattr(config, "pad_token_id", 0) or 0)
            kwargs["decoder_input_ids"] = torch.cat(
                [torch.full_like(ids[:, :1], start), ids[:, :-1]], 1
            )
            if "decoder_attention_mask" in params:  # else FSMT derives it from pad tokens
                kwargs["decoder_attention_mask"] = torch.ones_like(ids)
        return Inputs((), kwargs)
    # an image classifier of a two-tower model (CLIP's) sizes its images in its vision config
    vision = next((c for c in (config, getattr(config, "vision_config", None))
                   if getattr(c, "image_size", None)), None)  # fmt: skip
    if "pixel_values" in params:
        # a backbone whose config states no image size reads any (SegFormer): ImageNet's
        size = getattr(vision, "image_size", None) or IMAGE_SIZE
        vision = vision or config
        size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        channels = getattr(vision, "num_channels", 3)
        g = torch.Generator().manual_seed(0)
        pixels = torch.randn(batch, channels, *size, generator=g).to(device)
        return Inputs((), {"pixel_values": pixels})
    return None


@contextlib.contextmanager
def tracing_settings(model: nn.Module) -> Iterator[None]:
    """Trace with the KV cache off, in the config, every sub-config and every config a
    submodule holds (export rejects
    a cache in the output), experts run as `batched_mm` (each token's experts gathered
    from the stacked weights: plain ops of static shape, where the grouped kernels are a
    custom op over data-dependent offsets), and a module's cast of itself to the dtype
    it has a no-op; restore all after."""
    config = getattr(model, "config", None)
    changes = []
    # the model's config, its sub-configs, and the copies its submodules hold (T5's
    # decoder stack reads a deep copy of the config)
    held = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None}
    parts = {id(p): p for p in (*_all_configs(config), *held.values())}.values()
    for part in parts:
        if getattr(part, "use_cache", False):
            changes.append((part, "use_cache", False))
    # every config's own field, not the property over it that sets every sub-config too:
    # restored through that, a vision tower with no experts would be left the text
    # model's choice, which it refuses when the config builds a model again
    for part in parts:
        if hasattr(part, "_experts_implementation"):  # experts that don't dispatch ignore it
            own = "_experts_implementation_internal"
            key = own if hasattr(part, own) else "_experts_implementation"
            changes.append((part, key, "batched_mm"))
    saved = [(part, key, getattr(part, key)) for part, key, _ in changes]
    for part, key, value in changes:
        setattr(part, key, value)
    try:
        with _casts_of_itself_kept(), _masks_by_broadcast():
            yield
    finally:
        for part, key, value in saved:
            setattr(part, key, value)


def _sub_configs(config) -> list:
    names = getattr(config, "sub_configs", None) or {}
    return [c for name in names if (c := getattr(config, name, None)) is not None]


def _all_configs(config) -> list:
    """`config` and its sub-configs, theirs too."""
    if config is None:
        return []
    return [config, *(c for sub in _sub_configs(config) for c in _all_configs(sub))]


@contextlib.contextmanager
def _casts_of_itself_kept() -> Iterator[None]:
    """`self.classifier = self.classifier.to(self.dtype)` in a forward (a router kept in
    its dtype at every call): export cannot swap a traced parameter, and nothing changes
    when every tensor already has that dtype and device, so the module is returned."""
    original = nn.Module.to

    def to(self, *args, **kwargs):
        device, dtype, *_ = torch._C._nn._parse_to(*args, **kwargs)
        tensors = [*self.parameters(), *self.buffers()]
        if all(_already(t, device, dtype) for t in tensors):
            return self
        return original(self, *args, **kwargs)

    nn.Module.to = to
    try:
        yield
    finally:
        nn.Module.to = original


@contextlib.contextmanager
def _masks_by_broadcast() -> Iterator[None]:
    """transformers expands a mask function with an extra condition (a sliding window
    beside padding) over (batch, head, query, key) with `torch.vmap`, indexing under
    `TransformGetItemToIndex`; export keeps both as higher-order ops. Its mask functions
    index by position, so broadcasting the four index vectors computes the same mask in
    plain ops (Optimum exports them so)."""
    try:
        from transformers import masking_utils
    except ImportError:
        yield
        return
    names = ("_vmap_expansion_sdpa", "TransformGetItemToIndex", "_non_vmap_expansion_sdpa")
    if not all(hasattr(masking_utils, n) for n in names):
        yield
        return
    saved = {n: getattr(masking_utils, n) for n in names[:2]}
    broadcast = masking_utils._non_vmap_expansion_sdpa

    def expand(mask_function):
        def mask(*indices):
            return mask_function(*broadcast(*indices)).expand(*(len(i) for i in indices))

        return mask

    masking_utils._vmap_expansion_sdpa = expand
    masking_utils.TransformGetItemToIndex = contextlib.nullcontext
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(masking_utils, name, value)


def _already(t: torch.Tensor, device, dtype) -> bool:
    same_dtype = dtype is None or t.dtype == dtype or not t.is_floating_point()
    return same_dtype and (device is None or t.device == torch.device(device))
