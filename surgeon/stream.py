"""Surgery on parents larger than memory: analyse on the meta device, read each tensor
from memory-mapped safetensors shards (file pages, not process memory), write the child
shard by shard. Only the child's tensors are ever materialised."""

from __future__ import annotations

import json
import mmap
import shutil
import struct
from pathlib import Path
from typing import Any

import torch

from .analysis import analyse
from .apply import check_depth, expected_shapes
from .emit.graph import cut
from .emit.hf import check_config
from .errors import ModelLoadError, PlanError
from .frontends import trace
from .output import staged_folder
from .passes import Depth, Permute, Rescale, Score, Slice, SurgeryState
from .passes.score import movable_groups
from .passes.slice import resolve_target
from .plan import load_plan

__all__ = ["Shards", "needs_forward_passes", "stream_apply", "stream_into"]

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
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


class Shards:
    """The tensors of a folder of `.safetensors` files, as zero-copy views of the files."""

    def __init__(self, folder: Path):
        self.files = sorted(Path(folder).glob("*.safetensors"))
        if not self.files:
            raise ModelLoadError(f"{folder} has no .safetensors files")
        self.index: dict[str, tuple[mmap.mmap, torch.dtype, list[int], int, int]] = {}
        self.nbytes = 0
        for file in self.files:
            with file.open("rb") as f:
                length = struct.unpack("<Q", f.read(8))[0]
                header = json.loads(f.read(length))
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                begin, end = info["data_offsets"]
                self.index[name] = (
                    mm,
                    DTYPES[info["dtype"]],
                    info["shape"],
                    8 + length + begin,
                    end - begin,
                )
                self.nbytes += end - begin

    def __contains__(self, name: object) -> bool:
        return name in self.index

    def tensor(self, name: str) -> torch.Tensor:
        mm, dtype, shape, offset, nbytes = self.index[name]
        count = nbytes // torch.empty((), dtype=dtype).element_size()
        flat = torch.frombuffer(mm, dtype=dtype, count=count, offset=offset)
        return flat.view(shape)


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
    import transformers

    plan = load_plan(plan).resolved(False)
    if needs_forward_passes(plan):
        raise PlanError(
            "this plan runs the parent on calibration data (importance: activation "
            "or depth: influence): it cannot be streamed"
        )
    folder = Path(folder)
    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    cls = getattr(transformers, (config.architectures or ["AutoModel"])[0])
    with torch.device("meta"):
        parent = cls(config)
    shards = Shards(folder)
    graph = trace(parent)
    analysis = analyse(graph)
    table = graph.params

    def source(name: str) -> torch.Tensor:
        stored = next((n for n in table[name].names if n in shards), None)
        if stored is None:
            raise ModelLoadError(f"{folder} has no tensor {name}")
        return shards.tensor(stored)

    state = SurgeryState(graph, analysis, source=source)
    keep = resolve_target(analysis, plan.target, {g.id for g in movable_groups(state)})
    state.layers = check_depth(plan, len(analysis.layers))
    select = {g: torch.arange(k) for g, k in keep.items()}
    probe = SurgeryState(graph, analysis, select=select, layers=state.layers)
    child_config = check_config(parent, probe, expected_shapes(probe))
    for step in (
        Score(plan.importance),
        Depth(plan.depth, plan.target.get("num_layers")),
        Permute(),
        Slice(keep, evenly=plan.importance == "uniform"),
        Rescale(plan.rescale),
    ):
        step.run(state)
    with torch.device("meta"):
        names = list(cls(child_config).state_dict())
    written = _write(state, shards, names, tmp, max_shard_bytes, progress)
    child_config.save_pretrained(tmp)
    for name in COPIED:
        if (folder / name).is_file():
            shutil.copy2(folder / name, tmp / name)
    summary = {"parent_bytes": shards.nbytes, "child_parameters": written}
    return state, {**summary, "layers_kept": state.layers}


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


def _write(state, shards, names, folder: Path, max_bytes: int, progress: bool) -> int:
    from safetensors.torch import save_file

    table, dims = state.graph.params, state.analysis.dims
    chunks: list[dict[str, torch.Tensor]] = [{}]
    size, count, files = 0, 0, []
    iterator = names
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(names, desc="writing", unit="tensor")
    for child_name in iterator:
        parent_name = _parent_name(state, child_name)
        if parent_name not in shards:  # a tied alias the parent did not store either
            continue
        canonical = table.canonical(parent_name) if parent_name in table else parent_name
        value = cut(
            state,
            shards.tensor(parent_name),
            dims.tensors.get(canonical),
            state.scale.get(canonical),
        )
        chunks[-1][child_name] = value
        size += value.numel() * value.element_size()
        count += value.numel()
        if size >= max_bytes:
            files.append(_flush(chunks[-1], folder, len(files), save_file))
            chunks.append({})
            size = 0
    if chunks[-1] or not files:
        files.append(_flush(chunks[-1], folder, len(files), save_file))
    _name_shards(files, folder)
    return count


def _flush(tensors: dict, folder: Path, index: int, save_file) -> tuple[Path, list[str]]:
    path = folder / f"part-{index:05d}.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})
    names = list(tensors)
    tensors.clear()
    return path, names


def _name_shards(files: list[tuple[Path, list[str]]], folder: Path) -> None:
    """Hugging Face's names: one `model.safetensors`, or numbered shards and an index."""
    if len(files) == 1:
        files[0][0].rename(folder / "model.safetensors")
        return
    weight_map, total = {}, 0
    for i, (path, names) in enumerate(files, 1):
        final = folder / f"model-{i:05d}-of-{len(files):05d}.safetensors"
        path.rename(final)
        total += final.stat().st_size
        weight_map.update(dict.fromkeys(names, final.name))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
