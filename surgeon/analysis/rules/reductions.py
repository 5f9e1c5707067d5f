"""Reductions: the axes a reduction keeps carry over, the reduced ones disappear.

`mean`, `sum`, `var`, `norm`, ... over `dim` (every axis when none), and `max`/`min`,
which reduce along a `dim` or compare two tensors element-wise.
"""

from __future__ import annotations

from torch import fx

from ..context import Context
from ..registry import Args
from ._common import _dim, _rule
from .pointwise import elementwise


# -- signatures ---------------------------------------------------------------------------
def _sig_reduce(input, dim=None, *rest, **options): ...
def _sig_norm(input, p="fro", dim=None, *rest, **options): ...


# -- reductions -------------------------------------------------------------------------
_REDUCTIONS = ("mean", "sum", "amax", "amin", "var", "std", "prod", "all", "any")


@_rule(*_REDUCTIONS, "logsumexp", "var_mean", "std_mean", signature=_sig_reduce)
@_rule("norm", "linalg_vector_norm", signature=_sig_norm, aliases={"ord": "p"})
def reduction(ctx: Context, a: Args) -> None:
    """Order-free reductions over `dim` (all axes when None): the kept axes carry over,
    the reduced ones disappear (or stay as size 1 with keepdim)."""
    x = ctx.axes(a.input)
    if x is None:
        return
    outs = a.out if a.out and not isinstance(a.out[0], int) else [a.out]  # (values, indices)
    dims = a.dim
    if isinstance(dims, int):
        dims = [dims]
    if not dims or isinstance(dims, fx.Node):  # full reduction
        dims = list(range(len(x))) if not outs[0] else []
    reduced = {_dim(d, len(x)) for d in dims}
    for o in outs:
        kept = [ax for i, ax in enumerate(x) if i not in reduced]
        if len(o) == len(x):  # keepdim
            kept = [ax if i not in reduced else None for i, ax in enumerate(x)]
        for ax, b in zip(kept, o, strict=False):
            if ax is not None:
                ctx.A.unify(ax, b)


@_rule("max", "min", signature=_sig_reduce, aliases={"other": "dim"})
def extremum(ctx: Context, a: Args) -> None:
    """`max(x, dim)` reduces, and its indices are positions along `dim` (a router that
    sends each token to its best expert, `Dims.positions`); `max(x, y)` with a tensor
    `y` is element-wise."""
    if ctx.axes(a.dim) is not None:
        return elementwise(ctx, a)
    x = ctx.axes(a.input)
    if isinstance(a.dim, int) and x and a.out and not isinstance(a.out[0], int):
        ctx.dims.positions[(a.node, 1)] = x[_dim(a.dim, len(x))]
    return reduction(ctx, a)


@_rule("argmax", "argmin", signature=_sig_reduce)
def arg_extremum(ctx: Context, a: Args) -> None:
    """The position of the largest (smallest) value along `dim`: positions along it
    (`Dims.positions`), the other axes carry over. Over every axis: data dependent."""
    x = ctx.axes(a.input)
    if x is None or not isinstance(a.dim, int):
        for ax in x or ():
            ctx.A.pin(ax, f"indexed by {a.node.name}")
        return
    dim = _dim(a.dim, len(x))
    kept = [ax if i != dim else None for i, ax in enumerate(x)]
    if len(a.out) != len(x):
        kept = [ax for ax in kept if ax is not None]
    for ax, b in zip(kept, a.out, strict=True):
        if ax is not None:
            ctx.A.unify(ax, b)
    ctx.dims.positions[a.node] = x[dim]
