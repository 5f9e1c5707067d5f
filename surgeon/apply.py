"""`surgeon.apply`: trace, analyse, score, permute, slice, rescale, emit."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from .analysis import analyse
from .emit import check_config, emit_graph, emit_hf, is_hf_model
from .errors import SurgeonError
from .frontends import trace
from .passes import Permute, Rescale, Score, Slice, SurgeryState
from .passes.score import movable_groups
from .passes.slice import resolve_target
from .plan import Plan, load_plan

__all__ = ["Child", "apply", "subclone"]


@dataclass
class Child:
    graph: fx.GraphModule  # the rewritten graph with its own Parameters
    model: nn.Module  # what `apply` returns: the Hugging Face model, or `graph`
    state: SurgeryState


def subclone(model: nn.Module, plan: Any, example_inputs: Any = None) -> Child:
    """Everything `apply` does, keeping the intermediate results (for tests and tools)."""
    plan = load_plan(plan)
    if any(t.device.type == "meta" for t in model.parameters()):
        raise SurgeonError(
            f"{type(model).__name__} has its weights on the meta device: surgery needs them "
            "in memory (build or load the parent with its weights)"
        )
    graph = trace(model, example_inputs)
    analysis = analyse(graph)
    state = SurgeryState(graph, analysis)
    keep = resolve_target(analysis, plan.target, {g.id for g in movable_groups(state)})
    config = None
    if is_hf_model(model):  # can the parent's class hold this child? Ask before cutting.
        probe = SurgeryState(graph, analysis, select={g: torch.arange(k) for g, k in keep.items()})
        config = check_config(model, probe, _expected_shapes(probe))
    for step in (Score(plan.importance), Permute(), Slice(keep), Rescale(plan.rescale)):
        step.run(state)
    child = emit_graph(state)
    hf = emit_hf(model, config, child, state) if config is not None else None
    return Child(child, hf if hf is not None else child, state)


def apply(
    model: nn.Module,
    plan: Plan | dict | str,
    *,
    example_inputs: Any = None,
    calibration: Iterable[Any] | None = None,
) -> nn.Module:
    """Return a smaller model initialised from `model` as `plan` says; `model` is not
    changed. A Hugging Face parent gives the same class with a smaller config; any other
    module gives a trainable `torch.fx.GraphModule`. `calibration` is accepted for the
    activation-based importance, which is not available yet: with `importance: weight`
    or `first` it is not read."""
    return subclone(model, plan, example_inputs).model


def _expected_shapes(state: SurgeryState) -> dict[str, tuple]:
    shapes = {}
    for name, axes in state.analysis.dims.tensors.items():
        shape = tuple(state.new_size(a) for a in axes)
        for alias in state.graph.params[name].names:
            shapes[alias] = shape
    return shapes
