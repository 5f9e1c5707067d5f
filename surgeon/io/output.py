"""Write results all at once: into a temporary folder beside the target, moved into place
at the end, so a failure never leaves a half-written output folder.

What is guaranteed, for an output folder OUT:

- a failure, Ctrl-C, SIGTERM or SIGHUP while the child is written removes the partial
  folder `.OUT.partial-PID` and leaves OUT as it was (the signals are turned into
  `SystemExit(128 + signal)` while the folder is staged, and blocked during the final
  renames);
- a process killed outright (SIGKILL, power loss) can leave `.OUT.partial-PID`: the next
  run for OUT removes the partial folders of processes that no longer run;
- replacing OUT (`force`) swaps the two folders in one step on Linux
  (`renameat2(RENAME_EXCHANGE)`), so OUT always exists; elsewhere OUT is renamed to
  `.OUT.old-PID` first, and if the process dies between the two renames the next run
  puts `.OUT.old-PID` back as OUT;
- OUT may not be, hold or sit inside the parent's folder (`model`): the child would
  overwrite the parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from ..errors import SurgeonError

__all__ = ["check_output", "clean_stale", "record_json", "staged_folder"]


def record_json(record: dict) -> str:
    """`surgeon.json`'s text: indented, but each list of numbers on one line (the kept
    positions of a large child are millions of them)."""
    import json

    text = json.dumps(record, indent=2)
    return (
        re.sub(
            r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]",
            lambda m: "[" + ", ".join(m[1].replace(",", " ").split()) + "]",
            text,
        )
        + "\n"
    )


SIGNALS = tuple(getattr(signal, s) for s in ("SIGTERM", "SIGHUP") if hasattr(signal, s))


def check_output(out: Path, force: bool, model: str | Path | None = None) -> None:
    """Fail before any work if `out` would be overwritten without `force`, or would be,
    hold or sit inside the parent's folder `model`. Stale folders of earlier runs that
    were killed are cleaned first (see the module's docstring)."""
    out = Path(out)
    if model is not None:
        check_apart(out, model)
    clean_stale(out)
    if out.exists() and not force:
        raise SurgeonError(f"{out} already exists: choose another --out, or pass --force")
    if out.exists() and not out.is_dir():
        raise SurgeonError(f"{out} exists and is not a folder")
    parent = out.resolve().parent
    if parent.exists() and not parent.is_dir():
        raise SurgeonError(f"{parent} is a file, not a folder: --out must be inside a folder")
    if not parent.is_dir():
        raise SurgeonError(f"the folder {parent} for --out does not exist")
    if not os.access(parent, os.W_OK):
        raise SurgeonError(f"cannot write in {parent}")


def check_apart(out: Path, model: str | Path) -> None:
    """`SurgeonError` if `out` is, holds or sits inside the folder `model` (symlinks
    resolved). A `model` that is not a path (`module:factory`) has no folder."""
    folder = Path(model)
    if not folder.exists():
        return
    a, b = Path(out).resolve(), folder.resolve()
    if a == b:
        raise SurgeonError(f"--out {out} is the parent's folder {model}: choose another --out")
    if b in a.parents:
        raise SurgeonError(
            f"--out {out} is inside the parent's folder {model}: choose an --out outside it"
        )
    if a in b.parents:
        raise SurgeonError(
            f"--out {out} holds the parent's folder {model}: replacing it would delete the "
            "parent; choose another --out"
        )


def _alive(pid: int) -> bool:
    if pid == os.getpid():  # not ours: this process has staged nothing yet
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def clean_stale(out: Path) -> list[str]:
    """Remove `.OUT.partial-PID` folders of processes that no longer run, and put a
    `.OUT.old-PID` back as OUT when OUT is missing (a replacement interrupted between
    its two renames; otherwise it is removed). Returns what was done, one line each
    (also printed on stderr)."""
    out = Path(out)
    done = []
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(partial|old)-(\d+)$")
    try:
        siblings = list(out.parent.iterdir())
    except OSError:
        return done
    for path in sorted(siblings):
        m = pattern.match(path.name)
        if m is None or _alive(int(m.group(2))):
            continue
        if m.group(1) == "old" and not out.exists():
            path.rename(out)
            done.append(f"restored {out} from {path.name}, left by a run that was killed")
        else:
            shutil.rmtree(path, ignore_errors=True)
            done.append(f"removed {path}, left by a run that was killed (pid {m.group(2)})")
    for line in done:
        print(f"surgeon: {line}", file=sys.stderr)
    return done


def _raise_exit(signum, frame):  # noqa: ARG001 - a signal handler's signature
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP raise `SystemExit` (so cleanup runs) inside the block; the
    previous handlers are restored after. Only the main thread can set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _raise_exit) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Termination signals wait until the block is done (the final renames)."""
    blocked = {*SIGNALS, signal.SIGINT}
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the
    system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # an old kernel, or a file system without it
    raise OSError(code, os.strerror(code), str(b))


@contextlib.contextmanager
def staged_folder(out: Path, force: bool, model: str | Path | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it becomes `out` (replacing an old `out`
    only when `force`), on failure it is removed and `out` is untouched. An `OSError` while
    the child is written (a full disk, a file size limit) is a `SurgeonError`."""
    out = Path(out)
    check_output(out, force, model)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        with _signals_raise():
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            try:
                yield tmp
            except OSError as e:
                where = f" ({e.filename})" if e.filename else ""
                raise SurgeonError(f"writing {out} failed: {e.strerror or e}{where}") from e
    except BaseException:
        with _signals_blocked():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    with _signals_blocked():
        if not out.exists():
            tmp.rename(out)
        elif _exchange(tmp, out):
            shutil.rmtree(tmp, ignore_errors=True)  # now the old out
        else:
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
