"""Write the child of a streamed parent as a Hugging Face folder, shard by shard, a block
of rows at a time: no tensor, parent's or child's, is ever held whole in process memory.
The values are the in-memory emitter's, bit for bit (the same `axis_cuts` and `take`)."""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch

from ..errors import InvariantError, ModelLoadError, SurgeonError
from ..execute import memory_bound
from ..io.names import save_names
from ..io.shards import Entry, Shards, write_safetensors
from .graph import UNREAD, axis_cuts, cut_tensor, take, unread_cuts

if TYPE_CHECKING:
    from ..pipeline import Cut

__all__ = ["BLOCK_BYTES", "COPIED", "check_written", "emit_shards"]

BLOCK_BYTES = 16 * 2**20  # a child tensor is cut and written this many bytes at a time
COPIED = (  # files of the parent's folder that the child's folder keeps as they are
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "generation_config.json",
    "chat_template.jinja",
)


def emit_shards(
    cut: Cut,
    folder: Path,
    max_shard_bytes: int = 512 * 2**20,
    progress: bool = False,
    check: bool = True,
) -> int:
    """Write the child (config, safetensors shards of about `max_shard_bytes`, the
    parent's tokenizer files) into the existing empty `folder`; returns the number of
    values written. The parent's tensors are read from `cut.parent`. `check`: re-read a
    sample of the written tensors and compare them with the in-memory emitter's cut
    (`check_written`; `InvariantError` on a difference)."""
    parent = cut.parent
    planned = _entries(cut, _child_tensors(parent.model, cut.config))
    entries = [p.entry for p in planned]
    files: list[list[Entry]] = [[]]
    size = 0
    for entry in entries:
        if files[-1] and size + entry.nbytes > max_shard_bytes:
            files.append([])
            size = 0
        files[-1].append(entry)
        size += entry.nbytes
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(entries), desc="writing", unit="tensor")
    written = []
    with memory_bound():  # blocks cut and copied: memory-bound
        for i, chunk in enumerate(files):
            path = folder / f"part-{i:05d}.safetensors"
            write_safetensors(chunk, path, bar)
            written.append((path, chunk))
        if bar is not None:
            bar.close()
        _name_shards(written, folder)
        if check:
            check_written(cut, folder, planned)
    cut.config.save_pretrained(folder)
    if parent.folder is not None:
        for name in COPIED:
            if (parent.folder / name).is_file():
                shutil.copy2(parent.folder / name, folder / name)
    return sum(e.numel for e in entries)


def _child_tensors(parent: torch.nn.Module, config) -> dict[str, tuple[str, torch.Size]]:
    """Every tensor of the child's class: its name there -> (the name to store, shape)."""
    with torch.device("meta"):
        child = type(parent)(config)
    shapes = {k: v.shape for k, v in child.state_dict().items()}
    names = save_names(child, shapes)
    return {k: (names[k], shape) for k, shape in shapes.items()}


class Planned(NamedTuple):
    """A child tensor to write, and where it comes from."""

    child_name: str
    parent_name: str
    canonical: str
    cuts: list
    entry: Entry


def _entries(cut: Cut, child: dict) -> list[Planned]:
    """What to write for each child tensor: its parent's tensor, cut lazily in blocks.
    A tensor the files lack is a `ModelLoadError`, unless it is another name of a tied
    tensor whose stored name is there (the child's class ties it again on load)."""
    state, parent = cut.state, cut.parent
    table, dims = state.graph.params, state.analysis.dims
    planned, guessed = [], []
    for child_name, (stored_name, shape) in child.items():
        parent_name = state.parent_name(child_name)
        source = parent.read(parent_name)
        if source is None:
            aliases = table[parent_name].names if parent_name in table else ()
            if any(a != parent_name and parent.read(a) is not None for a in aliases):
                continue  # a tied alias: the tensor is stored under another of its names
            raise ModelLoadError(
                f"{parent.folder} has no tensor {parent.stored.get(parent_name, parent_name)} "
                f"({parent_name}): the checkpoint is incomplete (a missing shard or index "
                "entry?); restore the parent's files"
            )
        canonical = table.canonical(parent_name) if parent_name in table else parent_name
        axes = dims.tensors.get(canonical)
        cuts = axis_cuts(state, axes, source.shape)
        if axes is None and list(source.shape) != list(shape):  # read by nothing traced
            cuts, leading = unread_cuts(state, source.shape, shape, canonical) or (cuts, [])
            guessed += [child_name] if leading else []
        new = list(source.shape)
        for axis, how in cuts:
            new[axis] = how.stop - how.start if isinstance(how, slice) else len(how)
        if new != list(shape):
            raise SurgeonError(
                f"{child_name}: the cut gives {new}, the child's class expects {list(shape)}"
            )
        blocks = _blocks(source, cuts, state.scale.get(canonical))
        entry = Entry(stored_name, source.dtype, new, blocks)
        planned.append(Planned(child_name, parent_name, canonical, cuts, entry))
    if guessed:
        warnings.warn(UNREAD.format(n=len(guessed), names=", ".join(guessed[:4])), stacklevel=2)
    return planned


CHECK_LARGEST = 3  # the run-time check compares the largest cut tensors ...
CHECK_PERMUTED = 3  # ... the largest with a reordered axis, and a few more
CHECK_MAX_BYTES = 64 * 2**20  # ... of at most this size in the child each


def check_written(cut: Cut, folder: Path, planned: list[Planned]) -> list[str]:
    """Compare a sample of the written child tensors, re-read from `folder`'s files, with
    the same tensors cut in memory from the parent by the in-memory emitter's `cut`;
    `InvariantError` on any difference. The sample: the `CHECK_LARGEST` largest tensors
    the surgery cuts, the `CHECK_PERMUTED` largest with a reordered axis, the first and
    last tensors written, each at most `CHECK_MAX_BYTES` in the child (the cut in memory
    holds it whole; larger ones are checked only by the blocks' own shape checks).
    Returns the names compared."""
    state, parent = cut.state, cut.parent
    small = [p for p in planned if p.entry.nbytes <= CHECK_MAX_BYTES]
    by_size = sorted(small, key=lambda p: -p.entry.nbytes)
    chosen = [p for p in by_size if p.cuts][:CHECK_LARGEST]
    moved = [p for p in by_size if any(not isinstance(h, slice) for _, h in p.cuts)]
    taken = {p.entry.name for p in chosen}
    chosen += [p for p in moved if p.entry.name not in taken][:CHECK_PERMUTED]
    chosen += small[:1] + small[-1:]
    chosen = list({p.entry.name: p for p in chosen}.values())
    written = Shards(folder)
    for p in chosen:
        source = parent.read(p.parent_name)
        axes = state.analysis.dims.tensors.get(p.canonical)
        want = cut_tensor(state, source, axes, state.scale.get(p.canonical))
        for axis, how in p.cuts if axes is None else ():  # unread: as the in-memory emitter
            want = take(want, axis, how)
        got = written.tensor(p.entry.name)
        if got.dtype != want.dtype or got.shape != want.shape or not torch.equal(got, want):
            raise InvariantError(
                f"the written child tensor {p.entry.name} differs from the same tensor cut "
                "in memory: please report this model"
            )
        del want, got  # one tensor's worth of memory at a time
    return [p.entry.name for p in chosen]


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
