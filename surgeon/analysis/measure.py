"""Measurements on calibration data: each block's residual ratio ‖f(x)‖ / ‖x + f(x)‖."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.fx._pytree as fx_pytree
from torch import fx

from ..frontends.graph import Graph, Inputs, as_inputs, bind_placeholders
from .residual import Block

__all__ = ["flat_inputs", "residual_ratios"]


def flat_inputs(graph: Graph, inputs: Inputs) -> list[Any]:
    """The graph's placeholders' values for a call `model(*args, **kwargs)`."""
    codegen = graph.module.graph._codegen
    info = getattr(codegen, "pytree_info", None)
    if info is not None and info.in_spec is not None:
        return fx_pytree.tree_flatten_spec((inputs.args, dict(inputs.kwargs)), info.in_spec)
    return bind_placeholders(graph.module, inputs)


class _Recorder(fx.Interpreter):
    """Runs the graph and adds up, per block, the per-position norms of f(x) and x + f(x)."""

    def __init__(self, module: fx.GraphModule, blocks: list[Block]):
        super().__init__(module, garbage_collect_values=True)
        self.watch = {}
        for i, b in enumerate(blocks):
            self.watch.setdefault(b.branch, []).append((i, "f"))
            self.watch.setdefault(b.add, []).append((i, "out"))
        self.norms: dict[int, dict[str, torch.Tensor]] = {}

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        for i, key in self.watch.get(n, ()):
            norms = self.norms.setdefault(i, {})
            norms[key] = value.detach().float().norm(dim=-1).flatten()
        return value


@torch.no_grad()
def residual_ratios(graph: Graph, blocks: list[Block], batches: Iterable[Any]) -> list[float]:
    """Mean over positions and batches of ‖f(x)‖ / ‖x + f(x)‖ for every block (running sums:
    memory does not grow with the number of batches)."""
    sums = torch.zeros(len(blocks), dtype=torch.float64)
    count = 0
    for batch in batches:
        rec = _Recorder(graph.module, blocks)
        rec.run(*flat_inputs(graph, as_inputs(batch)))
        for i, norms in rec.norms.items():
            ratio = norms["f"] / norms["out"].clamp_min(1e-12)
            sums[i] += ratio.double().sum()
        count += next(iter(rec.norms.values()))["f"].numel() if rec.norms else 0
    return (sums / max(count, 1)).tolist()
