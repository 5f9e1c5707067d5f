"""Frontends: turn an `nn.Module` into the `Graph` the passes work on.

`trace(model, example_inputs)` tries torch.export (non-strict, eval mode) by default and
falls back to torch.fx symbolic tracing; `frontend="export"` or `"fx"` picks one. The
model is left as it was: its train/eval flags and config are restored afterwards.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..errors import TraceError, first_line
from . import memo
from .export import trace_export
from .fx import trace_fx
from .graph import (
    Graph,
    Inputs,
    ParamTable,
    TensorEntry,
    as_inputs,
    op_name,
    output_tensors,
    tensor_of,
)
from .hf import synthetic_inputs, tracing_settings

__all__ = [
    "FRONTENDS",
    "Graph",
    "Inputs",
    "ParamTable",
    "TensorEntry",
    "as_inputs",
    "op_name",
    "output_tensors",
    "quiet_torch_logs",
    "synthetic_inputs",
    "tensor_of",
    "trace",
]

FRONTENDS = {"export": trace_export, "fx": trace_fx}

_HINTS = (
    ("DynamicCache", "turn the KV cache off (config.use_cache = False)"),
    ("data-dependent", "make control flow independent of tensor values, or try the other frontend"),
    ("control flow", "make control flow independent of tensor values, or try the other frontend"),
    ("got an unexpected keyword", "pass example_inputs that match the model's forward()"),
    ("missing", "pass example_inputs that match the model's forward()"),
)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode for tracing, then restore each one's own flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def quiet_torch_logs() -> Iterator[None]:
    """torch logs and prints a failed trace at length (graph dumps); the TraceError says it
    in one line."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def _device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    return torch.device("cpu")


def trace(model: nn.Module, example_inputs: Any = None, frontend: str = "auto") -> Graph:
    """Trace `model` on `example_inputs` into a `Graph`.

    `example_inputs`: a tensor, a tuple of positional args or a dict of keyword args; for a
    Hugging Face model it may be omitted (a small batch is derived from its config). A model
    on the meta device is traced without reading any weight (inputs are moved to meta).
    `frontend`: "auto" (torch.export, then torch.fx), "export" or "fx".
    Raises `TraceError` naming each frontend that failed, why, and what to try.
    """
    if frontend != "auto" and frontend not in FRONTENDS:
        raise TraceError(
            f"unknown frontend {frontend!r}; choose one of: auto, {', '.join(FRONTENDS)}"
        )
    if example_inputs is None:
        inputs = synthetic_inputs(model)
        if inputs is None:
            raise TraceError(
                f"{type(model).__name__} has no config to derive inputs from: "
                "pass example_inputs (a tensor, a tuple of args or a dict of kwargs)"
            )
    else:
        inputs = as_inputs(example_inputs)
    if _device(model).type == "meta":
        inputs = inputs.to("meta")
    kept = memo.key(model, inputs, frontend)
    graph = memo.recall(kept, model, inputs)
    if graph is not None:
        return graph
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph, failures = _first(model, inputs, frontend)
    memo.replay(caught)  # as they would have been given; again when the graph is recalled
    if graph is None:
        raise _trace_error(model, failures) from failures[-1][1]
    memo.remember(kept, graph, model, caught)
    return graph


def _first(model: nn.Module, inputs: Inputs, frontend: str) -> tuple[Graph | None, list]:
    """The graph of the first frontend that traces `model`, and the failures before it."""
    names = list(FRONTENDS) if frontend == "auto" else [frontend]
    failures = []
    with eval_mode(model), tracing_settings(model), quiet_torch_logs():
        for name in names:
            try:
                return FRONTENDS[name](model, inputs), failures
            except Exception as e:  # noqa: BLE001 - every frontend failure is reported below
                failures.append((name, e))
    return None, failures


def _trace_error(model: nn.Module, failures: list[tuple[str, Exception]]) -> TraceError:
    parts = [f"{name} failed: {first_line(e, 200)}" for name, e in failures]
    text = " ".join(str(e) for _, e in failures)
    hints = [hint for key, hint in _HINTS if key in text]
    hint = hints[0] if hints else "check that the model runs eagerly on the same example inputs"
    return TraceError(f"cannot trace {type(model).__name__}: {'; '.join(parts)}. Try: {hint}")
