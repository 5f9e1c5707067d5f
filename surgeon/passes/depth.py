"""`depth`: which of the parent's layers the child keeps, drops or duplicates."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..analysis.measure import layer_influence, residual_ratios
from ..errors import PlanError
from .blocks import COUNTS, MEASURES, choose_blocks
from .state import SurgeryState, check_stack_names

__all__ = ["STRATEGIES", "Depth", "choose_layers"]

STRATEGIES = ("middle", "uniform", "first", "last", "influence")  # the plan's `depth:` names


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
    index duplicates that layer). With several stacks of layers (an encoder-decoder's
    encoder and decoder), each stack is cut alone: to its entry in `stacks`, else to
    `num_layers`. In a hybrid, a strategy keeps at least one layer of the softmax attention
    the config's head count sizes (`keep_one_of`), and where the layers of a stack compute
    differently by position (shifted windows in every other layer) and no config states
    each layer's kind, each kept layer where a layer of its kind sits (`in_place`); a list
    is kept as written.

    `blocks` (`target.drop_blocks`) drops single residual blocks of the kept layers, per
    kind (attention, mlp): a count, chosen by `block_measure` (`ratio`: the smallest
    ||f(x)|| / ||x + f(x)|| on calibration data; `middle`: the layers nearest the middle
    of the kept ones), or the parent layers whose block goes (`surgeon.passes.blocks`).
    """

    strategy: str | tuple[int, ...] = "middle"
    num_layers: int | None = None
    stacks: Mapping[str, int] = field(default_factory=dict)  # a stack's own num_layers
    blocks: Mapping[str, int | tuple[int, ...]] = field(default_factory=dict)
    block_measure: str = "middle"
    name = "depth"
    schema: ClassVar[dict] = {
        "strategy": {
            "oneOf": [
                {"enum": list(STRATEGIES)},
                {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
            ]
        },
        "num_layers": {"type": "integer", "minimum": 1},
        "stacks": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 1}},
        "blocks": {"type": "object", "additionalProperties": False, "properties": COUNTS},
        "block_measure": {"enum": list(MEASURES)},
    }

    @property
    def needs_data(self) -> bool:
        """Whether it runs the parent on calibration data (a measured strategy)."""
        counted = any(isinstance(v, int) and v for v in self.blocks.values())
        if counted and self.block_measure == "ratio":
            return True
        return self.strategy == "influence" and (self.num_layers is not None or bool(self.stacks))

    def check(self, state: SurgeryState) -> None:
        """The child's layers as far as they can be known before measuring (a measured
        strategy gets a placeholder of the right length); `PlanError` when impossible."""
        n = len(state.analysis.layers)
        state.layers = self._choose(state, [0.0] * n)
        _select_per_layer(state)
        if self.blocks:
            if len(state.analysis.stacks) > 1:
                raise PlanError(
                    "target.drop_blocks: blocks are dropped in models with one stack of "
                    f"layers; this one has {len(state.analysis.stacks)}"
                )
            measured = state.kept_layers() != list(range(n)) and self.strategy == "influence"
            # a measured depth's layers are a placeholder here: listed layers count only
            asked = {
                k: len(v) if measured and isinstance(v, (list, tuple)) else v
                for k, v in self.blocks.items()
            }
            state.dropped = choose_blocks(state.analysis, state.kept_layers(), asked)

    def _drop(self, state: SurgeryState) -> None:
        """Which blocks of the kept layers the child drops (`state.dropped`)."""
        if not self.blocks:
            return
        kept = state.kept_layers()
        ratios = None
        counted = any(isinstance(v, int) for v in self.blocks.values())
        if counted and self.block_measure == "ratio":
            ratios = state.recall("block_ratios", True)  # measured for an earlier plan
            if ratios is None:
                a = state.analysis
                blocks = [b for layer in a.layers for b in layer.blocks]
                ratios = residual_ratios(state.runner or state.graph, blocks, state.calibration)
                state.remember("block_ratios", True, list(ratios))
            at = iter(ratios)
            ratios = {
                (i, k): next(at)
                for i, layer in enumerate(state.analysis.layers)
                for k in range(len(layer.blocks))
            }
        state.dropped = choose_blocks(state.analysis, kept, self.blocks, ratios)

    def run(self, state: SurgeryState) -> None:
        n = len(state.analysis.layers)
        influence = None
        if self.strategy == "influence" and self._choose(state, [0.0] * n) != list(range(n)):
            influence = state.recall("influence", True)  # measured for an earlier plan
            if influence is None:
                influence = layer_influence(
                    state.runner or state.graph, state.analysis.layers, state.calibration
                )
                state.remember("influence", True, list(influence))
            state.influence = influence
        state.layers = self._choose(state, influence)
        _select_per_layer(state)
        self._drop(state)

    def _choose(self, state: SurgeryState, influence: list[float] | None) -> list[int]:
        """The kept layers of every stack in turn (`model.encoder.layers`, then
        `model.decoder.layers`), each stack cut to its own `num_layers` (`stacks`) or the
        plan's."""
        a = state.analysis
        check_stack_names(a, self.stacks)
        if isinstance(self.strategy, tuple) and len(a.stacks) > 1:
            raise PlanError(
                f"depth lists layers, but this model has {len(a.stacks)} stacks of layers "
                f"({', '.join(a.stacks)}): give each its num_layers under stacks and a strategy"
            )
        needed = read_by_others(a.layers)
        order: list[int] = []
        for stack in a.stacks or [""]:
            index = [i for i, layer in enumerate(a.layers) if layer.stack == stack]
            k = self.stacks.get(stack, self.num_layers)
            scores = None
            if influence is not None:  # a layer others read is never the least influential
                scores = [math.inf if i in needed else influence[i] for i in index]
            try:
                picked = choose_layers(len(index), self.strategy, k, scores)
            except PlanError as e:
                raise PlanError(f"{stack}: {e}" if len(a.stacks) > 1 else str(e)) from None
            if not isinstance(self.strategy, tuple):
                attention = [j for j, i in enumerate(index) if i in (a.config_heads or ())]
                fixed = {j for j, i in enumerate(index) if i in needed}
                picked = keep_one_of(picked, attention, fixed, scores)
                moved = not a.stated_kinds and picked != list(range(len(index)))
                placed = in_place(picked, _kinds(a, index)) if moved else picked
                if fixed <= set(placed) and (not attention or set(attention) & set(placed)):
                    picked = placed
            order += [index[j] for j in picked]
        changed = order != list(range(len(a.layers)))
        for i, layer in enumerate(a.layers) if changed else []:
            # a layer applied several times one application after another (a stack run in
            # a loop) is removed from every application, as the child's loop runs the
            # layers it keeps; copied, or applied otherwise, it cannot be
            if layer.applied > 1 and (order.count(i) > 1 or not layer.spans):
                raise PlanError(
                    f"{layer.name} is applied {layer.applied} times in one forward (layers that "
                    "share weights): surgeon cannot "
                    + ("copy such a layer" if layer.spans else "remove or copy such layers")
                    + "; cut widths only (leave num_layers out)"
                )
        for i in sorted({i for i in order if order.count(i) > 1}):
            if len({p.rpartition(".")[0] for p in a.layers[i].parts}) > 1:
                raise PlanError(
                    f"depth duplicates {a.layers[i].name}, whose parts lie in several module "
                    f"lists ({', '.join(a.layers[i].parts)}): surgeon cannot copy such a layer"
                )
        for i in sorted(set(needed) - set(order)):
            raise PlanError(
                f"depth drops {a.layers[i].name}, but later layers read values it computes "
                f"besides the stream ({needed[i]}): keep it (depth: uniform and influence keep it)"
            )
        return order


def in_place(picked: list[int], kinds: list) -> list[int]:
    """The layers `picked`, each moved where needed to the nearest layer that computes as
    the parent's layer at its place in the child does (`kinds`: a key per layer of the
    stack). A class that builds each layer by its position (one that shifts the windows of
    every other layer) builds child layer j as its layer j: a layer of another kind there
    would compute otherwise. Left as picked where all layers are of one kind, where they
    already fit, or where no choice fits."""
    if len(set(kinds)) < 2 or all(kinds[i] == kinds[j] for j, i in enumerate(picked)):
        return picked
    out, last = [], -1
    for j, want in enumerate(picked):
        room = len(kinds) - (len(picked) - j - 1)  # leave a layer for each one after
        fits = [i for i in range(last + 1, room) if kinds[i] == kinds[j]]
        if not fits:
            return picked
        last = min(fits, key=lambda i: (abs(i - want), i))
        out.append(last)
    return out


def _kinds(a, index: list[int]) -> list:
    """A key per layer of a stack: its nodes' ops and the constants they take, in graph
    order (tensors and parameters left out), equal for layers that compute alike. All
    equal where the layers hold tensors of different names or shapes: a class that gives
    one layer tensors of its own (the last layer a bias of its own) may place it from the
    end, not from the start, so no place is known."""
    held = {tuple(_held(a, i)) for i in index}
    if len(held) > 1:
        return [None] * len(index)
    order = {n: k for k, n in enumerate(a.graph.graph.nodes)}
    return [_kind(a.layers[i].nodes, order) for i in index]


def _held(a, i: int) -> list[tuple]:
    """The tensors a layer's blocks read: names below the layer's own, and sizes."""
    layer, size = a.layers[i], a.atoms.size
    names = sorted({p for b in layer.blocks for p in b.params})
    return [
        (n.removeprefix(layer.name), tuple(size[x] for x in a.dims.tensors.get(n, ())))
        for n in names
    ]


def _kind(nodes, order: dict) -> tuple:
    return tuple(
        "get_attr"
        if n.op == "get_attr"
        else (n.op, str(n.target), _constants(n.args), _constants(n.kwargs))
        for n in sorted(nodes, key=order.__getitem__)
    )


def _constants(x):
    if isinstance(x, (list, tuple)):
        return tuple(_constants(v) for v in x)
    if isinstance(x, dict):
        return tuple((k, _constants(v)) for k, v in sorted(x.items()))
    if x is None or isinstance(x, (int, float, bool, str)):
        return x
    return type(x).__name__  # a node, a dtype, a device


def keep_one_of(picked: list[int], some: list[int], fixed: set[int], scores=None) -> list[int]:
    """A counted depth keeps one layer of `some` where the parent has any (a hybrid's
    softmax attention layers, those its config's head count sizes: transformers' caches
    of such models index them, and a child without one cannot run with its cache on).
    Where the strategy kept none, the layer of `some` with the highest score comes in
    (without scores: the one nearest a kept layer) for the kept layer not in `fixed`
    with the lowest score (without: the one nearest it)."""
    if not some or not picked or set(some) & set(picked):
        return picked
    others = [j for j in picked if j not in fixed]
    if not others:
        return picked
    if scores is not None:
        new = max(some, key=lambda j: scores[j])
        old = min(others, key=lambda j: scores[j])
    else:
        new = min(some, key=lambda j: (min(abs(j - k) for k in picked), j))
        old = min(others, key=lambda k: (abs(new - k), k))
    return sorted(set(picked) - {old} | {new})


def _select_per_layer(state: SurgeryState) -> None:
    """An axis with one position per layer (per-layer inputs) keeps the kept layers'
    positions, in the child's order."""
    if state.layers == list(range(len(state.analysis.layers))):
        return
    for group, reads in state.analysis.per_layer.items():
        at = {layer: position for position, layer in reads.items()}
        state.select[group] = torch.tensor([at[i] for i in state.layers if i in at])


def read_by_others(layers: list) -> dict[int, str]:
    """Layers whose weights reach values other layers read besides the residual stream
    (a first layer that computes a relative position bias every layer adds to its
    attention scores): index -> where, as `source_line` says it. Removing such a layer
    would leave its computation behind, on weights the child's class no longer has."""
    from ..analysis.context import source_line

    owner = {n: i for i, layer in enumerate(layers) for n in layer.nodes}
    graph = next((next(iter(layer.nodes)).graph for layer in layers if layer.nodes), None)
    reads = [n for n in graph.nodes if n.op == "get_attr"] if graph is not None else []
    out: dict[int, str] = {}
    for i, layer in enumerate(layers):
        prefixes = tuple(part + "." for part in layer.parts or [layer.name])
        # what its weights reach (not what it passes on of the masks and positions it got)
        stack = [n for n in reads if n.target.startswith(prefixes)]
        seen: set = set()
        ends = {layer.output, *(end for _, end in layer.spans)}  # each application's
        while stack and i not in out:
            node = stack.pop()
            for user in node.users:
                if user in seen or user in ends or not _computes(user):
                    continue
                seen.add(user)
                if owner.get(user, i) != i:
                    out[i] = source_line(node)
                    break
                stack.append(user)
    return out


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


def _computes(node) -> bool:
    """Whether a node computes a tensor (not the graph's output, not a runtime check)."""
    return node.op == "call_function" and isinstance(node.meta.get("val"), torch.Tensor)
