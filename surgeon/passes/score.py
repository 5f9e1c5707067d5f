"""`score`: an importance per index of every group that may be reordered."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..frontends import tensor_of
from .state import SurgeryState

__all__ = ["Score", "movable_groups"]


def movable_groups(state: SurgeryState) -> list:
    """Groups the surgery may reorder and cut: not pinned, and held only by parameters.
    A group that a buffer shares (rotary frequencies) is rebuilt from the config by the
    emitters in its original order, so it keeps its order here too."""
    kinds = {e.name: e.kind for e in state.graph.params}
    return [
        g
        for g in state.analysis.groups.values()
        if g.pinned is None and all(kinds.get(name) == "parameter" for name, _ in g.members)
    ]


@dataclass(frozen=True)
class Score:
    """Scores indices; changes nothing in the model.

    `weight` (data-free): the mean absolute weight of every parameter slice an index owns,
    each tensor normalised to mean 1 so that all of them count alike, summed over the
    group's members (the residual stream thus gets one ranking shared by all layers, a KV
    group the sum over its query heads). `first`: no scores, the order is kept.
    """

    method: str = "weight"
    name = "score"

    def run(self, state: SurgeryState) -> None:
        if self.method == "first":
            return
        atoms = state.analysis.atoms
        module = state.graph.module
        for group in movable_groups(state):
            scores = torch.zeros(group.size, dtype=torch.float64)
            for name, axis in group.members:
                t = tensor_of(module, name).detach().double().abs()
                dims = [d for d in range(t.dim()) if d != axis]
                per_position = t.mean(dim=dims) if dims else t
                per_position = per_position / per_position.mean().clamp_min(1e-30)
                index = _coords(atoms, state.analysis.dims.tensors[name][axis], group.id)
                valid = index >= 0
                scores.index_add_(0, index[valid], per_position[valid])
            state.scores[group.id] = scores


def _coords(atoms, a: int, leaf: int) -> torch.Tensor:
    """For an axis of atom `a`: the index along `leaf` of every position (-1: none)."""
    a = atoms.find(a)
    if a == leaf:
        return torch.arange(atoms.size[a])
    r = atoms.refinement.get(a)
    if r is None:
        return torch.full((atoms.size[a],), -1)
    parts = [_coords(atoms, p, leaf) for p in r.parts]
    if r.kind == "cat":
        return torch.cat(parts)
    out = torch.full((1,), -1)
    for c in parts:
        out = torch.where(c.view(1, -1) >= 0, c.view(1, -1), out.view(-1, 1)).reshape(-1)
    return out
