"""What the rule families share: the registration, the commonest signatures, helpers.

A signature (`_sig_*`) names an op's arguments in torch.fx's positional order; only its
parameters are used (see `registry.py`). Those that one family alone uses live in its
module; the ones here serve several.
"""

from __future__ import annotations

from typing import Any

from torch import fx

from ..context import Context
from ..registry import register_rule

_rule = register_rule  # the built-in rules register the way a user's do


def _dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


# -- signatures shared by families --------------------------------------------------------
def _sig_any(*args, **kwargs): ...
def _sig_unary(input, *rest, **options): ...
def _sig_shaped(input, *size, **options): ...


# -- helpers ------------------------------------------------------------------------------
def _lends_shape(ctx: Context, node: fx.Node, *args: Any) -> None:
    """`args` give `node` only their shape or dtype, none of their values."""
    ctx.dims.lends_shape.update((node, x) for x in args if isinstance(x, fx.Node))


def _carry_other_axes(ctx: Context, x: list[int], outs: list, dim: int) -> None:
    """Every axis of `x` but `dim` is the same axis of each output (which may lack `dim`)."""
    for o in outs:
        rest = [ax for i, ax in enumerate(o) if i != dim or len(o) != len(x)]
        others = [ax for i, ax in enumerate(x) if i != dim]
        for ax, b in zip(others, rest, strict=False):
            ctx.A.unify(ax, b)


def _filled(ctx: Context, x: Any) -> bool:
    """Whether `x` holds one value everywhere (`zeros_like(h, dtype=int)`: token
    types all zero): any of its positions reads the same."""
    return isinstance(x, fx.Node) and x in ctx.dims.filled


def _slice_axis(ctx: Context, node: fx.Node, axis, out_axis, start, end, step, where) -> None:
    """`where` = (path of the start argument, kind): "slice" (start, end follow at the
    next positions), "narrow" (start, length) or "index" (a Python slice object)."""
    size = ctx.size(axis)
    if not all(isinstance(v, int) or v is None for v in (start, end, step)):
        ctx.A.pin(axis, f"sliced by {node.name} at a computed position")
        ctx.A.pin(out_axis, f"sliced by {node.name}")
        return
    open_end = end is None or end > size  # `x[1::2]`: no end written that states a size
    start = 0 if start is None else (start + size if start < 0 else min(start, size))
    end = size if end is None else (end + size if end < 0 else min(end, size))
    if step != 1:
        _strided(ctx, node, axis, out_axis, start, step if open_end else None)
        return
    if start == 0 and end == size:
        ctx.A.unify(axis, out_axis)
        return
    ctx.dims.splits.append((axis, node))
    parts = []
    if start > 0:
        parts.append(ctx.A.new(start))
    parts.append(out_axis)
    if end < size:
        parts.append(ctx.A.new(size - end))
    whole = ctx.A.new(size)
    ctx.A.refine(whole, "cat", tuple(parts))
    ctx.A.unify(axis, whole)
    # The offsets, as sums of the segments before them (-1: no segment before).
    before = parts[0] if start > 0 else -1
    ctx.literal(node, where[0], before, out_axis, kind=where[1], bounded=end < size)


def _strided(ctx: Context, node: fx.Node, axis, out_axis, start, step) -> None:
    """`x[..., j::s]` over an axis of `m * s` positions, `j < s`, to its end: the axis is
    (m outer x s inner) and the slice takes inner position j of every outer one (the
    gate of a gate/up projection stored interleaved), so its output is the outer atom;
    the inner one is pinned. Any other step pins both axes."""
    size = ctx.size(axis)
    if step is None or step < 1 or size % step or not 0 <= start < step:
        ctx.A.pin(axis, f"strided slice {node.name}")
        ctx.A.pin(out_axis, f"strided slice {node.name}")
        return
    outer, inner, whole = ctx.A.new(size // step), ctx.A.new(step), ctx.A.new(size)
    ctx.A.refine(whole, "prod", (outer, inner))
    ctx.A.unify(axis, whole)
    ctx.A.unify(out_axis, outer)
    ctx.A.pin(inner, f"strided slice {node.name} picks positions in it")
