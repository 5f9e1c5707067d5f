"""`permute`: order every scored group by decreasing importance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .state import SurgeryState

__all__ = ["Permute"]


@dataclass(frozen=True)
class Permute:
    """Function-preserving: every axis of a group gets the same permutation, which the
    analysis has verified keeps the model's output (tests/test_analysis.py)."""

    name = "permute"
    needs_data = False
    schema: ClassVar[dict] = {}

    def check(self, state: SurgeryState) -> None:
        pass

    def run(self, state: SurgeryState) -> None:
        groups = state.analysis.groups
        for group, scores in state.scores.items():
            if groups[group].ordered:  # keeps its order (`Slice` cuts it)
                continue
            state.select[group] = torch.argsort(scores, descending=True, stable=True)
