"""safetensors files without the library's copies: tensors read as zero-copy views of
memory-mapped files (file pages, not process memory), and written block by block
straight from memory, so a tensor never has to exist whole in the writer."""

from __future__ import annotations

import json
import math
import mmap
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import torch

from ..errors import ModelLoadError, NotStreamable

__all__ = ["Entry", "Shards", "save_safetensors", "write_safetensors"]

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
CODES = {dtype: code for code, dtype in DTYPES.items()}


class Shards:
    """The tensors of a folder of `.safetensors` files, as zero-copy views of the files."""

    def __init__(self, folder: Path):
        self.files = _weight_files(Path(folder))
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
                if info["dtype"] not in DTYPES:
                    raise NotStreamable(
                        f"{file.name} stores {name} as {info['dtype']}, a dtype streaming "
                        f"does not read (it reads {', '.join(DTYPES)})"
                    )
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
        count = nbytes // dtype.itemsize
        if count == 0:
            return torch.empty(shape, dtype=dtype)
        flat = torch.frombuffer(mm, dtype=dtype, count=count, offset=offset)
        return flat.view(shape)


def _weight_files(folder: Path) -> list[Path]:
    """The files of the checkpoint: those its index names, else every `.safetensors`
    file (a folder may hold others, e.g. a `consolidated.safetensors` of another format)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise ModelLoadError(f"cannot read {index}: {e}") from e
        missing = sorted(n for n in names if not (folder / n).is_file())
        if missing:
            raise ModelLoadError(f"{index.name} names {missing[0]}, which {folder} lacks")
        return sorted(folder / n for n in names)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{folder} has no .safetensors files")
    return files


class Entry(NamedTuple):
    """One tensor to write: its name, dtype and shape, and its values as consecutive
    blocks of whole rows (produced only when the writer reaches it)."""

    name: str
    dtype: torch.dtype
    shape: list[int]
    blocks: Iterable[torch.Tensor]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write `tensors` to the safetensors file `path`."""
    entries = [Entry(k, t.dtype, list(t.shape), [t]) for k, t in tensors.items()]
    write_safetensors(entries, path)


def write_safetensors(entries: list[Entry], path: Path, bar=None) -> None:
    """Write `entries` to the safetensors file `path`, each block straight from its memory
    (the library's `save_file` first copies every tensor into a Python bytes object)."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for e in entries:
        if e.name in header:
            raise ValueError(f"{e.name!r} twice, or a reserved name, in one safetensors file")
        header[e.name] = {
            "dtype": CODES[e.dtype],
            "shape": e.shape,
            "data_offsets": [offset, offset + e.nbytes],
        }
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with Path(path).open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for e in entries:
            written = 0
            for block in e.blocks:
                if block.dtype != e.dtype:
                    raise ValueError(f"{e.name}: a {block.dtype} block in a {e.dtype} tensor")
                if block.numel():
                    f.write(block.contiguous().reshape(-1).view(torch.uint8).numpy().data)
                written += block.numel() * block.element_size()
            if written != e.nbytes:
                raise ValueError(f"{e.name}: {written} bytes written, its shape needs {e.nbytes}")
            if bar is not None:
                bar.update(1)
