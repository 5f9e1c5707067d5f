"""`surgeon.apply`: trace, analyse, score, permute, slice, rescale, emit."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from .analysis import analyse
from .calibration import check_batches, resolve_calibration
from .emit import check_config, emit_graph, emit_hf, is_hf_model
from .errors import PlanError, SurgeonError
from .frontends import trace
from .passes import Depth, Permute, Rescale, Score, Slice, SurgeryState
from .passes.depth import choose_layers
from .passes.score import movable_groups
from .passes.slice import resolve_target
from .plan import Plan, load_plan

__all__ = ["Child", "apply", "check_depth", "dry_run", "expected_shapes", "subclone"]


@dataclass
class Child:
    graph: fx.GraphModule  # the rewritten graph with its own Parameters
    model: nn.Module  # what `apply` returns: the Hugging Face model, or `graph`
    state: SurgeryState


def subclone(
    model: nn.Module,
    plan: Any,
    example_inputs: Any = None,
    calibration: Iterable[Any] | str | None = None,
    tokenizer: Any = None,
    progress: bool = False,
) -> Child:
    """Everything `apply` does, keeping the intermediate results (for tests and tools)."""
    plan = load_plan(plan).resolved(calibration is not None or tokenizer is not None)
    _check_parent(model, plan)
    measured_depth = plan.depth == "influence" and "num_layers" in plan.target
    needed = plan.importance == "activation" or measured_depth
    calibration = resolve_calibration(model, calibration, tokenizer, plan.calibration, needed)
    if calibration is not None:
        example_inputs = calibration[0] if example_inputs is None else example_inputs
        check_batches(example_inputs, calibration)
    graph, analysis = _trace_and_analyse(model, example_inputs)
    state = SurgeryState(graph, analysis)
    keep = resolve_target(analysis, plan.target, {g.id for g in movable_groups(state)})
    layers = check_depth(plan, len(analysis.layers))
    config = None
    if is_hf_model(model):  # can the parent's class hold this child? Ask before cutting.
        probe = SurgeryState(graph, analysis, select={g: torch.arange(k) for g, k in keep.items()})
        probe.layers = layers
        config = check_config(model, probe, expected_shapes(probe))
    steps = (
        Score(plan.importance, calibration, progress),
        Depth(plan.depth, plan.target.get("num_layers"), calibration),
        Permute(),
        Slice(keep, evenly=plan.importance == "uniform"),
        Rescale(plan.rescale),
    )
    for step in steps:
        step.run(state)
    if config is not None:  # the measured depth strategies choose their layers only now
        config = check_config(model, state, expected_shapes(state))
    child = emit_graph(state)
    hf = emit_hf(model, config, child, state) if config is not None else None
    return Child(child, child if plan.emit == "graph" or hf is None else hf, state)


def dry_run(model: nn.Module, plan: Any, example_inputs: Any = None, data: bool = False) -> str:
    """Check a plan against a model without cutting anything; describes the child. `data`:
    whether calibration data will be available (it decides the `auto` recipe)."""
    plan = load_plan(plan).resolved(data)
    _check_emit(model, plan)  # the weights may be on the meta device: nothing is cut
    graph, analysis = _trace_and_analyse(model, example_inputs)
    state = SurgeryState(graph, analysis)
    keep = resolve_target(analysis, plan.target, {g.id for g in movable_groups(state)})
    layers = check_depth(plan, len(analysis.layers))
    state.select = {g: torch.arange(k) for g, k in keep.items()}
    state.layers = layers
    if is_hf_model(model):
        check_config(model, state, expected_shapes(state))
    from .emit.hf import child_sizes

    sizes = {"num_layers": len(layers), **child_sizes(state)}
    return ", ".join(f"{k} {v}" for k, v in sizes.items())


def _check_parent(model: nn.Module, plan: Plan) -> None:
    if any(t.device.type == "meta" for t in model.parameters()):
        raise SurgeonError(
            f"{type(model).__name__} has its weights on the meta device: surgery needs them "
            "in memory (build or load the parent with its weights)"
        )
    _check_emit(model, plan)


def _check_emit(model: nn.Module, plan: Plan) -> None:
    if plan.emit == "hf" and not is_hf_model(model):
        raise PlanError(
            f"emit: hf needs a Hugging Face parent; {type(model).__name__} gives a graph "
            "(emit: graph or auto)"
        )


def _trace_and_analyse(model: nn.Module, example_inputs: Any):
    """A plain module is traced with torch.fx first: its graph keeps batch and sequence
    sizes symbolic, so the child runs (and exports) at any size. Hugging Face models, and
    modules torch.fx cannot trace or analyse, go through torch.export."""
    if not is_hf_model(model):
        try:
            graph = trace(model, example_inputs, frontend="fx")
            return graph, analyse(graph)
        except SurgeonError:
            pass
    graph = trace(model, example_inputs)
    return graph, analyse(graph)


def apply(
    model: nn.Module,
    plan: Plan | dict | str,
    *,
    example_inputs: Any = None,
    calibration: Iterable[Any] | str | None = None,
    tokenizer: Any = None,
) -> nn.Module:
    """Return a smaller model initialised from `model` as `plan` says; `model` is not
    changed. A Hugging Face parent gives the same class with a smaller config; any other
    module gives a trainable `torch.fx.GraphModule`.

    `calibration` feeds `importance: activation` and `depth: influence`: an iterable of
    input batches (tensors, tuples or dicts, all of one shape; the first also serves as
    example inputs when none are given), or the path of a text file read with
    `tokenizer`. Without it, those two read Python's own documentation with `tokenizer`.
    """
    return subclone(model, plan, example_inputs, calibration, tokenizer).model


def check_depth(plan: Plan, n: int) -> list[int]:
    """The child's layers as far as they can be known before measuring; `PlanError` early."""
    num_layers = plan.target.get("num_layers")
    measured = plan.depth == "influence" and (num_layers or n) < n
    return choose_layers(n, plan.depth, num_layers, [0.0] * n if measured else None)


def expected_shapes(state: SurgeryState) -> dict[str, tuple]:
    shapes = {}
    for name, axes in state.analysis.dims.tensors.items():
        shape = tuple(state.new_size(a) for a in axes)
        for alias in state.graph.params[name].names:
            shapes[alias] = shape
    return shapes
