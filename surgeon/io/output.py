"""Write results all at once: into a temporary folder beside the target, moved into place
at the end, so a failure never leaves a half-written output folder."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..errors import SurgeonError

__all__ = ["check_output", "staged_folder"]


def check_output(out: Path, force: bool) -> None:
    """Fail before any work if `out` would be overwritten without `force`."""
    if out.exists() and not force:
        raise SurgeonError(f"{out} already exists: choose another --out, or pass --force")
    if out.exists() and not out.is_dir():
        raise SurgeonError(f"{out} exists and is not a folder")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise SurgeonError(f"the folder {parent} for --out does not exist")
    if not os.access(parent, os.W_OK):
        raise SurgeonError(f"cannot write in {parent}")


@contextlib.contextmanager
def staged_folder(out: Path, force: bool) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it becomes `out` (replacing an old `out`
    only when `force`), on failure it is removed and `out` is untouched."""
    check_output(out, force)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
