"""Measurements on calibration data: each block's residual ratio ‖f(x)‖ / ‖x + f(x)‖, each
layer's influence, each neuron's mean |activation|.

Each takes a `Runner` (`surgeon.execute`: the parent run whole, or one layer at a time from
its files, on one process or on torchrun's ranks) or a `Graph` (run whole, in memory), and
keeps running sums: memory does not grow with the number of batches."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import fx

from ..execute import Runner, flat_inputs, reduce
from ..frontends.graph import Graph
from .residual import Block

__all__ = [
    "activation_means",
    "flat_inputs",
    "layer_influence",
    "residual_ratios",
    "routed_norms",
    "routing_counts",
]


def _runner(run: Runner | Graph) -> Runner:
    return run if isinstance(run, Runner) else Runner(run)


def _per_position_means(
    run: Runner | Graph, pairs: list[tuple[fx.Node, fx.Node]], batches: Iterable[Any], measure
) -> list[float]:
    """For each (a, b) node pair: the mean over positions and batches of measure(a, b),
    a per-position statistic. a's value waits (per batch) until b's is computed."""
    sums = torch.zeros(len(pairs), dtype=torch.float64)
    counts = torch.zeros(len(pairs), dtype=torch.float64)
    by_second: dict[fx.Node, list[int]] = {}
    for i, (_, b) in enumerate(pairs):
        by_second.setdefault(b, []).append(i)
    firsts = {a for a, _ in pairs}
    waiting: dict[tuple[int, fx.Node], torch.Tensor] = {}
    readers = {a: sum(1 for x, _ in pairs if x == a) for a in firsts}
    left: dict[tuple[int, fx.Node], int] = {}

    def visit(k: int, node: fx.Node, value: torch.Tensor) -> None:
        value = value.detach().float()
        for i in by_second.get(node, ()):
            a = pairs[i][0]
            values = measure(waiting[k, a], value)
            sums[i] += values.double().sum().cpu()
            counts[i] += values.numel()
            left[k, a] -= 1
            if not left[k, a]:
                del waiting[k, a]
        if node in firsts:
            waiting[k, node] = value
            left[k, node] = readers[node]

    _runner(run).run(batches, firsts | set(by_second), visit)
    reduce(sums, counts)
    return (sums / counts.clamp_min(1)).tolist()


@torch.no_grad()
def residual_ratios(
    run: Runner | Graph, blocks: list[Block], batches: Iterable[Any]
) -> list[float]:
    """‖f(x)‖ / ‖x + f(x)‖ per block, averaged over positions and batches (the paper's
    additive-residual measure)."""

    def ratio(f, out):
        return f.norm(dim=-1) / out.norm(dim=-1).clamp_min(1e-12)

    return _per_position_means(run, [(b.branch, b.add) for b in blocks], batches, ratio)


@torch.no_grad()
def layer_influence(run: Runner | Graph, layers: list, batches: Iterable[Any]) -> list[float]:
    """1 − cos(x_in, x_out) per layer, averaged over positions and batches: how much a
    layer turns the residual stream (0: it is the identity)."""

    def turn(x_in, x_out):
        return 1 - torch.nn.functional.cosine_similarity(x_in, x_out, dim=-1)

    return _per_position_means(run, [(la.input, la.output) for la in layers], batches, turn)


@torch.no_grad()
def activation_means(
    run: Runner | Graph, sites: list[tuple[fx.Node, int]], batches: Iterable[Any], progress=""
) -> list[torch.Tensor]:
    """Mean of |x| along `axis` of each site's activation, over every other axis, every
    position and every batch (the paper's neuron importance). `progress`: the label of a
    progress bar (none when empty)."""
    sums = [torch.zeros(int(n.meta["val"].shape[a]), dtype=torch.float64) for n, a in sites]
    counts = torch.zeros(len(sites), dtype=torch.float64)
    by_node: dict[fx.Node, list[tuple[int, int]]] = {}
    for i, (node, axis) in enumerate(sites):
        by_node.setdefault(node, []).append((i, axis))

    def visit(k: int, node: fx.Node, value: torch.Tensor) -> None:
        for i, axis in by_node[node]:
            x = value.detach().abs().double()
            others = [d for d in range(x.dim()) if d != axis]
            sums[i] += (x.sum(dim=others) if others else x).cpu()
            counts[i] += x.numel() // x.shape[axis]

    _runner(run).run(batches, set(by_node), visit, progress)
    reduce(*sums, counts)
    if not counts.any():
        raise ValueError("no calibration batch was given")
    return [s / max(float(c), 1) for s, c in zip(sums, counts, strict=True)]


@torch.no_grad()
def routing_counts(
    run: Runner | Graph, sites: list[tuple[fx.Node, int]], batches: Iterable[Any]
) -> list[torch.Tensor]:
    """For each (node, n): how often each of n positions appears among the node's integer
    values (a router's chosen experts) over every batch: routing frequency."""
    counts = [torch.zeros(n, dtype=torch.float64) for _, n in sites]
    by_node: dict[fx.Node, list[int]] = {}
    for i, (node, _) in enumerate(sites):
        by_node.setdefault(node, []).append(i)

    def visit(k: int, node: fx.Node, value: torch.Tensor) -> None:
        for i in by_node[node]:
            n = len(counts[i])
            counts[i] += torch.bincount(value.reshape(-1).long().cpu(), minlength=n)[:n].double()

    _runner(run).run(batches, set(by_node), visit)
    reduce(*counts)
    return counts


@torch.no_grad()
def routed_norms(
    run: Runner | Graph, sites: list[tuple[fx.Node, fx.Node, fx.Node, int]], batches
) -> list[torch.Tensor]:
    """For each (ids, gates, out, n): every routed row's expert output norm ‖out_r‖ times its
    router gate (`gates`, one per row, in the order of `ids`), averaged per expert over the
    rows routed to it (REAP's router-weighted expert activation norm; 0 if never routed)."""
    sums = [torch.zeros(n, dtype=torch.float64) for *_, n in sites]
    counts = [torch.zeros(n, dtype=torch.float64) for *_, n in sites]
    watched: dict[fx.Node, list[tuple[int, int]]] = {}
    for i, site in enumerate(sites):
        for j, node in enumerate(site[:3]):
            watched.setdefault(node, []).append((i, j))
    held: dict[tuple[int, int], dict[int, torch.Tensor]] = {}

    def visit(k: int, node: fx.Node, value: torch.Tensor) -> None:
        for i, j in watched[node]:
            parts = held.setdefault((k, i), {})
            parts[j] = value.detach()
            if len(parts) < 3:
                continue
            del held[k, i]
            ids = parts[0].reshape(-1).long().cpu()
            gates = parts[1].reshape(-1).double().cpu()
            norms = parts[2].reshape(len(ids), -1).double().norm(dim=1).cpu()
            sums[i].index_add_(0, ids, gates * norms)
            counts[i] += torch.bincount(ids, minlength=len(counts[i]))[: len(counts[i])].double()

    _runner(run).run(batches, set(watched), visit)
    reduce(*sums, *counts)
    return [s / c.clamp_min(1) for s, c in zip(sums, counts, strict=True)]
