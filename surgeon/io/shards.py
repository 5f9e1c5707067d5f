"""safetensors files without the library's copies: tensors read as zero-copy views of
memory-mapped files (file pages, not process memory), and written block by block
straight from memory, so a tensor never has to exist whole in the writer."""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import queue
import struct
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

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
        where: dict[str, Path] = {}
        for file in self.files:
            length, header = read_header(file)
            with file.open("rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                if name in where:
                    raise ModelLoadError(f"{file} and {where[name].name} both store {name}")
                where[name] = file
                begin, end = info["data_offsets"]
                self.index[name] = (
                    mm,
                    DTYPES[info["dtype"]],
                    info["shape"],
                    8 + length + begin,
                    end - begin,
                )
                self.nbytes += end - begin
        _check_index(Path(folder), where)

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


# Every dtype safetensors defines; those not in DTYPES are valid but not streamed.
SAFETENSORS_DTYPES = {
    *DTYPES,
    *("U16", "U32", "U64", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4"),
    *("C64", "I4", "U4"),
}
MAX_HEADER = 100 * 2**20  # safetensors' own limit on the header's length


def read_header(file: Path) -> tuple[int, dict]:
    """The header of the safetensors file `file`, checked before any tensor is read:
    its length against the file's, its JSON, and each tensor's dtype, shape and
    `data_offsets` (ordered, inside the data section, as many bytes as the shape and
    dtype need). `ModelLoadError` naming the file and what is wrong; `NotStreamable` for
    a valid dtype that streaming does not read. Returns (header length, header)."""
    try:
        size = file.stat().st_size
        with file.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelLoadError(
                    f"{file} is {size} bytes: too short for a safetensors file (truncated?)"
                )
            length = struct.unpack("<Q", head)[0]
            if length > size - 8 or length > MAX_HEADER:
                raise ModelLoadError(
                    f"{file}: its header claims {length:,} bytes, the file has {size - 8:,} "
                    "after the length: the file is truncated or not safetensors"
                )
            raw = f.read(length)
    except OSError as e:
        raise ModelLoadError(f"cannot read {file}: {e.strerror or e}") from e
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise ModelLoadError(
            f"{file}: the header is not valid JSON ({e}): the file is corrupt"
        ) from e
    if not isinstance(header, dict):
        raise ModelLoadError(f"{file}: the header is not a JSON object: the file is corrupt")
    data = size - 8 - length
    for name, info in header.items():
        if name != "__metadata__":
            _check_entry(file, name, info, data)
    return length, header


def _check_entry(file: Path, name: str, info, data: int) -> None:
    def bad(what: str) -> ModelLoadError:
        return ModelLoadError(f"{file}: tensor {name} {what}: the file is corrupt")

    if not isinstance(info, dict):
        raise bad("has no dtype, shape and data_offsets")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise bad(f"has the dtype {dtype!r}, which is not a safetensors dtype")
    if dtype not in DTYPES:
        raise NotStreamable(
            f"{file.name} stores {name} as {dtype}, a dtype streaming does not read (it "
            f"reads {', '.join(DTYPES)})"
        )
    if not isinstance(shape, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise bad(f"has the shape {shape!r}, not a list of non-negative integers")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in offsets)
    ):
        raise bad(f"has the data_offsets {offsets!r}, not two integers")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise bad(f"has the data_offsets {offsets}, not in order")
    if end > data:
        raise bad(f"ends at byte {end:,} of a data section of {data:,} bytes (truncated?)")
    need = math.prod(shape) * DTYPES[dtype].itemsize
    if end - begin != need:
        raise bad(f"has {end - begin:,} bytes, its shape {shape} of {dtype} needs {need:,}")


def _check_index(folder: Path, where: dict[str, Path]) -> None:
    """The index's weight map and the files agree: each tensor is where it says."""
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return
    weight_map = json.loads(index.read_text())["weight_map"]
    if not isinstance(weight_map, dict):
        raise ModelLoadError(f"{index}: weight_map is not a mapping")
    for name, file in where.items():
        if name not in weight_map:
            raise ModelLoadError(
                f"{index} does not list {name}, which {file.name} stores: the index is "
                "incomplete or out of date"
            )
    for name, file_name in weight_map.items():
        if where.get(name) is None or where[name].name != file_name:
            raise ModelLoadError(
                f"{index} puts {name} in {file_name}, which does not store it: the index "
                "is out of date or a shard is wrong"
            )


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
    (the library's `save_file` first copies every tensor into a Python bytes object), the
    next block made while this one is written (`_ahead`)."""
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
        written, current = 0, 0
        with contextlib.closing(_ahead(entries)) as ahead:  # its thread stops on any exit
            for i, block in ahead:
                if i != current:  # entry `current` is complete
                    _finished(entries[current], written, bar)
                    written, current = 0, i
                if isinstance(block, BaseException):
                    raise block
                e = entries[i]
                if block.dtype != e.dtype:
                    raise ValueError(f"{e.name}: a {block.dtype} block in a {e.dtype} tensor")
                if block.numel():
                    f.write(block.reshape(-1).view(torch.uint8).numpy().data)
                written += block.numel() * block.element_size()
        if entries:
            _finished(entries[current], written, bar)


def _finished(e: Entry, written: int, bar) -> None:
    if written != e.nbytes:
        raise ValueError(f"{e.name}: {written} bytes written, its shape needs {e.nbytes}")
    if bar is not None:
        bar.update(1)


_END = object()


def _ahead(entries: list[Entry], depth: int = 2) -> Iterator[tuple[int, Any]]:
    """`(index of its entry, block)` for every block of `entries`, in order, made
    contiguous by one thread up to `depth` blocks ahead of the caller: a block that is
    gathered or scaled (kept positions of an axis, a rescaled tensor) is made while the
    caller writes the one before (both release the GIL); a plain slice of a file stays a
    view, read as it is written. An entry without blocks yields one empty block, so that
    every entry is seen. An error in the thread comes as the block of the entry it
    happened in (the caller raises it once the entries before are complete); leaving
    the loop early (an error, a signal) stops the thread."""
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        i = 0
        try:
            for i, e in enumerate(entries):
                sent = False
                for block in e.blocks:
                    sent = True
                    if not put((i, block.contiguous())):
                        return
                if not sent and not put((i, torch.empty(0, dtype=e.dtype))):
                    return
            put(_END)
        except BaseException as error:  # noqa: BLE001 - raised again in the caller
            put((i, error))

    thread = threading.Thread(target=produce, name="surgeon-blocks", daemon=True)
    try:
        thread.start()
        while True:
            try:
                item = out.get(timeout=0.05)  # a timeout: a signal is not held up here
            except queue.Empty:
                continue
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        if thread.ident is not None:
            thread.join()
