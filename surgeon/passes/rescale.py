"""`rescale`: keep the parent's activation scale in the narrower child."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ..errors import PlanError
from .state import SurgeryState

__all__ = ["METHODS", "Rescale"]

METHODS = ("paper", "none")  # the plan's `rescale:` names


@dataclass(frozen=True)
class Rescale:
    """`paper`: multiply each weight matrix whose input axis was cut by
    sqrt(fan_in / fan_in') (the paper's Glorot-style argument: a neuron's output keeps its
    standard deviation). Biases and norm parameters are not scaled, nor tensors tied to
    another use (an output head that is also the embedding table). `none`: no change."""

    method: str = "paper"
    name = "rescale"
    schema: ClassVar[dict] = {"method": {"enum": list(METHODS)}}
    needs_data = False

    def check(self, state: SurgeryState) -> None:
        if self.method not in METHODS:
            raise PlanError(f"rescale {self.method!r} is not one of: {', '.join(METHODS)}")

    def run(self, state: SurgeryState) -> None:
        if self.method == "none":
            return
        atoms = state.analysis.atoms
        for name, axis in state.analysis.dims.fan_in.items():
            if state.graph.params[name].aliases:
                continue
            atom = state.analysis.dims.tensors[name][axis]
            old, new = atoms.size[atoms.find(atom)], state.new_size(atom)
            if new < old:
                state.scale[name] = math.sqrt(old / new)
