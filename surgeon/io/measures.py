"""What the measuring passes found on a parent folder, kept on disk: the importance scores
and the layers' influence, per method and calibration set, so a re-cut of the same
parent to other sizes or another budget skips the calibration runs.

The file is keyed by the folder (its resolved path, config.json and every safetensors
file's name, size and modification time: a changed checkpoint is a new key) and sits in
`$SURGEON_CACHE`, else `$XDG_CACHE_HOME/surgeon`, else `~/.cache/surgeon`. Inside, each
measure is keyed by what it depends on (method, and the calibration batches' hash for a
measure that reads them). `surgeon apply --no-cache` neither reads nor writes it."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import torch

__all__ = ["batches_key", "cache_folder", "load_measures", "save_measures", "write_kept"]


def cache_folder() -> Path:
    if os.environ.get("SURGEON_CACHE"):
        return Path(os.environ["SURGEON_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "surgeon"


def _file(folder: Path) -> Path:
    folder = Path(folder).resolve()
    h = hashlib.sha256(str(folder).encode())
    h.update((folder / "config.json").read_bytes())
    for f in sorted(folder.glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return cache_folder() / "measures" / f"{h.hexdigest()[:32]}.pt"


def load_measures(folder: Path) -> dict:
    """The measures kept for `folder` (empty when there are none or they cannot be read)."""
    try:
        path = _file(folder)
        return dict(torch.load(path, weights_only=True)) if path.is_file() else {}
    except Exception:  # noqa: BLE001 - a cache that cannot be read is no cache
        return {}


def save_measures(folder: Path, measures: dict) -> None:
    """Keep `measures` for `folder` (atomically; a cache that cannot be written is
    skipped: it only saves time)."""
    if not measures:
        return
    try:
        write_kept(_file(folder), lambda f: torch.save(measures, f))
    except OSError:
        pass


def write_kept(path: Path, write: Callable[[IO[bytes]], None], keep: int | None = None) -> None:
    """`write(file)` into `path` atomically (a temporary file beside it, renamed; removed
    on any failure, an interrupt included); with `keep`, the files of `path`'s suffix in
    its folder beyond the `keep` most recently written are removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as f:
            tmp = f.name
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    if keep is not None:
        kept = sorted(path.parent.glob(f"*{path.suffix}"), key=lambda p: p.stat().st_mtime_ns)
        for old in kept[:-keep]:
            old.unlink(missing_ok=True)


def batches_key(batches: Iterable[Any] | None) -> str:
    """A hash of calibration batches (tensors, tuples or dicts of them)."""
    h = hashlib.sha256()

    def add(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            h.update(f"{x.dtype}{tuple(x.shape)}".encode())
            h.update(x.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            for k in sorted(x):
                h.update(str(k).encode())
                add(x[k])
        elif isinstance(x, (tuple, list)):
            for v in x:
                add(v)
        else:
            h.update(repr(x).encode())

    for batch in batches or []:
        add(batch)
    return h.hexdigest()[:32]
