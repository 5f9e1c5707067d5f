"""`slice`: keep the leading indices of the groups the target shrinks."""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..analysis import FFN_ROLES, Analysis
from ..analysis.context import source_line
from ..derived import match
from ..errors import PlanError
from .state import SurgeryState, check_stack_names

__all__ = ["SIZES", "Slice", "resolve_target"]

SIZES = (
    "hidden_size",
    *FFN_ROLES,  # intermediate_size, moe_intermediate_size, shared_expert_intermediate_size
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "num_experts",
    "num_experts_per_tok",  # the k of the routers' top-k: not a group's size
)


@dataclass(frozen=True)
class Slice:
    """Keeps the leading positions of each group the target shrinks (in the permuted
    order); the emitters cut every axis and rewrite every shape literal of the group.
    Its fields are target sizes (None: the parent's); `evenly` keeps evenly spaced
    positions instead (the Weight Selection baseline)."""

    hidden_size: int | None = None
    intermediate_size: int | None = None  # dense MLPs' (where there are none: every FFN's)
    moe_intermediate_size: int | None = None  # each routed expert's
    shared_expert_intermediate_size: int | None = None  # the shared experts'
    num_heads: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    num_experts: int | None = None
    num_experts_per_tok: int | None = None  # the routers' top-k
    evenly: bool = False
    per_layer: bool = False  # `layout: per_layer`: dense FFN widths dealt by importance
    per_layer_heads: bool = False  # `layout: per_layer_heads`: key/value groups dealt too
    stacks: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # per stack
    name = "slice"
    schema: ClassVar[dict] = {  # `evenly` is set by the recipes, not written in plans
        **{k: {"type": "integer", "minimum": 1} for k in SIZES},
        "stacks": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "properties": {k: {"type": "integer", "minimum": 1} for k in SIZES},
            },
        },
    }
    needs_data = False

    @property
    def target(self) -> dict[str, int]:
        sizes = {k: getattr(self, k) for k in SIZES}
        return {k: v for k, v in sizes.items() if v is not None}

    def check(self, state: SurgeryState) -> None:
        """How many positions each group keeps (`state.keep`); `PlanError` for a target
        that is wider than the parent, does not divide, or cuts what must stay whole."""
        state.keep = resolve_target(state.analysis, self.target, self.stacks)
        try:
            step = resolve_target(state.analysis, self.target, self.stacks, in_step=True)
        except PlanError:
            step = None
        state.keep_in_step = step if step != state.keep else None
        if self.num_experts_per_tok is not None:
            state.top_k = _routed_to(state.analysis, self.num_experts_per_tok, self.target)
            state.resized = _picks_axis(state.analysis, state.top_k)

    def run(self, state: SurgeryState) -> None:
        atoms = state.analysis.atoms
        layout = "per_layer_heads" if self.per_layer_heads else "per_layer"
        if self.per_layer:
            state.keep.update(per_layer_widths(state, layout))
        if self.per_layer_heads:
            state.keep.update(per_layer_groups(state, layout))
        for group, k in state.keep.items():
            order = state.select.get(group, torch.arange(atoms.size[group]))
            if group in state.allowed:  # only the positions the child's class computes
                state.select[group] = torch.tensor(
                    match(state.allowed[group], state.scores.get(group)), dtype=torch.long
                )
            elif state.analysis.groups[group].ordered:  # the most important, in their order
                scores = state.scores.get(group)
                best = (
                    order if scores is None else torch.argsort(scores, descending=True, stable=True)
                )
                state.select[group] = best[:k].sort().values
            elif self.evenly:
                n = len(order)
                picks = [round(i * (n - 1) / (k - 1)) for i in range(k)] if k > 1 else [0]
                state.select[group] = order[torch.tensor(picks)]
            else:
                state.select[group] = order[:k]


def per_layer_widths(state: SurgeryState, layout: str = "per_layer") -> dict[int, int]:
    """`layout: per_layer`: the dense FFN neurons the target keeps in all kept layers
    together, dealt to the layers by importance (`_deal`), in steps of 256 neurons where
    the parent's widths are multiples of 256 (the Nemotron-NAS format's FFN widths), else
    32 (or 16, 8, 1)."""
    a = state.analysis
    kept = _distinct_layers(state, layout)
    groups = [
        g
        for i in kept
        for g in a.layers[i].ffn
        if g in state.keep
        and a.layers[i].ffn_role[g] == FFN_ROLES[0]
        and "mlp" not in state.dropped.get(i, ())  # a dropped MLP gets no neurons
    ]
    groups = list(dict.fromkeys(groups))  # a layer applied several times: its group once
    if not groups:
        return {}
    sizes = {g: a.atoms.size[g] for g in groups}
    step = next(q for q in (256, 32, 16, 8, 1) if all(n % q == 0 for n in sizes.values()))
    units = sum(state.keep[g] for g in groups) // step - len(groups)
    if units < 0:
        raise PlanError(
            f"layout: {layout}: the FFN width asked for leaves less than one step of {step} "
            "neurons per layer; ask for a wider FFN"
        )
    return _deal(state, groups, step, units, f"layout: {layout} deals FFN neurons")


def per_layer_groups(state: SurgeryState, layout: str = "per_layer_heads") -> dict[int, int]:
    """`layout: per_layer_heads`: besides the FFN neurons, the key/value groups the
    target keeps in the kept layers together, dealt to the layers by importance (`_deal`),
    one group at a time, each keeping the target's query heads (multi-head and
    multi-query attention: the one heads group the target cuts). Only layers of one shape
    share out groups (the group's size in the parent, the query heads per group, the
    head size), so the child's heads, parameters and cache are the uniform child's.
    Nothing is dealt where the target cuts no group, nor for heads whose values the
    forward derives from their count (ALiBi's slopes: `state.allowed`)."""
    a = state.analysis
    pools: dict[tuple, list[int]] = {}
    for i in _distinct_layers(state, layout):
        layer = a.layers[i]
        if not a.cuts_heads(layer) or "attention" in state.dropped.get(i, ()):
            continue
        if layer.kv and layer.kv != layer.heads:  # grouped-query: the key/value groups
            dealt, per = layer.kv[0], [g for g in layer.heads if g not in layer.kv]
        else:  # multi-head, multi-query: the heads group the target cuts
            cut = [g for g in layer.heads if g in state.keep and state.keep[g] < a.atoms.size[g]]
            if len(cut) != 1:
                continue
            dealt, per = cut[0], []
        if dealt not in state.keep or dealt in state.allowed:
            continue
        shape = tuple(state.keep.get(g, a.atoms.size[g]) for g in per)
        key = (a.atoms.size[dealt], shape, layer.head_dim, bool(layer.kv))
        pools.setdefault(key, []).append(dealt)
    out: dict[int, int] = {}
    for groups in pools.values():
        groups = list(dict.fromkeys(groups))
        if any(state.keep[g] < a.atoms.size[g] for g in groups):
            units = sum(state.keep[g] for g in groups) - len(groups)
            out.update(_deal(state, groups, 1, units, f"layout: {layout} deals heads"))
    return out


def _distinct_layers(state: SurgeryState, layout: str) -> list[int]:
    kept = state.kept_layers()
    if len(set(kept)) != len(kept):
        raise PlanError(f"layout: {layout} cannot duplicate layers (depth lists one twice)")
    return kept


def _deal(state: SurgeryState, groups: list[int], step: int, units: int, what: str):
    """Every group starts with one `step` of positions; `units` more steps go, one at a
    time, to the group whose next step (its best positions not yet kept) has the largest
    score, each group's scores divided by their mean (so a layer's share depends on how
    its importance is spread, not on its activations' scale)."""
    if any(g not in state.scores for g in groups):
        raise PlanError(
            f"{what} by importance: use importance activation or weight (uniform and "
            "first give no scores)"
        )
    sizes = {g: state.analysis.atoms.size[g] for g in groups}
    ranked = {}
    for g in groups:
        scores = state.scores[g].float()
        ranked[g] = torch.sort(scores / scores.mean().clamp_min(1e-30), descending=True).values
    width = dict.fromkeys(groups, step)
    heap = [(-float(ranked[g][step : 2 * step].sum()), i, g) for i, g in enumerate(groups)]
    heap = [h for h in heap if sizes[h[2]] >= 2 * step]
    heapq.heapify(heap)
    while units > 0 and heap:
        _, i, g = heapq.heappop(heap)
        width[g] += step
        units -= 1
        if width[g] + step <= sizes[g]:
            gain = float(ranked[g][width[g] : width[g] + step].sum())
            heapq.heappush(heap, (-gain, i, g))
    return width


def resolve_target(
    analysis: Analysis,
    target: Mapping[str, int],
    stacks: Mapping[str, Mapping] | None = None,
    in_step: bool = False,
) -> dict[int, int]:
    """Turn target sizes into the number of indices each group keeps; `PlanError` for a
    target that is wider than the parent, does not divide, or cuts what must stay whole.
    `stacks`: sizes for the layers of one stack (`model.decoder.layers`), over `target`'s.
    `in_step`: where a stack's layers hold different KV head counts and the target gives
    none, every layer's scale by one factor (`_kv_in_step`); else each keeps its own."""
    stacks = stacks or {}
    widths = _stream_widths(analysis, target, stacks)
    keep: dict[int, int] = {}
    asked: dict[int, int] = {}
    atoms, groups = analysis.atoms, analysis.groups

    def ask(group: int, k: int, what: str) -> None:
        """Record that `group` keeps `k` positions (the target's `what`), once."""
        if asked.setdefault(group, k) != k:
            raise PlanError(
                f"target.{what}: {asked[group]} and {k} are asked of one group that layers "
                "of several stacks share (their sizes are tied): give them one size"
            )
        size = atoms.size[group]
        if k > size:
            raise PlanError(f"target.{what} = {k} is wider than the parent ({size})")
        if k < size and not groups[group].movable:
            reason = groups[group].pinned or "a tensor computed in the forward shares it"
            raise PlanError(f"target.{what} cannot be cut here: {reason}")
        if k < size:
            keep[group] = k

    for stream, width in widths.items():
        leaves = set(atoms.leaves(stream))
        if len(leaves) != 1:
            raise PlanError("target.hidden_size: this residual stream is made of several groups")
        ask(leaves.pop(), width, "hidden_size")
    per_layer = [k for k in SIZES[1:] if k in target]
    if per_layer and not analysis.layers:
        raise PlanError(
            f"target.{per_layer[0]} cannot be applied: no layers were found in this model (a "
            "numbered list of residual blocks); `surgeon inspect` shows what was found"
        )
    _roles_found(analysis, target, stacks)
    kv_differ = _kv_differ(analysis) if in_step else set()
    for layer in analysis.layers:
        sizes = {**target, **stacks.get(layer.stack, {})}
        if layer.stack in kv_differ:
            sizes = _kv_in_step(layer, sizes)
        _layer_target(analysis, layer, sizes, ask)
    if "head_dim" in target:
        _head_dim(analysis, target["head_dim"])
    return keep


def _stream_widths(analysis: Analysis, target: Mapping, stacks: Mapping) -> dict[int, int]:
    """The width each residual stream is cut to: its stacks' `hidden_size` (a stack the
    plan does not name takes `target`'s); the stacks of one stream must agree. `PlanError`
    for a stack the model does not have."""
    check_stack_names(analysis, stacks)
    out = {}
    for stream in analysis.streams or [analysis.residual]:
        on = [s for s in analysis.stacks if analysis.stream_of(s) == stream]
        widths = {stacks.get(s, {}).get("hidden_size", target.get("hidden_size")) for s in on}
        widths = (widths or {target.get("hidden_size")}) - {None}
        if len(widths) > 1:
            raise PlanError(
                f"hidden_size {' and '.join(map(str, sorted(widths)))}: the stacks of this "
                f"model read and write one residual stream ({', '.join(on)}), so they have "
                "one hidden_size (set it in target)"
            )
        if widths:
            out[stream] = widths.pop()
    return out


def _kv_differ(analysis: Analysis) -> set:
    """The stacks whose attention layers (those a heads target cuts) hold different
    numbers of key/value heads (MiMo-V2-Flash's sliding layers hold twice the config's)."""
    kv: dict = {}
    for layer in analysis.layers:
        if layer.heads and analysis.cuts_heads(layer):
            kv.setdefault(layer.stack, set()).add(layer.num_kv_heads or layer.num_heads)
    return {stack for stack, counts in kv.items() if len(counts) > 1}


def _kv_in_step(layer, target: Mapping) -> Mapping:
    """A heads target without `num_kv_heads`, in a stack whose layers hold different
    numbers of key/value heads: each layer keeps its query heads per KV group, so every
    layer's KV heads scale by one factor, as the config's one field scales them (its
    multi-head layers' KV heads are their heads: they scale with the target). Where the
    ratio does not divide the target, the layer keeps its KV heads, as elsewhere."""
    if "num_kv_heads" in target or "num_heads" not in target or not layer.num_kv_heads:
        return target
    heads, kv = layer.num_heads, layer.num_kv_heads
    if kv >= heads or target["num_heads"] * kv % heads:
        return target
    return {**target, "num_kv_heads": target["num_heads"] * kv // heads}


def _layer_target(analysis, layer, target, ask) -> None:
    if "num_experts" in target:
        _experts(analysis, layer, target["num_experts"], ask, target.get("num_experts_per_tok"))
    _ffn(analysis, layer, target, ask)
    if "num_heads" not in target and "num_kv_heads" not in target:
        return
    if not layer.heads:
        if any(other.heads for other in analysis.layers if other.stack == layer.stack):
            return  # a hybrid's layer without attention (linear attention, state space)
        raise PlanError(f"target.num_heads: no attention found in {layer.name}")
    if not analysis.cuts_heads(layer):
        return  # another kind of attention than the config's heads (linear attention): kept
    if layer.kv == layer.heads:  # multi-head attention: one heads group
        heads = target.get("num_heads", target.get("num_kv_heads"))
        if target.get("num_kv_heads", heads) != heads:
            raise PlanError(
                f"target.num_kv_heads = {target['num_kv_heads']} must equal num_heads = {heads}: "
                "this model has one key/value head per query head"
            )
        _outer_whole(analysis, layer, heads, ask)
        return
    if not layer.kv and len(layer.heads) == 1:  # multi-query: one key/value head for all
        if target.get("num_kv_heads", 1) != 1:
            raise PlanError(
                f"target.num_kv_heads = {target['num_kv_heads']}: {layer.name} has one "
                "key/value head shared by every query head (multi-query attention)"
            )
        ask(layer.heads[0], target.get("num_heads", layer.num_heads), "num_heads")
        return
    kv_groups = [g for g in layer.heads if g in layer.kv]
    per_group = [g for g in layer.heads if g not in layer.kv]
    if len(kv_groups) != 1 or len(per_group) != 1:
        raise PlanError(f"target.num_heads: {layer.name} has an unusual head layout")
    kv, rep = kv_groups[0], per_group[0]
    num_kv = target.get("num_kv_heads", layer.num_kv_heads)
    num_heads = target.get("num_heads", layer.num_heads)
    size = analysis.atoms.size[rep]
    if num_heads % num_kv:
        fits = [str(num_kv * i) for i in range(1, size + 1)]
        fits = ", ".join(fits[:-1]) + " or " + fits[-1] if len(fits) > 1 else fits[0]
        raise PlanError(
            f"target.num_heads = {num_heads} does not divide into num_kv_heads = {num_kv} "
            f"groups: with {num_kv} key/value heads, num_heads {fits}"
            + ("" if "num_kv_heads" in target else " (or set num_kv_heads)")
        )
    per = num_heads // num_kv
    if per > size:
        raise PlanError(
            f"target.num_heads = {num_heads} needs {per} query heads per KV group; the parent "
            f"has {size} (at most {size * num_kv} heads with {num_kv} KV heads)"
        )
    ask(kv, num_kv, "num_kv_heads")
    ask(rep, per, "num_heads")


def _roles_found(analysis: Analysis, target: Mapping, stacks: Mapping) -> None:
    """`PlanError` for a width of an FFN role (routed experts, shared experts) that no
    layer has."""
    found = {role for layer in analysis.layers for role in layer.ffn_role.values()}
    asked = {k for sizes in (target, *stacks.values()) for k in sizes if k in FFN_ROLES[1:]}
    for key in sorted(asked - found):
        what = "routed experts" if key == FFN_ROLES[1] else "shared experts beside routed ones"
        has = ", ".join(r for r in FFN_ROLES if r in found) or "none"
        raise PlanError(
            f"target.{key}: no {what} found in this model (its FFN widths: {has}); "
            "`surgeon inspect` shows them"
        )


def _ffn(analysis: Analysis, layer, target: Mapping, ask) -> None:
    """Each FFN group is cut to the width of its role (`moe_intermediate_size` for a
    routed expert's, ...). `intermediate_size` is the dense MLPs' width; in a model that
    has none (every layer routes), it is that of every role the plan gives no width."""
    dense = any(FFN_ROLES[0] in x.ffn_role.values() for x in analysis.layers)
    by_role: dict[str, list[int]] = {}
    for g in layer.ffn:
        by_role.setdefault(layer.ffn_role[g], []).append(g)
    for role, groups in by_role.items():
        key = role if role in target or dense else FFN_ROLES[0]
        if key not in target:
            continue
        if len(groups) != 1:
            what = "FFN groups" if len(by_role) == 1 else f"FFN groups of the role {role}"
            raise PlanError(f"target.{key}: {layer.name} has {len(groups)} {what}, not one")
        ask(groups[0], target[key], key)


def _experts(analysis: Analysis, layer, value: int, ask, top_k: int | None = None) -> None:
    """Routed experts are kept or dropped whole: the router's rows and every expert's
    weights together. A token still goes to `k` experts (the parent's, or the plan's
    `num_experts_per_tok`), so `value` must be at least `k`.
    Routing that picks groups of experts first (`n_group`: the experts axis viewed as
    groups x experts) keeps the same count in every group."""
    if not layer.experts:
        if any(other.experts for other in analysis.layers):
            return  # a dense layer among the expert layers
        raise PlanError(
            "target.num_experts: no routed experts found in this model" + _unfollowed(analysis)
        )
    sizes = [analysis.atoms.size[g] for g in layer.experts]  # outermost first
    if len(sizes) > 2:
        raise PlanError(f"target.num_experts: {layer.name} has several groups of experts")
    if value % math.prod(sizes[:-1]):
        raise PlanError(
            f"target.num_experts = {value}: {layer.name} routes to its {layer.num_experts} "
            f"experts in {sizes[0]} groups of {sizes[1]} (n_group); keep a multiple of "
            f"{sizes[0]} experts, the same count in each group"
        )
    per_group = value // math.prod(sizes[:-1])
    for _, k, whole in analysis.top_k(layer):
        k = top_k if whole and top_k is not None else k  # the plan's top-k, where it sets one
        if whole and value < k:
            raise PlanError(
                f"target.num_experts = {value}: each token is routed to {k} experts in "
                f"{layer.name} (num_experts_per_tok); keep at least {k}"
            )
        if not whole and per_group < k:
            raise PlanError(
                f"target.num_experts = {value}: {layer.name} scores each of its {sizes[0]} "
                f"groups of experts by its best {k}; keep at least {k * sizes[0]} experts"
            )
    ask(layer.experts[-1], per_group, "num_experts")


def _unfollowed(analysis: Analysis) -> str:
    """Why a router's picks were not followed to the weights they pick: the first op that
    reads them as something else than positions (expert ids computed from them: product
    keys), as the analysis pinned them; "" where no router's picks were pinned so."""
    for key, atom in analysis.dims.positions.items():
        node = key[0] if isinstance(key, tuple) else key
        if "topk" not in str(node.target):
            continue
        for leaf in analysis.atoms.leaves(atom):
            why = analysis.groups[leaf].pinned if leaf in analysis.groups else None
            if why and why.startswith("positions read by"):
                return (
                    f": the picks of the router {node.name} ({source_line(node)}) are {why}, "
                    "which computes other ids from them (product keys) or reads them as "
                    "data; the weights they pick stay whole: leave num_experts out"
                )
    return ""


def _routed_to(analysis: Analysis, k: int, target: Mapping) -> int:
    """`k` for the routers' top-k over every layer's experts, checked: routers found,
    and at most the experts kept."""
    picks = [
        (layer, n) for layer in analysis.layers for n, _, whole in analysis.top_k(layer) if whole
    ]
    if not any("topk" in str(node.target) for _, node in picks):
        raise PlanError(
            "target.num_experts_per_tok: no router's top-k over routed experts found in this "
            "model; `surgeon inspect` shows its experts"
        )
    kept = target.get("num_experts", min(layer.num_experts for layer, _ in picks))
    if not 1 <= k <= kept:
        raise PlanError(
            f"target.num_experts_per_tok = {k}: a token is routed to between 1 and the "
            f"{kept} experts kept"
        )
    return k


def _picks_axis(analysis: Analysis, k: int) -> dict[int, int]:
    """The axis of the routers' top-k picks (values and indices), at `k` positions: the
    shape literals that follow it (tokens x k) are rewritten with it."""
    out = {}
    for layer in analysis.layers:
        for node, _, whole in analysis.top_k(layer):
            if whole and "topk" in str(node.target):
                dim = node.args[2] if len(node.args) > 2 else -1
                for axes in analysis.dims.out[node]:
                    out.update({leaf: k for leaf in analysis.atoms.leaves(axes[dim])})
    return out


def _head_dim(analysis: Analysis, value: int) -> None:
    dims = {layer.head_dim for layer in analysis.layers}
    if dims == {value}:
        return
    rotary = analysis.couplings.get("rotary") or []
    if rotary:
        names = ", ".join(sorted({t for r in rotary for t in r["tensors"]}))
        raise PlanError(
            f"target.head_dim = {value}: head_dim is kept ({'/'.join(map(str, dims))}) because "
            f"rotary embeddings couple it to {names}; shrink num_heads instead"
        )
    raise PlanError(
        f"target.head_dim = {value}: heads are kept or dropped whole, so head_dim stays "
        f"{'/'.join(map(str, dims))}; shrink num_heads instead"
    )


def _outer_whole(analysis: Analysis, layer, heads: int, ask) -> None:
    """Multi-head attention whose heads axis is a product of groups (a fused projection
    laid out in blocks, each holding some of the heads: shards × heads per shard): the
    outer groups stay whole and the innermost keeps `heads` divided among them, the same
    count in every block, as a class that fixes the number of blocks lays them out."""
    sizes = [analysis.atoms.size[g] for g in layer.heads]  # outermost first
    outer = math.prod(sizes[:-1])
    if heads % outer:
        fits = [str(outer * i) for i in range(1, sizes[-1] + 1)]
        raise PlanError(
            f"target.num_heads = {heads}: {layer.name} lays its {layer.num_heads} heads out "
            f"in {outer} blocks of {sizes[-1]}; keep a multiple of {outer} heads, the same "
            f"count in each block ({', '.join(fits)})"
        )
    for g in layer.heads[:-1]:
        ask(g, analysis.atoms.size[g], "num_heads")
    ask(layer.heads[-1], heads // outer, "num_heads")
