"""Dropped blocks (`target.drop_blocks`): a layer's attention or MLP residual block
removed, `x + f(x)` becoming `x`, in the layers the child keeps (the depth pass decides
them, after the layers).

A block's kind is read from the analysis, not from names: a block whose tensors carry the
layer's attention heads is its attention; one whose tensors carry its FFN neurons or
routed experts (and no heads) is its MLP. A block can be dropped alone where removing its
addition leaves the rest of the layer as it was: its branch reads the stream value it adds
to (not an earlier one, as a parallel block's does), what it adds to is what the next
block of the layer reads or what the layer leaves (no norm after the addition, as in a
post-norm layer), and nothing outside the block reads what it computes (a norm that a
parallel attention and MLP share, a position bias later layers add)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..analysis.registry import rule_for
from ..analysis.residual import Block
from ..errors import PlanError

__all__ = ["COUNTS", "KINDS", "MEASURES", "block_kind", "choose_blocks", "droppable", "separable"]

KINDS = ("attention", "mlp")  # the keys of `target.drop_blocks`
MEASURES = ("ratio", "middle")  # measured ||f(x)|| / ||x + f(x)||, or nearest the middle
# how many blocks of each kind go, or which parent layers lose theirs (the plan's schema)
COUNTS = {
    k: {
        "oneOf": [
            {"type": "integer", "minimum": 0},
            {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
        ]
    }
    for k in KINDS
}


def block_kind(analysis, layer, block: Block) -> str | None:
    """ "attention", "mlp" or None (neither: a block of some other kind)."""
    heads = set(layer.heads)
    ffn = set(layer.ffn) | set(layer.experts)
    atoms, tensors = analysis.atoms, analysis.dims.tensors
    leaves = {g for p in block.params for x in tensors.get(p, ()) for g in atoms.leaves(x)}
    if leaves & heads:
        return "attention"
    if leaves & ffn:
        return "mlp"
    return None


def separable(layer, k: int) -> str:
    """Why block `k` of `layer` cannot be dropped alone ("" where it can)."""
    b = layer.blocks[k]
    if not any(b.skip in n.all_input_nodes for n in b.nodes):
        return "its branch reads an earlier stream value than the one it adds to (a parallel block)"
    following = layer.blocks[k + 1].skip if k + 1 < len(layer.blocks) else layer.output
    if _unchanged(following) is not b.add:
        return "a norm or another op follows its addition (a post-norm layer)"
    for n in b.nodes:
        if any(u not in b.nodes and u is not b.add and _computes(u) for u in n.users):
            return "values it computes are read outside it"
    return ""


def _unchanged(node):
    """The value behind ops that keep it (casts, copies: `same_values` in the op table) of
    one input and the same shape."""
    while node.op == "call_function" and len(node.all_input_nodes) == 1:
        rule = rule_for(node)
        source = node.all_input_nodes[0]
        if rule is None or not rule.same_values or _shape(source) != _shape(node):
            break
        node = source
    return node


def _shape(node) -> tuple | None:
    val = node.meta.get("val")
    return tuple(val.shape) if hasattr(val, "shape") else None


def _computes(node) -> bool:
    """Whether a node computes a tensor (not the output, not a runtime check)."""
    return node.op == "call_function" and isinstance(node.meta.get("val"), torch.Tensor)


def droppable(analysis, layers: list[int]) -> dict[str, dict[int, int]]:
    """Per kind, the layers among `layers` (parent indices) with a block of that kind that
    can be dropped alone: layer -> the block's index in the layer."""
    out: dict[str, dict[int, int]] = {kind: {} for kind in KINDS}
    for i in layers:
        layer = analysis.layers[i]
        for k, block in enumerate(layer.blocks):
            kind = block_kind(analysis, layer, block)
            if kind is None or i in out[kind] or separable(layer, k):
                continue
            out[kind][i] = k
    return out


def _why_not(analysis, layers: list[int], kind: str) -> str:
    """The first reason a block of `kind` in `layers` cannot be dropped alone."""
    for i in layers:
        layer = analysis.layers[i]
        for k, block in enumerate(layer.blocks):
            if block_kind(analysis, layer, block) == kind and (why := separable(layer, k)):
                return f"; {layer.name}'s {kind} block: {why}"
    return f"; no {kind} block was found in its layers"


def choose_blocks(
    analysis,
    kept: list[int],
    asked: Mapping[str, int | tuple[int, ...]],
    ratios: Mapping[tuple[int, int], float] | None = None,
) -> dict[int, tuple[str, ...]]:
    """The blocks the child drops: parent layer -> the kinds of its dropped blocks.
    `asked`: per kind, a count (the blocks with the smallest `ratios`, (layer, block) ->
    ||f(x)|| / ||x + f(x)||; without ratios, those of the layers nearest the middle of the
    kept ones, the later first on a tie) or the parent layers whose block goes.
    `PlanError` where the model has fewer such blocks than asked."""
    if len(set(kept)) != len(kept):
        raise PlanError("target.drop_blocks cannot be combined with duplicated layers (depth)")
    found = droppable(analysis, kept)
    out: dict[int, list[str]] = {}
    for kind, want in asked.items():
        if isinstance(want, (list, tuple)):  # the long form's lists stay lists
            for i in want:
                if i not in found[kind]:
                    where = (
                        f"the parent has {len(analysis.layers)} layers"
                        if i >= len(analysis.layers)
                        else f"layer {i} is not kept"
                        if i not in kept
                        else _why_not(analysis, [i], kind)[2:]
                    )
                    raise PlanError(
                        f"target.drop_blocks.{kind} lists layer {i}, whose {kind} block "
                        f"cannot be dropped: {where}"
                    )
            chosen = list(want)
        else:
            candidates = list(found[kind])
            if want > len(candidates):
                why = _why_not(analysis, kept, kind) if len(candidates) < len(kept) else ""
                raise PlanError(
                    f"target.drop_blocks.{kind} = {want}: this model has {len(candidates)} "
                    f"{kind} block(s) that can be dropped alone in the layers kept "
                    f"({len(kept)}){why}"
                )
            if ratios is not None:
                order = sorted(candidates, key=lambda i: (ratios[i, found[kind][i]], i))
            else:
                mid = [kept.index(i) for i in candidates]
                n = len(kept) - 1
                order = [
                    i
                    for _, i in sorted(
                        zip(mid, candidates, strict=True), key=lambda p: (abs(2 * p[0] - n), -p[0])
                    )
                ]
            chosen = order[:want]
        for i in chosen:
            out.setdefault(i, []).append(kind)
    return {i: tuple(k for k in KINDS if k in out[i]) for i in sorted(out)}
