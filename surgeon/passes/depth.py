"""`depth`: which of the parent's layers the child keeps, drops or duplicates."""

from __future__ import annotations

from dataclasses import dataclass

from ..analysis.measure import layer_influence
from ..errors import PlanError
from .state import SurgeryState

__all__ = ["Depth", "choose_layers"]


@dataclass(frozen=True)
class Depth:
    """Removes layers (`x + f(x)` becomes `x`, for every block of the layer) or duplicates
    them (a copy with its own parameters right after); the residual width is unchanged.

    Strategies for keeping `num_layers` of N: `middle` (the paper: remove one contiguous run
    of N − num_layers layers centred in the network, starting at layer num_layers // 2;
    30 → 20 removes layers 10..19), `uniform` (keep evenly spaced layers, first and last
    included), `first` (remove the first layers), `last` (remove the last layers),
    `influence` (measure 1 − cos(x_in, x_out) of every layer on calibration data and remove
    the least influential), or an explicit list of the parent's layers (sorted; a repeated
    index duplicates that layer).
    """

    strategy: str | tuple[int, ...] = "middle"
    num_layers: int | None = None
    name = "depth"

    @property
    def needs_data(self) -> bool:
        """Whether it runs the parent on calibration data (a measured strategy)."""
        return self.strategy == "influence" and self.num_layers is not None

    def check(self, state: SurgeryState) -> None:
        """The child's layers as far as they can be known before measuring (a measured
        strategy gets a placeholder of the right length); `PlanError` when impossible."""
        n = len(state.analysis.layers)
        measured = self._measures(n)
        state.layers = choose_layers(
            n, self.strategy, self.num_layers, [0.0] * n if measured else None
        )

    def run(self, state: SurgeryState) -> None:
        n = len(state.analysis.layers)
        influence = None
        if self._measures(n):
            influence = layer_influence(
                state.runner or state.graph, state.analysis.layers, state.calibration
            )
            state.influence = influence
        state.layers = choose_layers(n, self.strategy, self.num_layers, influence)

    def _measures(self, n: int) -> bool:
        return self.strategy == "influence" and (self.num_layers or n) < n


def choose_layers(
    n: int, strategy: str | tuple[int, ...], num_layers: int | None, influence=None
) -> list[int]:
    """The parent layer behind each child layer, in order. `PlanError` when impossible."""
    if isinstance(strategy, tuple):
        if strategy[-1] >= n:
            raise PlanError(f"depth lists layer {strategy[-1]}; the parent has {n} (0..{n - 1})")
        if num_layers is not None and num_layers != len(strategy):
            raise PlanError(
                f"target.num_layers = {num_layers} but depth lists {len(strategy)} layers"
            )
        return list(strategy)
    keep = n if num_layers is None else num_layers
    if keep > n:
        raise PlanError(
            f"target.num_layers = {keep} is deeper than the parent ({n}): list the layers to "
            "duplicate in depth, e.g. depth: [0, 1, 1, 2]"
        )
    drop = n - keep
    if strategy == "first":
        return list(range(drop, n))
    if strategy == "last":
        return list(range(keep))
    if strategy == "middle":
        start = keep // 2  # as many layers kept before the run as after (± 1)
        return [i for i in range(n) if not start <= i < start + drop]
    if strategy == "uniform":
        if keep == 1:
            return [0]
        return sorted({round(i * (n - 1) / (keep - 1)) for i in range(keep)})
    if strategy == "influence":
        if drop == 0:
            return list(range(n))
        order = sorted(range(n), key=lambda i: influence[i])
        return sorted(set(range(n)) - set(order[:drop]))
    raise PlanError(f"depth {strategy!r} is not known")
