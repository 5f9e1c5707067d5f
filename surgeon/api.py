"""The Python API: `apply` (and `subclone`, which keeps the intermediate results),
`stream_apply` for a Hugging Face folder too large to load (calibrated one layer at a
time), `save_child` (the path `surgeon apply` takes: streamed or in memory, a folder
written atomically, ONNX, the summary), `dry_run`. Each is the pipeline (`pipeline.py`)
with its inputs gathered: calibration batches, a prepared parent. The CLI and the
benchmarks reach the pipeline only through these."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from .emit import emit_graph, emit_hf, is_hf_model
from .emit.decoder import emit_any_onnx, is_causal_lm
from .errors import InvariantError, NotStreamable, PlanError, SurgeonError, TraceError
from .execute import rank, world_size
from .frontends.load import load_tokenizer
from .io.calibration import check_batches, resolve_calibration
from .io.output import check_output, record_json, staged_folder
from .passes import SurgeryState
from .pipeline import Cut, Parent, check, decide, prepare, prepare_folder, resolve
from .plan import Plan
from .report import Report, inspect

__all__ = [
    "Child",
    "apply",
    "dry_run",
    "inspect_source",
    "save_child",
    "stream_apply",
    "stream_subclone",
    "subclone",
]


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

    @property
    def kept(self) -> dict[str, Any]:
        """Which parent layers, residual positions, FFN neurons and heads the child keeps
        (`Cut.kept`; what `surgeon apply` writes to surgeon.json)."""
        return self.cut.kept


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


def stream_subclone(
    folder: str | Path,
    plan: Any,
    calibration: Iterable[Any] | str | None = None,
    tokenizer: Any = None,
    progress: bool = False,
    cache: bool = True,
) -> Cut:
    """The decisions for the child of the Hugging Face folder `folder`, its parent never
    loaded (a plan that measures runs it one layer at a time, each layer read from the
    files): what `stream_apply` writes, for tools that compare them. `cache`: reuse and
    keep the folder's analysis and what earlier plans measured on it
    (`surgeon.io.prepared`, `surgeon.io.measures`)."""
    from .frontends.load import load_model

    surgery = resolve(plan, calibration is not None or tokenizer is not None)
    batches = None
    if surgery.needs_data:
        model, _ = load_model(str(folder), weights=False)
        settings = surgery.plan.calibration
        batches = resolve_calibration(model, calibration, tokenizer, settings, True)
        check_batches(batches[0], batches)
    with step(progress, f"tracing and analysing {folder} on the meta device") as notes:
        parent = prepare_folder(folder, batches[0] if batches else None, cache=cache)
        notes += ["kept from an earlier run"] if parent.kept else []
    return decide(parent, surgery, batches, progress)


@contextlib.contextmanager
def step(progress: bool, what: str):
    """A line on stderr when a step with no bar of its own starts, and its time when it
    ends (with `progress`, on rank 0), with the notes added to the list it yields."""
    notes: list[str] = []  # said after its time
    if not progress or rank() != 0:
        yield notes
        return
    started = time.perf_counter()
    print(f"{what} ...", file=sys.stderr, flush=True)  # not `surgeon:`, a notice's prefix
    yield notes
    said = "".join(f" ({note})" for note in notes)
    print(f"{what}: {time.perf_counter() - started:.1f} s{said}", file=sys.stderr, flush=True)


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
    onnx: str | None = None,
    cache: bool = True,
) -> dict | None:
    """Write the child of the Hugging Face folder `folder` to `out` without loading the
    parent (atomically: a failure leaves no `out`); returns the summary it also writes to
    `out`/surgeon.json. A plan that runs the parent on `calibration` data (as in `apply`)
    runs it one layer at a time, each layer's tensors read from the files; under torchrun
    every rank measures its share of the batches and only rank 0 writes (the others
    return None). `out` may not be, hold or sit in `folder`. `check`: compare a sample of
    the written tensors with the same tensors cut in memory
    (`surgeon.emit.shards.check_written`; on by default, a few percent of the time).
    `onnx`: "fp32" or "int8" also writes the child's `model.onnx` (and `model.int8.onnx`),
    checked as `surgeon export` checks it. `cache`: as for `stream_subclone`.
    `NotStreamable` for a checkpoint that cannot be read as stored (`save_child` then
    loads it)."""
    from .emit.shards import emit_shards

    started = time.perf_counter()
    surgery = resolve(plan, calibration is not None or tokenizer is not None)
    check_output(Path(out), force, folder)  # before any work
    shown = progress and rank() == 0
    cut = stream_subclone(folder, surgery, calibration, tokenizer, shown, cache)
    if rank() != 0:
        return None
    parent = cut.parent
    with staged_folder(Path(out), force, folder) as tmp:
        written = emit_shards(cut, tmp, max_shard_bytes, progress, check)
        architecture = _architecture(tmp)
        result = None
        if onnx:
            import transformers

            from .frontends import synthetic_inputs

            with step(progress, "exporting the child to ONNX and checking it"):
                child = getattr(transformers, architecture).from_pretrained(tmp).eval()
                example = synthetic_inputs(child)  # the parent's are on meta
                tokenizer = load_tokenizer(str(tmp))
                result = emit_any_onnx(child, example, tmp, tokenizer, onnx == "int8")
        summary = {
            **_summary(cut, folder, plan, architecture, result, started),
            "streamed": True,
            "parent_bytes": parent.shards.nbytes,
            "parent_parameters": parent.graph.params.num_parameters(),
            "child_parameters": written,
        }
        (tmp / "surgeon.json").write_text(record_json(summary))
    return summary


def save_child(
    source: str | nn.Module,
    plan: Any,
    out: str | Path,
    *,
    calibration: Iterable[Any] | str | None = None,
    force: bool = False,
    onnx: str | None = None,
    progress: bool = False,
    notice: Any = None,
    cache: bool = True,
    nas: bool = False,
) -> dict | None:
    """The one path from a parent to a child folder, as `surgeon apply` takes it: `source`
    a Hugging Face folder (streamed, `stream_apply`; loaded whole when it cannot be read as
    stored, with a line to `notice`), a 'module:factory' string or a module (in memory:
    `subclone`, then `save_pretrained`, or `model.pt` for a graph child). The tokenizer
    and example inputs come from the source; `onnx`, the summary and the ranks as in
    `stream_apply`; `cache` as there (a folder's measures)."""
    from .frontends.load import has_tokenizer, load_model

    name = source if isinstance(source, str) else type(source).__name__
    data = calibration is not None or (isinstance(source, str) and has_tokenizer(source))
    surgery = resolve(plan, data)  # everything that can be checked cheaply, first
    check_output(Path(out), force, source if isinstance(source, str) else None)
    streams = surgery.plan.emit != "graph" and not nas
    if isinstance(source, str) and is_folder(source) and streams:
        tokenizer = load_tokenizer(source) if surgery.needs_data else None
        try:
            return stream_apply(
                source, plan, out, calibration=calibration, tokenizer=tokenizer,
                force=force, progress=progress, onnx=onnx, cache=cache,
            )  # fmt: skip
        except NotStreamable as e:
            size = sum(f.stat().st_size for f in Path(source).glob("*.safetensors"))
            if notice is not None:
                notice(f"{e}: loading all of it ({size / 2**30:.2f} GiB)")
    started = time.perf_counter()
    tokenizer = load_tokenizer(source) if isinstance(source, str) else None
    model, inputs = load_model(source) if isinstance(source, str) else (source, None)
    parent_parameters = sum(p.numel() for p in model.parameters())
    child = subclone(model, surgery, inputs, calibration, tokenizer, progress and rank() == 0)
    if rank() != 0:
        return None
    with staged_folder(Path(out), force, source if isinstance(source, str) else None) as tmp:
        checked = _write_nas(child, tokenizer, tmp, progress) if nas else None
        if not nas:
            _write_model(child, tokenizer, tmp)
        result = None
        if onnx:
            with step(progress, "exporting the child to ONNX and checking it"):
                example = child.state.graph.inputs
                result = emit_any_onnx(child.model, example, tmp, tokenizer, onnx == "int8")
        summary = {
            **_summary(child.cut, name, plan, type(child.model).__name__, result, started),
            "parent_parameters": parent_parameters,
            "child_parameters": sum(p.numel() for p in child.model.parameters()),
            **({"nas": checked} if nas else {}),
        }
        (tmp / "surgeon.json").write_text(record_json(summary))
    return summary


def _write_nas(child: Child, tokenizer: Any, folder: Path, progress: bool) -> dict:
    """The child as a Nemotron-NAS folder, run in llama.cpp and compared with the child
    (`surgeon.emit.nas`): the check's figures; `SurgeonError` beyond 2e-3 of the largest
    logit (llama.cpp keeps its KV cache in f16)."""
    from .emit.nas import check_nas, write_nas

    if tokenizer is None:
        raise PlanError("--nas needs the parent's tokenizer: llama.cpp's GGUF carries one")
    write_nas(child, folder, tokenizer)
    with step(progress, "converting the Nemotron-NAS folder for llama.cpp and checking it"):
        result = check_nas(child, folder, dict(child.state.graph.inputs.kwargs))
    if not result["max_relative_difference"] < NAS_TOLERANCE:
        raise InvariantError(
            f"llama.cpp's logits of the Nemotron-NAS child differ from the child's by "
            f"{result['max_relative_difference']:.2e} of the largest logit (more than "
            f"{NAS_TOLERANCE:g}): report it"
        )
    return result


NAS_TOLERANCE = 2e-3


def inspect_source(
    source: str,
    *,
    calibration: str | None = None,
    frontend: str = "auto",
    device: str = "cpu",
    notice: Any = None,
    cache: bool = True,
) -> Report:
    """`surgeon inspect`'s path: the structure of `source` (a folder or 'module:factory',
    built on the meta device), or with `calibration` (a text file) its measured residual
    ratios and importance: a folder one layer at a time from its files (loaded whole, with
    a line to `notice`, where it cannot be read as stored), anything else in memory.
    `cache`: as for `prepare_folder`."""
    from .frontends.load import load_model
    from .plan import CALIBRATION

    if calibration is None:
        model, inputs = load_model(source, weights=False)
        try:
            return inspect(model, inputs, frontend=frontend)
        except TraceError as e:  # a forward that branches on its input values
            if "data-dependent" not in str(e):
                raise
            if notice is not None:
                notice(f"{type(model).__name__} branches on its input values: loading it")
        model, inputs = load_model(source)
        return inspect(model, inputs, frontend=frontend)
    tokenizer = load_tokenizer(source)
    if is_folder(source) and frontend == "auto":
        model, _ = load_model(source, weights=False)
        batches = resolve_calibration(model, calibration, tokenizer, CALIBRATION, True)
        try:
            parent = prepare_folder(source, batches[0], cache=cache)
            return inspect(parent, calibration=batches, device=device)
        except NotStreamable as e:
            if notice is not None:
                notice(f"{e}: loading all of it")
    model, _ = load_model(source)
    batches = resolve_calibration(model, calibration, tokenizer, CALIBRATION, True)
    return inspect(model, calibration=batches, frontend=frontend, device=device)


def is_folder(model: str) -> bool:
    """A Hugging Face folder with safetensors files: streamed, never loaded whole."""
    folder = Path(model)
    return folder.is_dir() and any(folder.glob("*.safetensors"))


def _summary(cut: Cut, parent: Any, plan: Any, model: str, onnx: dict | None, started) -> dict:
    """What surgeon.json records of a child, and `surgeon apply` prints. `plan`: its file,
    or what it says (`Plan.describe`)."""
    named = isinstance(plan, Path) or (isinstance(plan, str) and Path(plan).is_file())
    return {
        "parent": str(parent),
        "plan": str(plan) if named else cut.surgery.plan.describe(),
        "child": cut.sizes,
        "parent_sizes": cut.parent_sizes,
        "budget": dict(cut.surgery.budget) or None,
        "layers_kept": cut.state.kept_layers(),
        "kept": cut.kept,
        "influence": cut.state.influence,
        "calibration_batches": len(cut.state.calibration or []),
        "ranks": world_size(),
        "model": model,
        "causal_lm": is_causal_lm(model),
        "onnx_max_relative_difference": onnx and onnx["max_relative_difference"],
        "onnx": onnx,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _architecture(folder: Path) -> str:
    config = json.loads((folder / "config.json").read_text())
    return (config.get("architectures") or ["model"])[0]


def _write_model(child: Child, tokenizer: Any, folder: Path) -> None:
    if child.model is child.graph:
        try:
            torch.save(child.graph, folder / "model.pt")
        except Exception as e:  # noqa: BLE001
            raise SurgeonError(f"cannot save the child graph: {e}") from e
        return
    child.model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def dry_run(
    model: nn.Module | Parent, plan: Any, example_inputs: Any = None, data: bool = False
) -> str:
    """Check a plan against a model without cutting anything (its weights may be on the
    meta device); describes the child. `data`: whether calibration data will be available
    (it decides the `auto` recipe)."""
    surgery = resolve(plan, data)
    parent = model if isinstance(model, Parent) else prepare(model, example_inputs)
    _check_emit(parent.model, surgery.plan)
    cut = check(parent, surgery)
    text = ", ".join(f"{k} {v}" for k, v in from_to(cut.parent_sizes, cut.sizes).items())
    if cut.config is None:
        return text + _unscored(cut.surgery)
    with torch.device("meta"):  # the class built from the child's config, as it will be
        child = type(parent.model)(cut.config)
    old, new = (sum(p.numel() for p in m.parameters()) for m in (parent.model, child))
    text = f"{text}; parameters {old:,} -> {new:,} ({new / old:.1%})"
    return text + budget_line(cut.surgery.budget, "; ") + _unscored(cut.surgery)


def _unscored(surgery: Any) -> str:
    """Where a dry run chose a budget's sizes by size because the importance the plan
    scores by cannot be measured without the weights or the calibration data."""
    if surgery.budget.get("chosen_by") != "size":
        return ""
    methods = {getattr(p, "method", None) for p in surgery.passes if p.name == "score"}
    if not methods & {"activation", "weight"}:
        return ""
    return (
        "; sizes chosen here by size (an even cut): the child is cut to the sizes that "
        "keep the most importance, which may differ"
    )


def budget_line(budget: dict, sep: str) -> str:
    """What a solved budget used (empty without one)."""
    if not budget:
        return ""
    if "latency" in budget:
        limit = f"{budget['latency']['ms_per_token']:g} ms per token (measured here)"
    elif "memory" in budget:
        limit = f"{budget['memory']['bytes']:,} bytes of weights and KV cache"
    elif "active_parameters" in budget:
        limit = f"{budget['active_parameters']:,} active parameters"
    else:
        limit = f"{budget['parameters']:,} parameters"
    return f"{sep}budget {limit}, {budget['share']:.1%} of it used"


def from_to(parent: dict, child: dict) -> dict[str, str]:
    """Each size as `parent -> child` (one number where the plan keeps it; `varies` where
    the parent's layers differ in it), layers first; then each stack's change, under its
    path (`model.decoder.layers num_layers`), where the model has several stacks."""
    keys = ["num_layers", *(k for k in child if k not in ("num_layers", "stacks"))]
    out = {}
    for k in keys:
        if k in child:
            old = parent.get(k, "varies")
            out[k] = f"{old} -> {child[k]}" if old != child[k] else str(child[k])
    for stack, sizes in child.get("stacks", {}).items():
        whole = parent.get("stacks", {}).get(stack, {})
        for k, v in from_to(whole, sizes).items():
            if " -> " in v:  # what the plan changes in this stack
                out[f"{stack} {k}"] = v
    return out


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
