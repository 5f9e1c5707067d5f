"""The Python API: `apply` (and `subclone`, which keeps the intermediate results),
`stream_apply` for a Hugging Face folder too large to load (calibrated one layer at a
time), `dry_run`. Each is the
pipeline (`pipeline.py`) with its inputs gathered: calibration batches, a prepared parent."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import fx, nn

from .emit import emit_graph, emit_hf, is_hf_model
from .errors import PlanError, SurgeonError
from .io.calibration import check_batches, resolve_calibration
from .passes import SurgeryState
from .pipeline import Cut, Parent, check, decide, prepare, prepare_folder, resolve
from .plan import Plan

__all__ = ["Child", "apply", "dry_run", "stream_apply", "subclone"]


@dataclass
class Child:
    """What `subclone` returns: the child as `apply` gives it (`model`), the rewritten
    graph behind it, and the decisions that made it (`cut`, `state`), for tests and
    tools that look inside."""

    graph: fx.GraphModule  # the rewritten graph with its own Parameters
    model: nn.Module  # what `apply` returns: the Hugging Face model, or `graph`
    cut: Cut

    @property
    def state(self) -> SurgeryState:
        return self.cut.state


def subclone(
    model: nn.Module | Parent,
    plan: Any,
    example_inputs: Any = None,
    calibration: Iterable[Any] | str | None = None,
    tokenizer: Any = None,
    progress: bool = False,
) -> Child:
    """Everything `apply` does, keeping the intermediate results (for tests and tools)."""
    parent = model if isinstance(model, Parent) else None
    module = parent.model if parent is not None else model
    surgery = resolve(plan, calibration is not None or tokenizer is not None)
    _check_parent(module, surgery.plan)
    settings = surgery.plan.calibration
    batches = resolve_calibration(module, calibration, tokenizer, settings, surgery.needs_data)
    if batches is not None:
        example = parent.graph.inputs if parent is not None else example_inputs
        example_inputs = batches[0] if example is None else example
        check_batches(example_inputs, batches)
    if parent is None:
        parent = prepare(module, example_inputs)
    cut = decide(parent, surgery, batches, progress)
    graph = emit_graph(cut.state)
    hf = emit_hf(module, cut.config, graph, cut.state) if cut.config is not None else None
    return Child(graph, graph if surgery.plan.emit == "graph" or hf is None else hf, cut)


def apply(
    model: nn.Module | Parent,
    plan: Plan | dict | str,
    *,
    example_inputs: Any = None,
    calibration: Iterable[Any] | str | None = None,
    tokenizer: Any = None,
) -> nn.Module:
    """Return a smaller model initialised from `model` as `plan` says; `model` is not
    changed. A Hugging Face parent gives the same class with a smaller config; any other
    module gives a trainable `torch.fx.GraphModule`.

    `model` may also be a parent prepared once with `surgeon.prepare(model, inputs)` and
    reused for several plans (it is traced and analysed only once).

    `calibration` feeds `importance: activation` and `depth: influence`: an iterable of
    input batches (tensors, tuples or dicts, all of one shape; the first also serves as
    example inputs when none are given), or the path of a text file read with
    `tokenizer`. Without it, those two read Python's own documentation with `tokenizer`.
    """
    return subclone(model, plan, example_inputs, calibration, tokenizer).model


def stream_apply(
    folder: str | Path,
    plan: Any,
    out: str | Path,
    *,
    calibration: Iterable[Any] | str | None = None,
    tokenizer: Any = None,
    force: bool = False,
    max_shard_bytes: int = 512 * 2**20,
    progress: bool = False,
    check: bool = True,
) -> dict:
    """Write the child of the Hugging Face folder `folder` to `out` without loading the
    parent (atomically: a failure leaves no `out`); returns a summary. A plan that runs
    the parent on `calibration` data (as in `apply`) runs it one layer at a time, each
    layer's tensors read from the files. `out` may not be, hold or sit in `folder`.
    `check`: compare a sample of the written tensors with the same tensors cut in memory
    (`surgeon.emit.shards.check_written`; on by default, a few percent of the time)."""
    from .emit.shards import emit_shards
    from .frontends.load import load_model
    from .io.output import check_output, staged_folder

    surgery = resolve(plan, calibration is not None or tokenizer is not None)
    check_output(Path(out), force, folder)  # before any work
    batches = None
    if surgery.needs_data:
        model, _ = load_model(str(folder), weights=False)
        settings = surgery.plan.calibration
        batches = resolve_calibration(model, calibration, tokenizer, settings, True)
        check_batches(batches[0], batches)
    parent = prepare_folder(folder, batches[0] if batches else None)
    cut = decide(parent, surgery, batches, progress)
    with staged_folder(Path(out), force, folder) as tmp:
        written = emit_shards(cut, tmp, max_shard_bytes, progress, check)
    return {
        "parent_bytes": parent.shards.nbytes,
        "child_parameters": written,
        "layers_kept": cut.state.layers,
        "influence": cut.state.influence,
    }


def dry_run(
    model: nn.Module | Parent, plan: Any, example_inputs: Any = None, data: bool = False
) -> str:
    """Check a plan against a model without cutting anything (its weights may be on the
    meta device); describes the child. `data`: whether calibration data will be available
    (it decides the `auto` recipe)."""
    surgery = resolve(plan, data)
    parent = model if isinstance(model, Parent) else prepare(model, example_inputs)
    _check_emit(parent.model, surgery.plan)
    sizes = check(parent, surgery).sizes
    sizes = {"num_layers": sizes.pop("num_layers"), **sizes}
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
