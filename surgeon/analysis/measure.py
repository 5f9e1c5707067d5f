"""Measurements on calibration data: each block's residual ratio ‖f(x)‖ / ‖x + f(x)‖."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.fx._pytree as fx_pytree
from torch import fx

from ..frontends.graph import Graph, Inputs, as_inputs, bind_placeholders
from .residual import Block

__all__ = ["activation_means", "flat_inputs", "layer_influence", "residual_ratios"]


def flat_inputs(graph: Graph, inputs: Inputs) -> list[Any]:
    """The graph's placeholders' values for a call `model(*args, **kwargs)`."""
    codegen = graph.module.graph._codegen
    info = getattr(codegen, "pytree_info", None)
    if info is not None and info.in_spec is not None:
        return fx_pytree.tree_flatten_spec((inputs.args, dict(inputs.kwargs)), info.in_spec)
    return bind_placeholders(graph.module, inputs)


class _Capture(fx.Interpreter):
    """Runs the graph and keeps the values of a few nodes (freed with the run)."""

    def __init__(self, module: fx.GraphModule, nodes: set[fx.Node]):
        super().__init__(module, garbage_collect_values=True)
        self.nodes = nodes
        self.values: dict[fx.Node, torch.Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        if n in self.nodes:
            self.values[n] = value.detach().float()
        return value


def _per_position_means(
    graph: Graph, pairs: list[tuple[fx.Node, fx.Node]], batches: Iterable[Any], measure
) -> list[float]:
    """For each (a, b) node pair: the mean over positions and batches of measure(a, b),
    a per-position statistic; running sums, so memory does not grow with the batches."""
    sums = torch.zeros(len(pairs), dtype=torch.float64)
    count = 0
    watched = {n for pair in pairs for n in pair}
    for batch in batches:
        cap = _Capture(graph.module, watched)
        cap.run(*flat_inputs(graph, as_inputs(batch)))
        for i, (a, b) in enumerate(pairs):
            values = measure(cap.values[a], cap.values[b])
            sums[i] += values.double().sum()
        count += values.numel() if pairs else 0
    return (sums / max(count, 1)).tolist()


@torch.no_grad()
def residual_ratios(graph: Graph, blocks: list[Block], batches: Iterable[Any]) -> list[float]:
    """‖f(x)‖ / ‖x + f(x)‖ per block, averaged over positions and batches (the paper's
    additive-residual measure)."""

    def ratio(f, out):
        return f.norm(dim=-1) / out.norm(dim=-1).clamp_min(1e-12)

    return _per_position_means(graph, [(b.branch, b.add) for b in blocks], batches, ratio)


@torch.no_grad()
def layer_influence(graph: Graph, layers: list, batches: Iterable[Any]) -> list[float]:
    """1 − cos(x_in, x_out) per layer, averaged over positions and batches: how much a
    layer turns the residual stream (0: it is the identity)."""

    def turn(x_in, x_out):
        return 1 - torch.nn.functional.cosine_similarity(x_in, x_out, dim=-1)

    return _per_position_means(graph, [(la.input, la.output) for la in layers], batches, turn)


class _AbsMeans(fx.Interpreter):
    """Runs the graph; for each watched (node, axis) adds up |x| per index of the axis."""

    def __init__(self, module: fx.GraphModule, sites: list[tuple[fx.Node, int]], sums, counts):
        super().__init__(module, garbage_collect_values=True)
        self.by_node: dict[fx.Node, list[tuple[int, int]]] = {}
        for i, (node, axis) in enumerate(sites):
            self.by_node.setdefault(node, []).append((i, axis))
        self.sums, self.counts = sums, counts

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        for i, axis in self.by_node.get(n, ()):
            x = value.detach().abs().double()
            others = [d for d in range(x.dim()) if d != axis]
            self.sums[i] += x.sum(dim=others) if others else x
            self.counts[i] += x.numel() // x.shape[axis]
        return value


@torch.no_grad()
def activation_means(
    graph: Graph, sites: list[tuple[fx.Node, int]], batches: Iterable[Any], progress=None
) -> list[torch.Tensor]:
    """Mean of |x| along `axis` of each site's activation, over every other axis, every
    position and every batch (the paper's neuron importance). Running sums: memory does not
    grow with the number of batches. `progress` wraps the batches (e.g. tqdm)."""
    sums = [torch.zeros(int(n.meta["val"].shape[a]), dtype=torch.float64) for n, a in sites]
    counts = [0] * len(sites)
    runner = _AbsMeans(graph.module, sites, sums, counts)
    for batch in progress(batches) if progress else batches:
        runner.run(*flat_inputs(graph, as_inputs(batch)))
    if not any(counts):
        raise ValueError("no calibration batch was given")
    return [s / max(c, 1) for s, c in zip(sums, counts, strict=True)]
