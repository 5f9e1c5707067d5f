"""`score`: an importance per index of every group that may be reordered."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import fx

from ..analysis.measure import activation_means, routed_norms, routing_counts
from ..errors import PlanError
from ..execute import memory_bound
from .state import SurgeryState

__all__ = ["EXPERTS", "METHODS", "Score", "mean_abs_profile", "movable_groups"]


METHODS = ("activation", "weight", "uniform", "first")  # the plan's `importance:` names
EXPERTS = ("reap", "frequency")  # routed experts under activation importance


def movable_groups(state: SurgeryState) -> list:
    """Groups the surgery may reorder and cut (`Group.movable`)."""
    return [g for g in state.analysis.groups.values() if g.movable]


@dataclass(frozen=True)
class Score:
    """Scores indices; changes nothing in the model.

    `activation` (the paper): the mean |x| of each neuron over the calibration batches'
    tokens. The residual stream is scored on the stream itself, summed over every residual
    value (one ranking shared by all layers); every other group on the activation that
    enters a weight matrix along it (the FFN hidden units entering the down projection;
    the heads' outputs entering the output projection, so a head's score sums its
    neurons and a KV group's sums its query heads); routed experts by `experts`: `reap`
    (each expert's output norm times its router gate, averaged over the tokens routed to
    it) or `frequency` (how often the router picks it). A group no weight reads is scored
    by `weight`.
    `weight` (data-free): the mean absolute weight of every parameter slice an index owns,
    each tensor normalised to mean 1, summed over the group's members.
    `first` and `uniform`: no scores (the order is kept; `uniform` keeps evenly spaced
    indices when slicing, the Weight Selection baseline).
    """

    method: str = "weight"
    experts: str = "reap"  # routed experts under `activation`: reap | frequency
    name = "score"
    schema: ClassVar[dict] = {"method": {"enum": list(METHODS)}, "experts": {"enum": list(EXPERTS)}}

    @property
    def needs_data(self) -> bool:
        return self.method == "activation"

    def check(self, state: SurgeryState) -> None:
        if self.method not in METHODS:
            raise PlanError(f"importance {self.method!r} is not one of: {', '.join(METHODS)}")
        if self.experts not in EXPERTS:
            raise PlanError(f"experts {self.experts!r} is not one of: {', '.join(EXPERTS)}")

    def run(self, state: SurgeryState) -> None:
        if self.method in ("first", "uniform"):
            return
        key, data = f"score:{self.method}:{self.experts}", self.method == "activation"
        kept = state.recall(key, data)
        if kept is not None:  # measured for an earlier plan on this parent
            state.scores.update(kept["scores"])
            state.residual_site_scores = list(kept["sites"])
            return
        self._measure(state)
        scores = {g: t.clone() for g, t in state.scores.items()}
        sites = [t.clone() for t in state.residual_site_scores]
        state.remember(key, data, {"scores": scores, "sites": sites})

    def _measure(self, state: SurgeryState) -> None:
        groups = movable_groups(state)
        if self.method == "activation":
            done = _activation_scores(
                state, groups, state.calibration, state.progress, self.experts
            )
            groups = [g for g in groups if g.id not in done]
        with memory_bound():
            _weight_scores(state, groups, state.progress)


def _activation_scores(
    state: SurgeryState, groups, batches, progress: bool, experts: str = "reap"
) -> set[int]:
    analysis = state.analysis
    atoms, dims = analysis.atoms, analysis.dims
    wanted = {g.id for g in groups}
    residual = {leaf for r in analysis.streams for leaf in atoms.leaves(r)}
    starts = {b.stream: b.skip for b in reversed(analysis.blocks)}  # each stream's first
    stream = list(starts.values()) + [b.add for b in analysis.blocks]
    stream_sites = [(n, len(dims.out[n]) - 1) for n in stream]
    inner_sites = sorted(set(dims.inputs_of_weights), key=lambda s: (s[0].name, s[1]))
    sites = stream_sites + [s for s in inner_sites if s not in stream_sites]
    run = state.runner or state.graph
    means = activation_means(run, sites, batches, "calibration" if progress else "")
    routed = _routing_scores(state, wanted, batches, experts)
    scored = set(routed)
    state.residual_site_scores = []
    for (node, axis), mean in zip(sites, means, strict=True):
        on_stream = (node, axis) in stream_sites
        atom = dims.out[node][axis]
        for leaf in set(atoms.leaves(atom)) & (wanted - routed):
            if on_stream != (leaf in residual):
                continue  # the stream scores the residual group, weights' inputs the rest
            site = _on_leaf(atoms, atom, leaf, mean)
            state.scores[leaf] = state.scores.get(leaf, 0) + site
            scored.add(leaf)
            if on_stream:
                state.residual_site_scores.append(site)
    return scored


def _routing_scores(state: SurgeryState, wanted: set[int], batches, criterion: str) -> set[int]:
    """Routed experts scored from the calibration: `reap`, each expert's output norm times
    its router gate, averaged over the rows routed to it (REAP, Lasby et al. 2025), where
    the graph shows the expert outputs and gates; else, and for `frequency`, how often the
    router picks it (each router's top-k indices, `Dims.positions`, counted)."""
    analysis = state.analysis
    atoms, dims = analysis.atoms, analysis.dims
    experts = {g.id for g in analysis.by_role("experts")} & wanted
    run = state.runner or state.graph
    scored: set[int] = set()

    def add(atom: int, values: torch.Tensor) -> None:
        for leaf in set(atoms.leaves(atom)) & experts - scored:
            state.scores[leaf] = _on_leaf(atoms, atom, leaf, values)
            scored.add(leaf)

    size = lambda atom: atoms.size[atoms.find(atom)]  # noqa: E731
    if criterion == "reap":
        sites = [s for s in _reap_sites(analysis) if set(atoms.leaves(s[3])) & experts]
        if sites:
            norms = routed_norms(run, [(*s[:3], size(s[3])) for s in sites], batches)
            for site, values in zip(sites, norms, strict=True):
                add(site[3], values)
    sites = [
        (key, atom)
        for key, atom in dims.positions.items()
        if isinstance(key, fx.Node)
        and key.target is operator.getitem
        and set(atoms.leaves(atom)) & experts - scored
    ]
    if sites:
        counts = routing_counts(run, [(n, size(a)) for n, a in sites], batches)
        for (_, atom), count in zip(sites, counts, strict=True):
            add(atom, count)
    return scored


def _reap_sites(analysis) -> list[tuple[fx.Node, fx.Node, fx.Node, int]]:
    """(expert ids, router gates, expert outputs, experts atom) per router: the product
    with picked weights whose output is on the residual stream (the down projection),
    rows in the order of the ids that picked them, gates the top-k values beside them."""
    atoms, dims = analysis.atoms, analysis.dims
    residual = {leaf for r in analysis.streams for leaf in atoms.leaves(r)}
    sites = []
    for product, weight in dims.expert_products:
        if not any(set(atoms.leaves(a)) & residual for a in dims.out[product]):
            continue  # an up projection: its output is the expert's hidden units
        ids = dims.picked_by[weight]
        gates = _gates(dims, ids)
        rows = product.meta["val"].shape[0]
        if gates is None or ids.meta["val"].numel() != rows or gates.meta["val"].numel() != rows:
            continue
        sites.append((ids, gates, product, dims.positions[ids]))
    return sites


def _gates(dims, ids: fx.Node) -> fx.Node | None:
    """The top-k values beside the top-k indices that `ids` copies."""
    node = ids
    while not (node.target is operator.getitem and (node.args[0], 1) in dims.positions):
        if len(node.all_input_nodes) != 1:
            return None
        node = node.all_input_nodes[0]
    topk = node.args[0]
    return next((u for u in topk.users if u.target is operator.getitem and u.args[1] == 0), None)


def _weight_scores(state: SurgeryState, groups, progress: bool = False) -> None:
    atoms = state.analysis.atoms
    profiles: dict[str, list[torch.Tensor]] = {}  # each tensor is read once for all axes
    kinds = {e.name: e.kind for e in state.graph.params}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        tensors = {n for g in groups for n, _ in g.members if kinds.get(n) == "parameter"}
        bar = tqdm(total=len(tensors), desc="weight scores", unit="tensor")
    for group in groups:
        scores = torch.zeros(group.size, dtype=torch.float64)
        for name, axis in group.members:
            if kinds.get(name) != "parameter":
                continue  # a buffer sharing the group (sinusoidal positions) is no weight
            if name not in profiles:
                profiles[name] = mean_abs_profile(state.tensor(name))
                if bar is not None:
                    bar.update(1)
            per_position = profiles[name][axis]
            per_position = per_position / per_position.mean().clamp_min(1e-30)
            index = _coords(atoms, state.analysis.dims.tensors[name][axis], group.id)
            valid = index >= 0
            scores.index_add_(0, index[valid], per_position[valid])
        state.scores[group.id] = scores
    if bar is not None:
        bar.close()


def mean_abs_profile(t: torch.Tensor, block_bytes: int = 8 * 2**20) -> list[torch.Tensor]:
    """For every axis of `t`, the mean of |t| over all the other axes, from one pass over
    blocks of rows (a tensor mapped from a file is read once and never copied whole).
    Blocks hold up to 256 rows and about `block_bytes`; each block's |t| goes into one
    reused buffer, its sums are taken in float32 (float64 for float64 tensors) and added
    up in float64."""
    t = t.detach()
    if not t.is_floating_point():
        t = t.float()
    if t.dim() == 1:
        return [t.double().abs()]
    if t.numel() == 0:
        return [torch.zeros(size, dtype=torch.float64) for size in t.shape]
    acc = torch.float64 if t.dtype == torch.float64 else torch.float32
    n = t.shape[0]
    row_bytes = t[0].numel() * max(t.element_size(), acc.itemsize)  # |t| and its sums
    rows = max(1, min(256, block_bytes // row_bytes))
    first = torch.empty(n, dtype=torch.float64)  # per row: the sum over all other axes
    rest = torch.zeros(t.shape[1:], dtype=torch.float64)  # the sum over rows
    buffer = torch.empty((min(rows, n), *t.shape[1:]), dtype=t.dtype)
    for i in range(0, n, rows):
        block = torch.abs(t[i : i + rows], out=buffer[: min(rows, n - i)])
        first[i : i + rows] = block.flatten(1).sum(1, dtype=acc)
        rest += block.sum(0, dtype=acc)
    sums = [first]
    for axis in range(1, t.dim()):
        others = [d for d in range(rest.dim()) if d != axis - 1]
        sums.append(rest.sum(others) if others else rest)
    return [total / (t.numel() // size) for total, size in zip(sums, t.shape, strict=True)]


def _on_leaf(atoms, atom: int, leaf: int, values: torch.Tensor) -> torch.Tensor:
    """Per-position `values` of an axis of atom `atom`, summed onto the indices of `leaf`."""
    coords = _coords(atoms, atom, leaf)
    valid = coords >= 0
    out = torch.zeros(atoms.size[leaf], dtype=torch.float64)
    return out.index_add_(0, coords[valid], values[valid].double())


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
