"""What the passes read and write: the traced parent, its analysis, and the decisions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..analysis import Analysis
from ..frontends import Graph, tensor_of

__all__ = ["SurgeryState"]


@dataclass
class SurgeryState:
    """The passes never touch the parent's tensors: they decide, the emitters build.

    `select[group]` lists the parent positions the child keeps along a group, in the
    child's order (a permutation of all of them, or the leading ones after slicing).
    """

    graph: Graph
    analysis: Analysis
    scores: dict[int, torch.Tensor] = field(default_factory=dict)
    select: dict[int, torch.Tensor] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)  # tensor name -> factor
    layers: list[int] | None = None  # the parent layer behind each child layer (None: all)
    influence: list[float] | None = None  # per parent layer, when measured
    layer_names: list[str] = field(default_factory=list)  # child layer -> module in the graph
    residual_site_scores: list[torch.Tensor] = field(default_factory=list)  # per stream value
    # where the parent's tensors are read from: the traced module, or files (streaming)
    source: Callable[[str], torch.Tensor] | None = None

    def tensor(self, name: str) -> torch.Tensor:
        """The parent's tensor called `name` (a canonical name)."""
        if self.source is not None:
            return self.source(name)
        return tensor_of(self.graph.module, name)

    def new_size(self, atom: int) -> int:
        """The size of an atom (an axis) in the child."""
        keep = {g: len(chosen) for g, chosen in self.select.items()}
        return self.analysis.atoms.new_size(atom, keep)

    def positions(self, atom: int) -> torch.Tensor:
        """For an axis: the parent position each child position takes its values from."""
        return self.analysis.atoms.positions(atom, self.select)
