"""Export a Hugging Face causal LM to ONNX as a decoder with a KV cache, and check it.

The layout is Optimum's (`optimum/exporters/onnx/config.py`), which onnxruntime tools
read: inputs `input_ids`, `attention_mask` (over past and new tokens), `position_ids`
(where `forward` takes them) and `past_key_values.N.key` / `.value`; outputs `logits` and
`present.N.key` / `.value`, each cache tensor `(batch, kv_heads, length, head_dim)`. The
batch, sequence and past-length axes are dynamic; a prefill passes a past of length 0.

Each layer's cache shape is read from the cache the model itself returns, not from a
global config count: a child whose layers keep different numbers of KV heads exports as
well as a uniform one.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InvariantError, SurgeonError, first_line
from .genai import write_genai
from .onnx import emit_onnx, torch_onnx_export

__all__ = [
    "CacheLayout",
    "check_decoder",
    "emit_any_onnx",
    "emit_decoder",
    "export_decoder",
    "is_causal_lm",
    "quantize_int8",
]

# What `check_decoder` compares: a prefill, then this many cached steps; this many greedy
# tokens for each of this many prompts.
DECODE_STEPS, NEW_TOKENS, PROMPTS = 3, 32, 4


def is_causal_lm(model: nn.Module | str) -> bool:
    """Whether `model` (or the class called `model`) is a Hugging Face causal language
    model: one with a KV cache, not a graph child or an encoder."""
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:
        return False
    name = model if isinstance(model, str) else type(model).__name__
    names = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
    return any(name == n or (not isinstance(n, str) and name in n) for n in names)


@dataclass(frozen=True)
class CacheLayout:
    """Per layer: (KV heads, key head size, value head size), as the model's cache holds
    them; and which optional inputs its `forward` takes."""

    layers: tuple[tuple[int, int, int], ...]
    position_ids: bool
    cache_arg: str  # the name `forward` takes the cache under (`cache`, `past_key_values`)

    @property
    def input_names(self) -> list[str]:
        names = ["input_ids", "attention_mask"] + (["position_ids"] if self.position_ids else [])
        return names + [f"past_key_values.{i}.{k}" for i in range(len(self.layers)) for k in KV]

    @property
    def output_names(self) -> list[str]:
        return ["logits"] + [f"present.{i}.{k}" for i in range(len(self.layers)) for k in KV]

    def empty_past(self, batch: int, length: int = 0) -> list[torch.Tensor]:
        """Zero cache tensors in input order (length 0: a prefill)."""
        out = []
        for heads, dk, dv in self.layers:
            out += [torch.zeros(batch, heads, length, dk), torch.zeros(batch, heads, length, dv)]
        return out


KV = ("key", "value")


def _returned_cache(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def _cache_arg(model: nn.Module) -> str:
    """The name `forward` takes the cache under (`cache` in recent transformers)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.no_grad()
def cache_layout(model: nn.Module) -> CacheLayout:
    """Run `model` on two tokens with its cache on and read each layer's cache shape."""
    params = inspect.signature(model.forward).parameters
    cache_arg = _cache_arg(model)
    if cache_arg not in params or "attention_mask" not in params:
        raise SurgeonError(
            f"{type(model).__name__}.forward takes no KV cache and attention mask: export it "
            "without a cache (surgeon.emit.onnx.emit_onnx)"
        )
    ids = torch.zeros(1, 2, dtype=torch.long)
    cache = _returned_cache(model(input_ids=ids, use_cache=True))
    layers = getattr(cache, "layers", None)
    if not layers or any(getattr(layer, "keys", None) is None for layer in layers):
        raise SurgeonError(
            f"{type(model).__name__} returns no per-layer key/value cache "
            f"({type(cache).__name__}): its ONNX decoder cannot take a past"
        )
    shapes = tuple(
        (layer.keys.shape[1], layer.keys.shape[-1], layer.values.shape[-1]) for layer in layers
    )
    return CacheLayout(shapes, "position_ids" in params, cache_arg)


class _FlatDecoder(nn.Module):
    """The model with flat tensors in and out, as ONNX names them. The cache is rebuilt
    from the flat past with a full-length layer for every layer (sliding-window layers
    too: their window is applied by the attention mask, as in the model's own forward)."""

    def __init__(self, model: nn.Module, layout: CacheLayout):
        super().__init__()
        self.model = model
        self.layout = layout

    def forward(self, input_ids, attention_mask, *rest):
        from transformers import DynamicCache

        position_ids, past = (rest[0], rest[1:]) if self.layout.position_ids else (None, rest)
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(len(self.layout.layers))]
        kwargs = {self.layout.cache_arg: DynamicCache(ddp_cache_data=pairs)}
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=True, **kwargs
        )
        present = []
        for layer in _returned_cache(out).layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def _example(layout: CacheLayout, vocab: int, batch: int = 2, seq: int = 3, past: int = 4):
    """Inputs of a cached step: neither axis at 0 or 1, which export would specialise."""
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    args = [ids, torch.ones(batch, past + seq, dtype=torch.long)]
    if layout.position_ids:
        args.append(torch.arange(past, past + seq).expand(batch, seq).contiguous())
    return tuple(args + layout.empty_past(batch, past))


def _dynamic_shapes(layout: CacheLayout):
    Dim = torch.export.Dim
    batch = Dim("batch_size", min=1, max=1024)
    seq = Dim("sequence_length", min=1, max=8192)
    past = Dim("past_sequence_length", min=1, max=8192)
    total = Dim("total_sequence_length", min=1, max=16384)
    shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: total}}
    rest = [{0: batch, 1: seq}] if layout.position_ids else []
    rest += [{0: batch, 2: past} for _ in range(2 * len(layout.layers))]
    return {**shapes, "rest": tuple(rest)}


def export_decoder(model: nn.Module, path: str | Path) -> CacheLayout:
    """Write `model` (a float32 causal LM) to `path` as a decoder with a KV cache (weights
    in `path`.data beside it); returns the cache layout it was exported with."""
    model.eval()
    layout = cache_layout(model)
    example = _example(layout, model.config.vocab_size)
    torch_onnx_export(
        "ONNX decoder export",
        _FlatDecoder(model, layout).eval(),
        example,
        path,
        dynamic_shapes=_dynamic_shapes(layout),
        input_names=layout.input_names,
        output_names=layout.output_names,
    )
    return layout


def quantize_int8(path: str | Path, out: str | Path) -> Path:
    """onnxruntime's dynamic int8 quantization of the weights of `path`, written to `out`."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process is for static quantization
    try:
        quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8)
    except Exception as e:  # noqa: BLE001
        raise SurgeonError(f"int8 quantization of {Path(path).name} failed: {first_line(e)}") from e
    finally:
        root.setLevel(level)
    return Path(out)


@torch.no_grad()
def check_decoder(
    model: nn.Module, path: str | Path, prompts: list[list[int]] | None = None, tol: float = 1e-4
) -> dict:
    """Compare the ONNX decoder at `path` with `model` (PyTorch): logits of a prefill and
    of `DECODE_STEPS` cached steps within `tol` of the output scale, and greedy generation
    of `NEW_TOKENS` tokens for each prompt token-identical to `model.generate` (the prompts
    in one left-padded batch in both).
    Returns `{"max_relative_difference", "greedy_tokens_compared"}`; `InvariantError`
    naming the first failure."""
    from ..generate import OnnxDecoder

    decoder = OnnxDecoder(path)
    worst = _logits_difference(model, decoder)
    if worst > tol:
        raise InvariantError(
            f"the ONNX decoder's logits differ from PyTorch by {worst:.2e} of the output "
            f"scale (> {tol}) in a prefill or cached step"
        )
    prompts = prompts or _random_prompts(model)
    compared = 0
    wanted = greedy_reference(model, prompts, NEW_TOKENS)  # one batch: 32 steps, not 128
    for i, (got, want) in enumerate(
        zip(decoder.generate(prompts, NEW_TOKENS), wanted, strict=True)
    ):
        if got != want:
            at = next((j for j, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
            where = f"new token {at}" if at is not None else f"length ({len(got)} vs {len(want)})"
            raise InvariantError(
                f"greedy generation in onnxruntime differs from transformers' generate at "
                f"{where} of prompt {i}"
            )
        compared += len(want)
    return {"max_relative_difference": worst, "greedy_tokens_compared": compared}


def _random_prompts(model: nn.Module) -> list[list[int]]:
    """`PROMPTS` prompts of random tokens (the check's, where no tokenizer is at hand)."""
    g = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in [5, 9, 3, 12][:PROMPTS]]


def greedy_reference(
    model: nn.Module, prompts: list[list[int]], new_tokens: int
) -> list[list[int]]:
    """`new_tokens` greedy tokens of transformers' `generate` after each prompt, in one
    left-padded batch, never stopping early at an end-of-sequence token."""
    import copy

    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    saved = model.generation_config
    # generate fills the fields a config passed to it leaves at None (the end-of-sequence
    # token among them) from the model's own: so that one is changed, and restored
    model.generation_config = copy.deepcopy(saved)
    model.generation_config.eos_token_id = None
    try:
        out = model.generate(
            ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0
        )
    finally:
        model.generation_config = saved
    return out[:, width:].tolist()


def _logits_difference(model: nn.Module, decoder) -> float:
    """Largest |ONNX - PyTorch| / |PyTorch| over a prefill (batch 2, one row left-padded)
    and `DECODE_STEPS` cached steps, both fed the same tokens; padded positions, whose
    logits mean nothing, are not compared."""
    from transformers import DynamicCache

    g = torch.Generator().manual_seed(2)
    new = torch.randint(0, model.config.vocab_size, (2, 7), generator=g)
    mask = torch.ones_like(new)
    mask[1, :2] = 0  # a left-padded row: masks and positions must agree too
    cache, past, worst = DynamicCache(), None, 0.0
    cache_arg = _cache_arg(model)
    for _ in range(1 + DECODE_STEPS):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -new.shape[1] :]
        kwargs = {"position_ids": positions} if decoder.takes_positions else {}
        want = model(
            input_ids=new, attention_mask=mask, use_cache=True, **{cache_arg: cache}, **kwargs
        ).logits
        got, past = decoder.step(new.numpy(), mask.numpy(), past)
        valid = mask[:, -new.shape[1] :].bool()
        want_valid = want[valid]
        scale = max(want_valid.abs().max().item(), 1e-6)
        worst = max(worst, (torch.from_numpy(got)[valid] - want_valid).abs().max().item() / scale)
        new = want[:, -1].argmax(-1, keepdim=True)
        mask = torch.cat([mask, torch.ones_like(new)], 1)
    return worst


def emit_decoder(
    model: nn.Module, folder: str | Path, prompts: list[list[int]] | None = None, int8: bool = False
) -> dict:
    """Write `folder`/model.onnx, the checked decoder with a KV cache (and, with `int8`,
    `folder`/model.int8.onnx); returns the check's numbers."""
    from .onnx import onnx_ready

    model = onnx_ready(model)
    path = Path(folder) / "model.onnx"
    layout = export_decoder(model, path)
    result = {"kv_cache": True, "cache_layers": [list(s) for s in layout.layers]}
    result.update(check_decoder(model, path, prompts))
    prompts = prompts or _random_prompts(model)
    result.update(write_genai(model, layout, Path(folder), prompts[:PROMPTS], NEW_TOKENS))
    if int8:
        quantized = quantize_int8(path, Path(folder) / "model.int8.onnx")
        result["int8_bytes"] = quantized.stat().st_size
    return result


# What the export check generates from when the folder has a tokenizer.
CHECK_PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, there was a",
    "Python's standard library includes modules for",
)


def emit_any_onnx(
    model: nn.Module, example: Any, folder: Path, tokenizer=None, int8: bool = False
) -> dict:
    """Write `folder`/model.onnx for `model`, checked; returns what the check measured
    (`max_relative_difference`, and for a decoder `greedy_tokens_compared`)."""
    if is_causal_lm(model):
        prompts = [tokenizer(p)["input_ids"] for p in CHECK_PROMPTS] if tokenizer else None
        return emit_decoder(model, folder, prompts, int8=int8)
    if example is None:
        raise SurgeonError(f"no example inputs for {type(model).__name__}: cannot export it")
    result = {"kv_cache": False, "max_relative_difference": emit_onnx(model, example, folder)}
    if int8:
        quantized = quantize_int8(folder / "model.onnx", folder / "model.int8.onnx")
        result["int8_bytes"] = quantized.stat().st_size
    return result
