"""Budgets: `target: {parameters: N}` turned into the sizes of a child that fits
(`active_parameters`: the routed experts' FFN weights counted at the share of them one
token uses; `memory`: weights in a dtype and a KV cache).

The plan states what must fit (the child's parameter count, embeddings included, each
tied tensor once) and, optionally, some sizes it fixes; `solve` chooses the others on the
parent's analysis. Every candidate keeps the parent's layer structure (one width per
size in every layer): a number of layers, a residual width, an FFN width (every FFN role
cut by one share), and query heads in whole key/value groups (each group keeps the
parent's number of query heads). Widths move in steps of 64 where the parent's are
multiples of 64 (else 32, 16, 8 or 1); the hidden size is a multiple of the head count
(configs check it), and where the config derives head_dim from the hidden size and the
head count, the head count times head_dim.

A candidate's parameter count is exact, computed from the analysis (each tensor's axes
and the sizes their groups keep, tensors of dropped layers left out), never by building
the child. Among the candidates within [0.97 N, N] the solver keeps the one that keeps the
most importance: the largest product of the kept shares, the larger count on a tie. A
share is of the plan's importance scores (`activation` on its calibration batches,
`weight` without data; measured once, then kept with the parent's measures for the passes
and later plans): the residual stream's scores its hidden size keeps, and, averaged over
the groups of the kept layers that a candidate cuts, the scores of the first free FFN
size's neurons (a dense MLP's, else the routed experts') and of the heads that their
widths keep, each group's best positions first; layers count by their number (layers
kept / parent's). Where the plan's importance gives no scores
(`first`, `uniform`, `activation` with no calibration batches, a parent whose weights are
not at hand), the shares are of sizes instead: layers, hidden and FFN width kept / the
parent's (the even cut). The chosen sizes are then checked as any plan is (the config
must hold them), the next candidate taken where it cannot. With no candidate in that
window, the largest count under N.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from .analysis import FFN_ROLES
from .errors import PlanError
from .fit import _derived, config_value
from .passes.depth import choose_layers
from .passes.slice import resolve_target
from .passes.state import SurgeryState
from .plan import BUDGETS

if TYPE_CHECKING:
    from .pipeline import Parent, Surgery

__all__ = ["LOWEST", "Limit", "child_parameters", "recount", "solve"]

LOWEST = 0.97  # a child under LOWEST x the budget is reported as such
TRIES = 40  # candidates checked against the config before giving up


DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class Limit:
    """What must fit, in one unit: parameters, or bytes of weights (`per_weight` bytes
    each) plus a KV cache (`per_kv` bytes per layer and KV head: keys and values of
    head_dim each, for every token of the context and every sequence of the batch)."""

    key: str  # "parameters" | "active_parameters" | "memory"
    value: int
    per_weight: int = 1
    per_kv: int = 0

    @property
    def active(self) -> bool:
        """Whether routed experts count at the share of them a token uses."""
        return self.key == "active_parameters"

    @classmethod
    def of(cls, budget: Mapping[str, Any], head_dim: int) -> Limit:
        for key in ("parameters", "active_parameters"):
            if key in budget:
                return cls(key, budget[key])
        m = budget["memory"]
        size = DTYPE_BYTES[m.get("dtype", "bfloat16")]
        per_kv = 2 * head_dim * m["context"] * m.get("batch", 1) * size
        return cls("memory", m["bytes"], size, per_kv)

    def weights(self, cache: int) -> float:
        """The parameters that fit beside a cache of `cache` (layers x KV heads)."""
        return (self.value - cache * self.per_kv) / self.per_weight

    def used(self, count: int, cache: int) -> int:
        return count * self.per_weight + cache * self.per_kv

    def text(self, value: int) -> str:
        if self.key == "memory":
            return f"{value:,} bytes"
        return f"{value:,} {'active ' if self.active else ''}parameters"


def solve(
    parent: Parent, surgery: Surgery, calibration: list | None = None, progress: bool = False
) -> Surgery:
    """The surgery with its budget turned into sizes (`Surgery.budget` records the budget,
    what the child uses of it, and whether the sizes were chosen by importance kept or by
    size); `PlanError` for a budget no child of this parent fits. `calibration`: the
    batches `activation` importance is measured on."""
    from .pipeline import check, resolve

    plan = surgery.plan
    _check_supported(parent, plan)
    if "latency" in plan.budget:
        from .latency import solve_latency

        return solve_latency(parent, surgery, calibration=calibration)
    sizes = _parent_sizes(parent)
    if plan.layout != "uniform" and "num_layers" not in plan.target:
        # the budget is met by widths, dealt per layer, rather than by dropping layers
        plan = replace(plan, target={**plan.target, "num_layers": sizes["num_layers"]})
    limit = Limit.of(plan.budget, sizes.get("head_dim") or 0)
    if limit.active and not _top_k(parent.analysis, {}):
        raise PlanError(
            f"target.active_parameters: {type(parent.model).__name__} routes no token "
            "among experts, so every parameter is active: state target.parameters instead"
        )
    whole = _parent_use(parent, sizes, limit)
    if limit.value >= whole:
        raise PlanError(
            f"target.{limit.key} = {limit.text(limit.value)} is not below the parent's "
            f"{limit.text(whole)}: nothing to cut (ask for less)"
        )
    found = _candidates(parent, plan, limit)
    curves = _importance(parent, surgery, calibration, progress) if found else {}
    candidates = _ranked(parent, plan, limit, found, curves)
    if not candidates:
        smallest = _smallest(parent, plan, limit)
        raise PlanError(
            f"target.{limit.key} = {limit.text(limit.value)} is below the smallest child "
            f"this plan allows ({limit.text(smallest)}): ask for more, or fix fewer sizes "
            "in target"
        )
    errors = []
    for used, count, sizes in candidates[:TRIES]:
        solved = replace(plan, target={**plan.target, **sizes}, budget={})
        try:
            trial = resolve(solved)
            check(parent, trial)
        except PlanError as e:
            errors.append(str(e))
            continue
        record = {
            **plan.budget,
            _counted_key(limit): count,
            **({"child_bytes": used} if limit.key == "memory" else {}),
            "share": used / limit.value,
            "chosen_by": "importance" if curves else "size",
        }
        return replace(trial, budget=record)
    raise PlanError(
        f"target.{limit.key} = {limit.text(limit.value)}: none of the "
        f"{min(TRIES, len(candidates))} closest children fits "
        f"{type(parent.model).__name__}'s config (the first: {errors[0]}); fix some sizes "
        "in target"
    )


def _counted_key(limit: Limit) -> str:
    return "child_active_parameters" if limit.active else "child_parameters"


def _parent_use(parent: Parent, sizes: dict, limit: Limit) -> int:
    top_k = _top_k(parent.analysis, {}) if limit.active else None
    outside, per_layer = _counted(parent, {}, top_k)
    count = round(outside + sum(per_layer))
    return limit.used(count, _cache(parent, list(range(sizes["num_layers"])), sizes))


def _cache(parent: Parent, kept: list[int], width: dict, drop: Mapping | None = None) -> int:
    """Layers x KV heads of the child's cache: every kept layer with attention heads,
    each with the child's KV heads (its query heads under multi-head attention), but
    those whose attention the child drops (`drop`: `target.drop_blocks`, or the layers
    `state.dropped` names)."""
    kv = width.get("num_kv_heads") or width.get("num_heads") or 0
    attending = [i for i in kept if parent.analysis.layers[i].heads]
    gone = (drop or {}).get("attention", 0)
    if isinstance(gone, (list, tuple)):
        attending = [i for i in attending if i not in gone]
        gone = 0
    return kv * max(len(attending) - gone, 0)


def _check_supported(parent: Parent, plan) -> None:
    a = parent.analysis
    if plan.stacks or len(a.stacks) > 1:
        raise PlanError(
            "target: budgets are solved for models with one stack of layers; "
            "this one has several (give each stack's sizes under stacks instead)"
        )
    if not a.layers:
        raise PlanError(
            "target: a budget needs layers, and none were found in this model (a "
            "numbered list of residual blocks); `surgeon inspect` shows what was found"
        )


def _step(size: int) -> int:
    return next(q for q in (32, 16, 8, 1) if size % q == 0)


def _options(parent: Parent, plan, sizes: dict) -> dict[str, list]:
    """Each free size's candidate values (the plan's own where it states one)."""
    fixed = plan.target
    out: dict[str, list] = {}
    layers = len(parent.analysis.layers)
    if isinstance(plan.depth, tuple):
        out["num_layers"] = [len(plan.depth)]
    else:
        out["num_layers"] = (
            [fixed.get("num_layers")] if "num_layers" in fixed else range(1, layers + 1)
        )
    heads, kv = sizes.get("num_heads"), sizes.get("num_kv_heads")
    if heads:
        per = heads // kv if kv else 1
        groups = range(1, (kv or heads) + 1)
        pairs = [(g * per, g if kv else None) for g in groups]
        if "num_heads" in fixed:
            pairs = [p for p in pairs if p[0] == fixed["num_heads"]]
        if "num_kv_heads" in fixed:
            pairs = [p for p in pairs if p[1] == fixed["num_kv_heads"]]
        out["heads"] = pairs or [(fixed.get("num_heads"), fixed.get("num_kv_heads"))]
    hidden = sizes["hidden_size"]
    if "hidden_size" in fixed:
        out["hidden_size"] = [fixed["hidden_size"]]
    elif _tied_hidden(parent, sizes):
        out["hidden_size"] = [h * sizes["head_dim"] for h, _ in out.get("heads", [])]
    else:
        q = _step(hidden)
        out["hidden_size"] = list(range(q, hidden + 1, q))
    roles = [r for r in FFN_ROLES if r in sizes and r not in fixed]
    out["ffn"] = roles
    return out


def _tied_hidden(parent: Parent, sizes: dict) -> bool:
    """Whether the config derives head_dim from the hidden size and the head count (no
    head_dim field of its own), so the hidden size is the head count times head_dim."""
    heads, head_dim = sizes.get("num_heads"), sizes.get("head_dim")
    if not heads or not head_dim or heads * head_dim != sizes["hidden_size"]:
        return False
    config = getattr(parent.model, "config", None)
    if config is None:
        return False
    return config_value(config, "head_dim") is None or _derived(config, "head_dim")


def _candidates(parent: Parent, plan, limit: Limit) -> list[tuple[int, int, dict, list[int]]]:
    """Every candidate's (use of the budget, parameter count, sizes, layers kept)."""
    sizes = _parent_sizes(parent)
    options = _options(parent, plan, sizes)
    tied = _tied_hidden(parent, sizes) and "hidden_size" not in plan.target
    found = []
    counted: dict = {}  # the dropped blocks' counts at one width
    for hidden, heads, kv in _widths(options, sizes, tied):
        width = {"hidden_size": hidden}
        if heads is not None:
            width.update(num_heads=heads)
        if kv is not None:
            width.update(num_kv_heads=kv)
        width.update({k: v for k, v in plan.target.items() if k not in width})
        width.pop("num_layers", None)
        lines = _lines(parent, width, options["ffn"], sizes, limit.active)
        if lines is None:
            continue
        for n in options["num_layers"]:
            kept = _kept(parent, plan, n)
            cache = _cache(parent, kept, {**sizes, **width}, plan.drop_blocks)
            mine = _without_blocks(
                parent, lines, width, options["ffn"], kept, plan.drop_blocks, counted
            )
            best = _widest_ffn(mine, kept, limit.weights(cache), options["ffn"], sizes)
            if best is None:
                continue
            count, ffn = best
            used = limit.used(count, cache)
            found.append((used, count, {"num_layers": n, **width, **ffn}, kept))
    return found


def _ranked(parent: Parent, plan, limit: Limit, found: list, curves: Mapping):
    """`found` (`_candidates`) best first, as (use of the budget, parameter count, sizes
    to write into the plan): within the window by importance kept (`curves`, where the
    plan's importance gives scores) or by size, then by count; out of it, the largest."""
    sizes = _parent_sizes(parent)
    options = _options(parent, plan, sizes)
    layers = len(parent.analysis.layers)
    scored = []
    for used, count, chosen, kept in found:
        if curves:
            share = _kept_importance(parent, chosen, kept, curves, options["ffn"])
        else:
            share = _share(chosen, sizes, layers, options)
        near = used >= LOWEST * limit.value
        rank = (near, share, used) if near else (near, used, share)
        scored.append((rank, used, count, chosen))
    scored.sort(key=lambda s: s[0], reverse=True)
    return [(used, count, _plan_sizes(chosen, sizes)) for _, used, count, chosen in scored]


def _widths(options: dict, sizes: dict, tied: bool) -> list[tuple]:
    """(hidden, heads, KV heads) candidates: each hidden size with the head count whose
    share of the parent's is nearest the hidden size's (more heads on a tie), among those
    that divide it (the head count times head_dim, where the config derives head_dim)."""
    out = []
    for hidden in options["hidden_size"]:
        pairs = options.get("heads", [(None, None)])
        if pairs[0][0] is not None:
            fits = [
                p
                for p in pairs
                if (hidden == p[0] * sizes["head_dim"] if tied else hidden % p[0] == 0)
            ]
            share = hidden / sizes["hidden_size"]
            pairs = sorted(fits, key=lambda p: (abs(p[0] / sizes["num_heads"] - share), -p[0]))
        if pairs:
            out.append((hidden, *pairs[0]))
    return out


def _plan_sizes(chosen: dict, sizes: dict) -> dict:
    """The sizes to write into the plan: those that differ from the parent's."""
    out = {}
    for k, v in chosen.items():
        parent = sizes.get(k) if k != "num_layers" else sizes.get("num_layers")
        if v is not None and v != parent:
            out[k] = v
    return out


def _parent_sizes(parent: Parent) -> dict:
    state = SurgeryState(parent.graph, parent.analysis)
    return {**state.child_sizes(), "num_layers": len(parent.analysis.layers)}


def _kept(parent: Parent, plan, n: int) -> list[int]:
    """The layers a depth of `n` keeps, as far as they are known before measuring."""
    if isinstance(plan.depth, tuple):
        return list(plan.depth)
    strategy = plan.depth if plan.depth != "influence" else "middle"
    return choose_layers(len(parent.analysis.layers), strategy, n, None)


def _lines(parent: Parent, width: dict, roles: list[str], sizes: dict, active: bool = False):
    """Per layer and outside the layers, the count as a line in each FFN role's width:
    (outside, [per layer: (count at the smallest widths, {role: parameters per unit})]).
    None where the widths are impossible for this parent."""
    low = {r: _step(sizes[r]) for r in roles}
    try:
        base = _counts(parent, {**width, **low}, active)
        slopes = {}
        for r in roles:
            probe = min(2 * low[r], sizes[r])  # a role one step wide has no other width
            wider = {**width, **low, r: probe}
            wider = _counts(parent, wider, active) if probe > low[r] else base
            run = max(probe - low[r], 1)
            slopes[r] = [(w - b) / run for w, b in zip(wider[1], base[1], strict=True)]
    except PlanError:
        return None
    per_layer = [
        (count - sum(slopes[r][i] * low[r] for r in roles), {r: slopes[r][i] for r in roles})
        for i, count in enumerate(base[1])
    ]
    return base[0], per_layer


def _widest_ffn(lines, kept, budget, roles: list[str], sizes: dict, narrowest=False):
    """The widest FFN (every role cut by one share, in its steps) whose child fits:
    (count, {role: width}); None where even the narrowest does not fit. `narrowest`:
    the narrowest instead."""
    outside, per_layer = lines
    fixed = outside + sum(per_layer[i][0] for i in kept)
    if not roles:
        return (round(fixed), {}) if fixed <= budget else None
    lead = max(roles, key=lambda r: sizes[r] // _step(sizes[r]))
    steps = sizes[lead] // _step(sizes[lead])
    best = None
    lo, hi = 1, 1 if narrowest else steps
    while lo <= hi:  # the count grows with the share
        mid = (lo + hi) // 2
        ffn = {
            r: max(_step(sizes[r]), _round(sizes[r] * mid / steps, _step(sizes[r]))) for r in roles
        }
        count = fixed + sum(per_layer[i][1][r] * ffn[r] for i in kept for r in roles)
        if count <= budget:
            best, lo = (round(count), ffn), mid + 1
        else:
            hi = mid - 1
    return best


def _round(value: float, step: int) -> int:
    return int(value // step) * step


def _share(chosen: dict, sizes: dict, layers: int, options: dict) -> float:
    """The product of the kept shares of the sizes the solver chose."""
    shares = [chosen["num_layers"] / layers, chosen["hidden_size"] / sizes["hidden_size"]]
    shares += [chosen[r] / sizes[r] for r in options["ffn"]][:1]
    return math.prod(shares)


def _importance(
    parent: Parent, surgery: Surgery, calibration, progress: bool = False
) -> dict[int, torch.Tensor]:
    """Each scored group's cumulative share of its scores, its best positions first (a
    group keeping k positions keeps share [k - 1]), by the plan's importance method (the
    scores then kept in the parent's measures, so the passes do not measure them again);
    empty where the method gives no scores or cannot run here."""
    from .passes.score import Score
    from .pipeline import fresh_state

    score = next((p for p in surgery.passes if isinstance(p, Score)), None)
    if score is None or score.method not in ("activation", "weight"):
        return {}
    if score.needs_data and not calibration:
        return {}
    if not parent.streamed and any(p.is_meta for p in parent.model.parameters()):
        return {}  # a dry run on the meta device: no weights to score
    state = fresh_state(parent, surgery, calibration, progress)
    score.run(state)
    out = {}
    for g, scores in state.scores.items():
        ranked = torch.sort(scores.float().clamp_min(0), descending=True).values.cumsum(0)
        if ranked[-1] > 0:
            out[g] = ranked / ranked[-1]
    return out


def _kept_importance(
    parent: Parent, chosen: dict, kept: list[int], curves: Mapping, roles: list[str]
) -> float:
    """The product of the kept shares of importance (`_importance`): layers by number, the
    residual streams' scores the hidden size keeps, and (each the mean over the groups of
    the kept layers that the candidate cuts) the neurons' of the first free FFN role
    (`roles`: a dense MLP's, or the routed experts') and the heads' that their widths
    keep. A size the candidate does not cut counts 1."""
    a = parent.analysis
    keep = resolve_target(a, {k: v for k, v in chosen.items() if k != "num_layers"})

    def share(groups) -> float:
        cut = [g for g in dict.fromkeys(groups) if g in keep and keep[g] < a.atoms.size[g]]
        if not cut:
            return 1.0
        return sum(_share_of(a, g, keep[g], curves) for g in cut) / len(cut)

    layers = [a.layers[i] for i in dict.fromkeys(kept)]
    role = roles[0] if roles else None
    ffn = [g for layer in layers for g in layer.ffn if layer.ffn_role.get(g) == role]
    heads = [g for layer in layers for g in layer.heads]
    stream = share(a.streams or [a.residual])
    return len(set(kept)) / len(a.layers) * stream * share(ffn) * share(heads)


def _share_of(a, group: int, k: int, curves: Mapping) -> float:
    """The share of `group`'s scores its best `k` positions hold (of its size, unscored)."""
    if group in curves:
        return float(curves[group][k - 1]) if k > 0 else 0.0
    return k / a.atoms.size[group]


def _counts(
    parent: Parent, width: Mapping[str, int], active: bool = False
) -> tuple[float, list[float]]:
    """The child's parameters outside the layers and in each parent layer, at `width`
    (`active`: routed experts counted at the share a token uses, `_top_k`)."""
    keep = resolve_target(parent.analysis, width)
    top_k = _top_k(parent.analysis, width) if active else None
    return _counted(parent, keep, top_k)


def _top_k(a, width: Mapping[str, int]) -> dict[int, int]:
    """Per layer with routed experts, the experts a token is routed to: the plan's
    `num_experts_per_tok`, else the parent's top-k."""
    out = {}
    for i, layer in enumerate(a.layers):
        picks = [k for _, k, whole in a.top_k(layer) if whole]
        if layer.experts and picks:
            out[i] = width.get("num_experts_per_tok") or picks[0]
    return out


def _counted(
    parent: Parent, keep: Mapping[int, int], top_k: Mapping[int, int] | None = None
) -> tuple[float, list[float]]:
    """The same, where each group keeps `keep[group]` positions (the others all); with
    `top_k` (per layer), a layer's routed experts' FFN weights count at top-k / the
    experts it keeps (what one token uses)."""
    a = parent.analysis
    owner = {}
    for i, layer in enumerate(a.layers):
        for part in layer.parts or [layer.name]:
            owner[part + "."] = i
    outside, per_layer = 0.0, [0.0] * len(a.layers)
    for entry in parent.graph.params:
        if entry.kind != "parameter":
            continue
        axes = a.dims.tensors.get(entry.name)
        n = math.prod(a.atoms.new_size(x, keep) for x in axes) if axes else entry.numel
        layer = next((i for p, i in owner.items() if entry.name.startswith(p)), None)
        if layer is None:
            outside += n
            continue
        if top_k and layer in top_k and axes and _expert_body(a, a.layers[layer], axes):
            experts = a.layers[layer].experts
            kept = math.prod(keep.get(g, a.atoms.size[g]) for g in experts)
            n *= min(1.0, top_k[layer] / kept)
        per_layer[layer] += n
    return outside, per_layer


def _block_counts(
    parent: Parent, keep: Mapping[int, int], top_k: Mapping[int, int] | None = None
) -> list[dict[str, float]]:
    """Per parent layer, the parameters of its attention and of its MLP block that can be
    dropped (`target.drop_blocks`; the norm before a block is the block's), where each
    group keeps `keep[group]` positions; counted as `_counted` counts them."""
    from .passes.blocks import droppable

    a = parent.analysis
    entries = {e.name: e for e in parent.graph.params if e.kind == "parameter"}
    found = droppable(a, list(range(len(a.layers))))
    out: list[dict[str, float]] = []
    for i, layer in enumerate(a.layers):
        mine: dict[str, float] = {}
        for kind, at in found.items():
            if i not in at:
                continue
            for name in layer.blocks[at[i]].params:
                if name not in entries or _owner(a, name) != i:
                    continue
                axes = a.dims.tensors.get(name)
                n = (
                    math.prod(a.atoms.new_size(x, keep) for x in axes)
                    if axes
                    else entries[name].numel
                )
                if top_k and i in top_k and axes and _expert_body(a, layer, axes):
                    kept = math.prod(keep.get(g, a.atoms.size[g]) for g in layer.experts)
                    n *= min(1.0, top_k[i] / kept)
                mine[kind] = mine.get(kind, 0.0) + n
        out.append(mine)
    return out


def _owner(a, name: str) -> int | None:
    """The layer whose module holds tensor `name` (None: outside the layers)."""
    for i, layer in enumerate(a.layers):
        if any(name.startswith(part + ".") for part in layer.parts or [layer.name]):
            return i
    return None


def _without_blocks(
    parent: Parent, lines, width: dict, roles: list[str], kept, drop: Mapping, cache=None
):
    """`lines` (as `_lines` gives them) with the blocks `drop` removes taken out: listed
    layers' blocks, or for a count those of the kept layers whose block is smallest (the
    child is then at most the count; the measured choice is counted again by `recount`).
    A dropped MLP's layer keeps no FFN width. `cache`: a dict that keeps one width's
    block counts for every depth tried."""
    if not drop:
        return lines
    outside, per_layer = lines
    sizes = _parent_sizes(parent)
    low = {r: _step(sizes[r]) for r in roles}
    cache = {} if cache is None else cache
    key = (tuple(sorted(width.items())), tuple(sorted(low.items())))
    if key not in cache:
        cache.clear()
        cache[key] = _block_counts(parent, resolve_target(parent.analysis, {**width, **low}))
    blocks = cache[key]
    per_layer = [(base, dict(slopes)) for base, slopes in per_layer]
    for kind, asked in drop.items():
        found = [i for i in kept if kind in blocks[i]]  # kept layers with such a block
        if isinstance(asked, (list, tuple)):
            layers = [i for i in asked if i in found]
        else:
            layers = sorted(found, key=lambda i: blocks[i][kind])[:asked]
        for i in layers:
            base, slopes = per_layer[i]
            fixed = blocks[i].get(kind, 0)
            if kind == "mlp":  # its count at the smallest widths, less what grows with them
                fixed -= sum(slopes.get(r, 0) * low[r] for r in roles)
                slopes = dict.fromkeys(slopes, 0.0)
            per_layer[i] = (base - fixed, slopes)
    return outside, per_layer


def _expert_body(a, layer, axes) -> bool:
    """Whether a tensor is routed experts' FFN weights: an axis over the experts and one
    over their FFN neurons (the router, over the experts and the hidden size, is run for
    every token)."""
    leaves = {g for x in axes for g in a.atoms.leaves(x)}
    return bool(leaves & set(layer.experts)) and bool(leaves & set(layer.ffn))


def recount(parent: Parent, surgery: Surgery, state: SurgeryState) -> Surgery:
    """The surgery's budget record counted again from what the passes decided (the
    layers a measured depth kept, the widths `per_layer` dealt): what the child uses."""
    budget = dict(surgery.budget)
    if "latency" in budget:  # measured on the solved sizes, which the passes keep
        return surgery
    asked = {k: v for k, v in budget.items() if k in BUDGETS}
    limit = Limit.of(asked, _parent_sizes(parent).get("head_dim") or 0)
    keep = {g: len(chosen) for g, chosen in state.select.items()}
    top_k = None
    if limit.active:
        top_k = {i: state.top_k or k for i, k in _top_k(parent.analysis, {}).items()}
    outside, per_layer = _counted(parent, {**keep, **state.resized}, top_k)
    kept = state.kept_layers()
    blocks = _block_counts(parent, {**keep, **state.resized}, top_k)
    gone = sum(blocks[i].get(kind, 0) for i, kinds in state.dropped.items() for kind in kinds)
    count = round(outside + sum(per_layer[i] for i in kept) - gone)
    sizes = {**_parent_sizes(parent), **{k: v for k, v in surgery.plan.target.items()}}
    attention = tuple(i for i, kinds in state.dropped.items() if "attention" in kinds)
    used = limit.used(count, _cache(parent, kept, sizes, {"attention": attention}))
    budget.update({_counted_key(limit): count, "share": used / limit.value})
    if limit.key == "memory":
        budget["child_bytes"] = used
    return replace(surgery, budget=budget)


def _smallest(parent: Parent, plan, limit: Limit) -> int:
    """What the smallest child the plan allows uses of the budget (for the error)."""
    sizes = _parent_sizes(parent)
    options = _options(parent, plan, sizes)
    tied = _tied_hidden(parent, sizes) and "hidden_size" not in plan.target
    used = []
    for hidden, heads, kv in _widths(options, sizes, tied)[:1]:
        width = {"hidden_size": hidden, "num_heads": heads, "num_kv_heads": kv}
        width = {k: v for k, v in {**width, **plan.target}.items() if v is not None}
        width.pop("num_layers", None)
        lines = _lines(parent, width, options["ffn"], sizes, limit.active)
        kept = _kept(parent, plan, options["num_layers"][0])
        if lines:
            lines = _without_blocks(parent, lines, width, options["ffn"], kept, plan.drop_blocks)
        found = lines and _widest_ffn(lines, kept, math.inf, options["ffn"], sizes, narrowest=True)
        if found:
            cache = _cache(parent, kept, {**sizes, **width}, plan.drop_blocks)
            used.append(limit.used(found[0], cache))
    return min(used, default=0)


def child_parameters(parent: Parent, sizes: Mapping[str, int], kept: list[int]) -> int:
    """The parameter count of the child with `sizes` (widths) and the parent layers
    `kept`, from the analysis."""
    outside, per_layer = _counts(parent, {k: v for k, v in sizes.items() if k != "num_layers"})
    return round(outside + sum(per_layer[i] for i in kept))
