"""Calibration data in the forms users have: batches, a text file, or Python's own docs."""

from __future__ import annotations

import inspect as _inspect
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import PlanError
from ..frontends import as_inputs
from .text import python_docs_text, token_batches

__all__ = ["resolve_calibration"]


def resolve_calibration(
    model: nn.Module,
    calibration: Any,
    tokenizer: Any,
    settings: Mapping[str, int],
    needed: bool,
) -> list[Any] | None:
    """A list of input batches, or None when nothing needs them.

    `calibration`: an iterable of batches (tensors, tuples or dicts of model inputs), or the
    path of a text file tokenized with `tokenizer`; None reads Python's documentation
    (`pydoc_data`) with `tokenizer` when a measurement needs data. Text gives
    `settings["samples"]` sequences of `settings["seq_len"]` tokens in batches of
    `settings["batch_size"]`.
    """
    if calibration is None and not needed:
        return None
    if calibration is None or isinstance(calibration, (str, Path)):
        if tokenizer is None:
            what = "a text file" if calibration is not None else "the default text"
            raise PlanError(
                f"calibration from {what} needs the model's tokenizer: pass tokenizer=..., or "
                "pass calibration as a list of input batches"
            )
        text = python_docs_text() if calibration is None else _read(Path(calibration))
        return _text_batches(model, tokenizer, text, settings)
    if isinstance(calibration, (torch.Tensor, Mapping)):
        calibration = [calibration]
    batches = list(calibration)
    if not batches:
        raise PlanError("calibration is empty: give at least one batch")
    return batches


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanError(f"calibration file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PlanError(f"cannot read calibration file {path}: {e}") from e


def _text_batches(model, tokenizer, text: str, settings: Mapping[str, int]) -> list[dict]:
    batch, seq_len = settings["batch_size"], settings["seq_len"]
    count = max(1, settings["samples"] // batch)
    try:
        windows = token_batches(tokenizer, text, batch, seq_len, count)
    except ValueError as e:
        raise PlanError(f"calibration text is too short: {e}") from e
    params = _inspect.signature(model.forward).parameters
    if "input_ids" not in params:  # a plain module: token ids as its first argument
        return [(w,) for w in windows]
    with_mask = "attention_mask" in params
    return [
        {"input_ids": w, **({"attention_mask": torch.ones_like(w)} if with_mask else {})}
        for w in windows
    ]


def same_form(example: Any, batch: Any) -> bool:
    """Whether a batch has the structure and shapes of the example the graph was traced
    with (the traced graph has fixed shapes)."""
    a, b = as_inputs(example), as_inputs(batch)
    if len(a.args) != len(b.args) or set(a.kwargs) != set(b.kwargs):
        return False
    pairs = list(zip(a.args, b.args, strict=True)) + [(a.kwargs[k], b.kwargs[k]) for k in a.kwargs]
    return all(
        not isinstance(x, torch.Tensor) or (isinstance(y, torch.Tensor) and x.shape == y.shape)
        for x, y in pairs
    )


def check_batches(example: Any, batches: Iterable[Any]) -> None:
    for i, batch in enumerate(batches):
        if not same_form(example, batch):
            raise PlanError(
                f"calibration batch {i} differs in form or shape from the example inputs the "
                "model is traced with: give batches of one shape (or no example_inputs: the "
                "first batch is used)"
            )
