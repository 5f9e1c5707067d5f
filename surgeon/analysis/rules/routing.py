"""Ordering along an axis, a router's choice among experts: `sort`, `topk`.

The ordered axis of the output is pinned (its positions are ranks); the other axes carry
over. `topk`'s indices are *positions* along the input's axis (`Dims.positions`): indexing
a tensor by them (`experts.weight[expert_ids]`, `indexing.py`) makes its indexed axis that
axis (the experts, which stay free); any other reader pins it.
"""

from __future__ import annotations

from ..context import Context
from ..registry import Args
from ._common import _carry_other_axes, _dim, _rule


# -- signatures ---------------------------------------------------------------------------
def _sig_sorted(input, dim=-1, *rest, **options): ...
def _sig_topk(input, k, dim=-1, *rest, **options): ...


def _along(ctx: Context, a: Args, dim: int, why: str) -> None:
    """Outputs of `input`'s shape (or tuples of them) whose positions along `dim` depend
    on the values: that axis is pinned, the others carry over."""
    x = ctx.axes(a.input)
    if x is None:
        return
    outs = a.out if a.out and not isinstance(a.out[0], int) else [a.out]
    dim = _dim(dim, len(x))
    ctx.A.pin(x[dim], why)
    for o in outs:
        if len(o) == len(x):
            ctx.A.pin(o[dim], why)
            _carry_other_axes(ctx, x, [o], dim)


@_rule("sort", "argsort", "kthvalue", "median", "mode", "msort", signature=_sig_sorted)
def sort(ctx: Context, a: Args) -> None:
    """Values ordered (or picked) along `dim`: that axis is an order, the others carry."""
    dim = a.dim if isinstance(a.dim, int) else -1
    _along(ctx, a, dim, f"ordered by {a.node.name}")


@_rule("topk", signature=_sig_topk)
def topk(ctx: Context, a: Args) -> None:
    """The `k` largest along `dim` (a router's choice of experts), and their indices:
    positions along `dim` (`Dims.positions`). The output's `dim` is an order (pinned);
    the input's is free as long as whatever reads the indices follows them."""
    x = ctx.axes(a.input)
    if x is None or not isinstance(a.out, list) or len(a.out) != 2:
        return _along(ctx, a, a.dim, f"ordered by {a.node.name}")
    dim = _dim(a.dim, len(x))
    for o in a.out:
        ctx.A.pin(o[dim], f"ordered by {a.node.name}")
        _carry_other_axes(ctx, x, [o], dim)
    ctx.dims.positions[(a.node, 1)] = x[dim]
