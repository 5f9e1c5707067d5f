"""Surgery on parents larger than memory: analyse on the meta device, read each tensor
from memory-mapped safetensors shards (file pages, not process memory), write the child
shard by shard, a block of rows at a time: no tensor, parent's or child's, is ever
held whole in process memory."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .analysis import analyse
from .apply import check_depth, expected_shapes
from .emit.graph import axis_cuts, take
from .emit.hf import check_config
from .errors import ModelLoadError, NotStreamable, PlanError, SurgeonError
from .frontends import trace
from .hf_names import load_names, save_names
from .loading import load_model
from .output import staged_folder
from .passes import Depth, Permute, Rescale, Score, Slice, SurgeryState
from .passes.score import movable_groups
from .passes.slice import resolve_target
from .plan import load_plan
from .shards import Entry, Shards, write_safetensors

__all__ = ["needs_forward_passes", "stream_apply", "stream_into"]

COPIED = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "generation_config.json",
    "chat_template.jinja",
)


def needs_forward_passes(plan: Any, data: bool = False) -> bool:
    """Whether the plan (its recipe resolved with or without data) runs the parent."""
    plan = load_plan(plan).resolved(data)
    return plan.importance == "activation" or (
        plan.depth == "influence" and "num_layers" in plan.target
    )


def stream_apply(
    folder: str | Path,
    plan: Any,
    out: str | Path,
    *,
    force: bool = False,
    max_shard_bytes: int = 512 * 2**20,
    progress: bool = False,
) -> dict:
    """Write the child of the Hugging Face folder `folder` to `out` without loading the
    parent (atomically: a failure leaves no `out`); returns a summary."""
    with staged_folder(Path(out), force) as tmp:
        _, summary = stream_into(folder, plan, tmp, max_shard_bytes, progress)
    return summary


def stream_into(
    folder: str | Path,
    plan: Any,
    tmp: Path,
    max_shard_bytes: int = 512 * 2**20,
    progress: bool = False,
) -> tuple[SurgeryState, dict]:
    """The work of `stream_apply`, written into the existing empty folder `tmp`. Plans
    that need forward passes are refused (`PlanError`)."""
    plan = load_plan(plan).resolved(False)
    if needs_forward_passes(plan):
        raise PlanError(
            "this plan runs the parent on calibration data (importance: activation "
            "or depth: influence): it cannot be streamed"
        )
    folder = Path(folder)
    parent = _meta_parent(folder)
    shards = Shards(folder)
    stored = load_names(parent, shards.index)  # the model's names -> the files'

    def read(name: str) -> torch.Tensor | None:
        """A parent tensor by the model's name for it (None: the files lack it)."""
        return shards.tensor(stored[name]) if name in stored else None

    graph = trace(parent)
    analysis = analyse(graph)
    table = graph.params

    def source(name: str) -> torch.Tensor:
        found = next((t for n in table[name].names if (t := read(n)) is not None), None)
        if found is None:
            raise ModelLoadError(f"{folder} has no tensor {name}")
        return found

    state = SurgeryState(graph, analysis, source=source)
    keep = resolve_target(analysis, plan.target, {g.id for g in movable_groups(state)})
    state.layers = check_depth(plan, len(analysis.layers))
    select = {g: torch.arange(k) for g, k in keep.items()}
    probe = SurgeryState(graph, analysis, select=select, layers=state.layers)
    child_config = check_config(parent, probe, expected_shapes(probe))
    for step in (
        Score(plan.importance, progress=progress),
        Depth(plan.depth, plan.target.get("num_layers")),
        Permute(),
        Slice(keep, evenly=plan.importance == "uniform"),
        Rescale(plan.rescale),
    ):
        step.run(state)
    written = _write(
        state, read, _child_tensors(parent, child_config), tmp, max_shard_bytes, progress
    )
    child_config.save_pretrained(tmp)
    for name in COPIED:
        if (folder / name).is_file():
            shutil.copy2(folder / name, tmp / name)
    summary = {"parent_bytes": shards.nbytes, "child_parameters": written}
    return state, {**summary, "layers_kept": state.layers}


def _meta_parent(folder: Path) -> torch.nn.Module:
    """The parent's class built from its config on the meta device: no weight is read."""
    parent, _ = load_model(str(folder), weights=False)
    quantized = getattr(parent.config, "quantization_config", None)
    if quantized:
        method = getattr(quantized, "quant_method", None) or dict(quantized).get("quant_method")
        raise NotStreamable(f"the checkpoint is quantized ({method}): its tensors are packed")
    return parent


def _child_tensors(parent: torch.nn.Module, config) -> dict[str, tuple[str, torch.Size]]:
    """Every tensor of the child's class: its name there -> (the name to store, shape)."""
    with torch.device("meta"):
        child = type(parent)(config)
    shapes = {k: v.shape for k, v in child.state_dict().items()}
    names = save_names(child, shapes)
    return {k: (names[k], shape) for k, shape in shapes.items()}


def _parent_name(state: SurgeryState, child_name: str) -> str:
    """Child layer j holds the parent layer the depth pass put there."""
    layers = state.analysis.layers
    if state.layers is None or not layers:
        return child_name
    owner = layers[0].name.rpartition(".")[0] + "."
    if not child_name.startswith(owner):
        return child_name
    index, _, rest = child_name[len(owner) :].partition(".")
    if not index.isdigit():
        return child_name
    return f"{layers[state.layers[int(index)]].name}.{rest}"


BLOCK_BYTES = 16 * 2**20  # a child tensor is cut and written this many bytes at a time


def _write(state, read, child: dict, folder: Path, max_bytes: int, progress: bool) -> int:
    """Write every child tensor (`child`: the class's name -> the name to store and the
    shape) into safetensors shards of about `max_bytes`; returns the number of values."""
    entries = _entries(state, read, child)
    files: list[list[Entry]] = [[]]
    size = 0
    for entry in entries:
        if files[-1] and size + entry.nbytes > max_bytes:
            files.append([])
            size = 0
        files[-1].append(entry)
        size += entry.nbytes
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(entries), desc="writing", unit="tensor")
    written = []
    for i, chunk in enumerate(files):
        path = folder / f"part-{i:05d}.safetensors"
        write_safetensors(chunk, path, bar)
        written.append((path, chunk))
    if bar is not None:
        bar.close()
    _name_shards(written, folder)
    return sum(e.numel for e in entries)


def _entries(state, read, child: dict) -> list[Entry]:
    """What to write for each child tensor: its parent's tensor, cut lazily in blocks."""
    table, dims = state.graph.params, state.analysis.dims
    entries = []
    for child_name, (stored_name, shape) in child.items():
        parent_name = _parent_name(state, child_name)
        source = read(parent_name)
        if source is None:  # a tied alias the parent did not store either
            continue
        canonical = table.canonical(parent_name) if parent_name in table else parent_name
        cuts = axis_cuts(state, dims.tensors.get(canonical), source.shape)
        new = list(source.shape)
        for axis, how in cuts:
            new[axis] = how.stop - how.start if isinstance(how, slice) else len(how)
        if new != list(shape):
            raise SurgeonError(
                f"{child_name}: the cut gives {new}, the child's class expects {list(shape)}"
            )
        blocks = _blocks(source, cuts, state.scale.get(canonical))
        entries.append(Entry(stored_name, source.dtype, new, blocks))
    return entries


def _blocks(source: torch.Tensor, cuts: list, scale: float | None) -> Iterator[torch.Tensor]:
    """The child's tensor as consecutive blocks of rows: each is `cut` applied to the rows
    it needs, so the values are the in-memory emitter's, bit for bit."""
    if source.dim() == 0:
        yield source if scale is None else source * scale
        return
    rows = next((how for axis, how in cuts if axis == 0), slice(0, source.shape[0]))
    rest = [(axis, how) for axis, how in cuts if axis != 0]
    count = rows.stop - rows.start if isinstance(rows, slice) else len(rows)
    row_bytes = source[:1].numel() * source.element_size()  # a parent row bounds a block
    step = max(1, BLOCK_BYTES // max(1, row_bytes))
    for start in range(0, count, step):
        stop = min(count, start + step)
        if isinstance(rows, slice):
            block = take(source, 0, slice(rows.start + start, rows.start + stop))
        else:
            block = take(source, 0, rows[start:stop])
        for axis, how in rest:
            block = take(block, axis, how)
        yield block if scale is None else block * scale


def _name_shards(files: list[tuple[Path, list[Entry]]], folder: Path) -> None:
    """Hugging Face's names: one `model.safetensors`, or numbered shards and an index."""
    if len(files) == 1:
        files[0][0].rename(folder / "model.safetensors")
        return
    weight_map, total = {}, 0
    for i, (path, entries) in enumerate(files, 1):
        final = folder / f"model-{i:05d}-of-{len(files):05d}.safetensors"
        path.rename(final)
        total += sum(e.nbytes for e in entries)  # the tensors' bytes, as huggingface_hub
        weight_map.update(dict.fromkeys((e.name for e in entries), final.name))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
