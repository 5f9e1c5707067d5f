"""Passes: one file per pass, each a frozen dataclass registered by name in `PASSES`.

A pass's fields are its plan parameters (`slice: {hidden_size: 384}` is
`Slice(hidden_size=384)`). It reads and writes a `SurgeryState`: it decides (scores, which
indices each group keeps and in what order, scale factors) and never touches the parent's
tensors; the emitters build the child from those decisions. Every pass has

- `name`: its key in plans and in `PASSES`;
- `needs_data`: whether it runs the parent on calibration data;
- `check(state)`: what can be known before any pass runs (`PlanError` for an impossible
  parameter; the slice pass records how many positions each group keeps, the depth pass
  the child's layers as far as they are known);
- `run(state)`: its decisions, in pipeline order (`ORDER`).
"""

from __future__ import annotations

from typing import Protocol

from .depth import Depth
from .permute import Permute
from .rescale import Rescale
from .score import Score
from .slice import Slice
from .state import SurgeryState

__all__ = [
    "ORDER",
    "PASSES",
    "Depth",
    "Pass",
    "Permute",
    "Rescale",
    "Score",
    "Slice",
    "SurgeryState",
]


class Pass(Protocol):
    """A step of the surgery. `check` refuses a plan the parent cannot take (before any
    pass runs, so nothing is measured for a plan that would fail); `run` writes its
    decisions into the state and never touches a tensor; `needs_data` says whether it
    reads calibration batches. `name` is its key in a plan's long form, `schema` the JSON
    Schema properties of its parameters there (`plan.SCHEMA` is built from them)."""

    name: str
    schema: dict

    @property
    def needs_data(self) -> bool: ...

    def check(self, state: SurgeryState) -> None: ...

    def run(self, state: SurgeryState) -> None: ...


PASSES: dict[str, type] = {p.name: p for p in (Score, Depth, Permute, Slice, Rescale)}
ORDER = tuple(PASSES)  # the pipeline's order: score, depth, permute, slice, rescale
