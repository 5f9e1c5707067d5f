"""The error types of surgeon: one root, a few kinds, each message says what to do next."""

from __future__ import annotations

import re

__all__ = [
    "SurgeonError",
    "PlanError",
    "UnsupportedOpError",
    "InvariantError",
    "TraceError",
    "ModelLoadError",
    "NotStreamable",
]


class SurgeonError(Exception):
    """Root of every error surgeon raises on purpose. The CLI prints `str(error)` as one line."""


class PlanError(SurgeonError):
    """The plan (or a target in it) is malformed or impossible for this model."""


class UnsupportedOpError(SurgeonError):
    """The graph holds an op that has no rule in the analysis table."""


class InvariantError(SurgeonError):
    """A check that surgeon makes on its own work failed (a bug in surgeon, or in a rule)."""


class TraceError(SurgeonError):
    """No frontend could trace the model into a graph."""


class ModelLoadError(SurgeonError):
    """The model named on the command line could not be found or built."""


class NotStreamable(SurgeonError):
    """The parent's files cannot be read tensor by tensor as stored (a dtype or layout
    streaming does not read): the parent has to be loaded instead."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # terminal colours some libraries put in messages


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an error's message, shortened: what a one-line report shows."""
    for line in _ANSI.sub("", str(error)).splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return type(error).__name__
