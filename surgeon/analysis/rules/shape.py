"""Shape ops: the same elements, axes regrouped, reordered, cut, joined or repeated.

Views (`view`, `flatten`, `unsqueeze`: one product of atoms, the sizes written in the
call are literals), broadcasts (`expand`), reorders (`transpose`, `permute`, `movedim`),
cuts (`split`, `chunk`, `glu`: an axis refined as a concatenation), joins (`cat`,
`stack`), slices (`slice`, `narrow`, `select`), `repeat`, `repeat_interleave` and `pad`.
"""

from __future__ import annotations

from torch import fx

from ..context import Context
from ..registry import Args
from ._common import (
    _carry_other_axes,
    _dim,
    _filled,
    _lends_shape,
    _rule,
    _sig_shaped,
    _sig_unary,
    _slice_axis,
)


# -- signatures ---------------------------------------------------------------------------
def _sig_like(input, other=None, **options): ...
def _sig_transpose(input, dim0, dim1): ...
def _sig_permute(input, *dims): ...
def _sig_movedim(input, source, destination): ...
def _sig_split(input, sizes, dim=0): ...
def _sig_cut(input, sections, dim=0): ...
def _sig_unbind(input, dim=0): ...
def _sig_cat(tensors, dim=0): ...
def _sig_slice(input, dim=0, start=None, end=None, step=1): ...
def _sig_narrow(input, dim, start, length): ...
def _sig_select(input, dim, index): ...
def _sig_stack(tensors, dim=0): ...
def _sig_repeat_interleave(input=None, repeats=None, dim=None, output_size=None, **options): ...
def _sig_pad(input, pad, *rest, **options): ...


# -- views and broadcasts -----------------------------------------------------------------
@_rule(
    "view",
    "reshape",
    "_unsafe_view",
    signature=_sig_shaped,
    aliases={"shape": "size"},
    same_values=True,
)
def view(ctx: Context, a: Args) -> None:
    """The same elements in `size`: the two axis lists are one product of atoms, and each
    size written in the call (an int, or one computed in a torch.fx graph) is a literal."""
    ctx.A.unify_seq(list(ctx.axes(a.input)), list(a.out))
    for i, s in enumerate(a.size):
        if isinstance(s, (int, fx.Node)) and s != -1 and i < len(a.out):
            ctx.literal(a.node, a.path("size", i), a.out[i])


def _sig_unflatten(input, dim, sizes): ...


@_rule("unflatten", signature=_sig_unflatten)
def unflatten(ctx: Context, a: Args) -> None:
    """Axis `dim` split into `sizes`: one product of atoms, like `view`, and each size
    written in the call is a literal (`multi_head_attention_forward`'s `(2, E)`)."""
    ctx.A.unify_seq(list(ctx.axes(a.input)), list(a.out))
    first = a.dim % len(ctx.axes(a.input))
    for i, s in enumerate(a.sizes):
        if isinstance(s, (int, fx.Node)) and s != -1:
            ctx.literal(a.node, a.path("sizes", i), a.out[first + i])


@_rule("flatten", "unsqueeze", "squeeze", signature=_sig_unary, same_values=True)
@_rule("view_as", "reshape_as", "expand_as_view", signature=_sig_unary)
def regroup(ctx: Context, a: Args) -> None:
    """The same elements, axes merged, split or of size 1 added or removed, by sizes that
    come from elsewhere: the two axis lists are one product of atoms."""
    ctx.A.unify_seq(list(ctx.axes(a.input)), list(a.out))
    _lends_shape(ctx, a.node, *a.rest)


def _broadcast_axes(ctx: Context, a: Args) -> None:
    """Existing axes carry over; size-1 axes grown become new atoms (e.g. the query heads
    that share one KV group), recorded as broadcasts."""
    x, out = ctx.axes(a.input), a.out
    ctx.broadcast(out, x)
    grown = [o for o, ax in zip(reversed(out), reversed(x), strict=False) if ctx.size(ax) == 1]
    grown += out[: len(out) - len(x)]
    ctx.dims.broadcasts += [(g, a.node) for g in grown if ctx.size(g) > 1]


@_rule("expand", signature=_sig_shaped, same_values=True)
def expand(ctx: Context, a: Args) -> None:
    """Broadcast to `size`; its entries other than -1 are literals."""
    _broadcast_axes(ctx, a)
    for i, s in enumerate(a.size):
        if isinstance(s, (int, fx.Node)) and s != -1:
            ctx.literal(a.node, a.path("size", i), a.out[i])


@_rule("expand_as", "broadcast_to", signature=_sig_like)
def expand_like(ctx: Context, a: Args) -> None:
    """Broadcast to the shape of another tensor (or a size read from one)."""
    _broadcast_axes(ctx, a)
    _lends_shape(ctx, a.node, a.other)


# -- reorders ------------------------------------------------------------------------------
def _reorder(ctx: Context, a: Args, order: list[int]) -> None:
    """Output axis i is input axis order[i]."""
    x = ctx.axes(a.input)
    for i, src in enumerate(order):
        ctx.A.unify(a.out[i], x[src])


@_rule(
    "transpose",
    "swapaxes",
    "swapdims",
    signature=_sig_transpose,
    aliases={"axis0": "dim0", "axis1": "dim1"},
)
def transpose(ctx: Context, a: Args) -> None:
    """Axes `dim0` and `dim1` trade places."""
    n = len(ctx.axes(a.input))
    order = list(range(n))
    d0, d1 = _dim(a.dim0, n), _dim(a.dim1, n)
    order[d0], order[d1] = order[d1], order[d0]
    _reorder(ctx, a, order)


@_rule("t", signature=_sig_unary)
def t(ctx: Context, a: Args) -> None:
    """The first two axes trade places (a 0-d or 1-d tensor is unchanged)."""
    n = len(ctx.axes(a.input))
    _reorder(ctx, a, [1, 0] if n == 2 else list(range(n)))


@_rule("mT", signature=_sig_unary)
def matrix_transpose(ctx: Context, a: Args) -> None:
    """The last two axes trade places."""
    n = len(ctx.axes(a.input))
    _reorder(ctx, a, [*range(n - 2), n - 1, n - 2])


@_rule("numpy_T", signature=_sig_unary)
def reverse_axes(ctx: Context, a: Args) -> None:
    """All axes in reverse order (`x.T`)."""
    _reorder(ctx, a, list(range(len(ctx.axes(a.input))))[::-1])


@_rule("permute", signature=_sig_permute)
def permute(ctx: Context, a: Args) -> None:
    """Output axis i is input axis dims[i]."""
    n = len(ctx.axes(a.input))
    _reorder(ctx, a, [_dim(d, n) for d in a.dims])


@_rule("movedim", "moveaxis", signature=_sig_movedim)
def movedim(ctx: Context, a: Args) -> None:
    """Axes `source` move to `destination`; the others keep their order."""
    n = len(ctx.axes(a.input))
    src = [a.source] if isinstance(a.source, int) else list(a.source)
    dst = [a.destination] if isinstance(a.destination, int) else list(a.destination)
    order: list[int | None] = [None] * n
    for s, d in zip(src, dst, strict=True):
        order[_dim(d, n)] = _dim(s, n)
    moved = {_dim(s, n) for s in src}
    rest = iter(i for i in range(n) if i not in moved)
    _reorder(ctx, a, [i if i is not None else next(rest) for i in order])


# -- cuts and joins ------------------------------------------------------------------------
def _cut(ctx: Context, a: Args, dim: int) -> list[int]:
    """`input` cut along `dim` into the outputs: the axis is refined as the concatenation
    of their axes `dim` (returned), and every other axis carries over."""
    x = ctx.axes(a.input)
    n = len(x)
    whole = ctx.A.new(ctx.size(x[dim]))
    segs = [o[dim] if len(o) == n else ctx.A.new(1) for o in a.out]
    ctx.A.refine(whole, "cat", tuple(segs))
    ctx.A.unify(x[dim], whole)
    ctx.dims.splits.append((whole, a.node))
    _carry_other_axes(ctx, x, a.out, dim)
    return segs


def _sig_glu(input, dim=-1): ...


@_rule("glu", signature=_sig_glu)
def glu(ctx: Context, a: Args) -> None:
    """`a * sigmoid(b)` for the two halves of `dim`: the axis is the concatenation of two
    halves that line up position by position with the output's (a fused gate|up)."""
    x = ctx.axes(a.input)
    dim = _dim(a.dim, len(x))
    whole, half = ctx.A.new(ctx.size(x[dim])), a.out[dim]
    ctx.A.refine(whole, "cat", (ctx.A.new(ctx.size(half)), ctx.A.new(ctx.size(half))))
    ctx.A.unify(x[dim], whole)
    for part in ctx.A.parts(whole).parts:
        ctx.A.unify(part, half)
    ctx.dims.splits.append((whole, a.node))
    _carry_other_axes(ctx, x, [a.out], dim)


@_rule(
    "split",
    "split_with_sizes",
    signature=_sig_split,
    aliases={"split_size": "sizes", "split_sizes": "sizes", "split_size_or_sections": "sizes"},
)
def split(ctx: Context, a: Args) -> None:
    """Cut `dim` into pieces of `sizes` (one int: all but the last of that size); the
    sizes written in the call are literals of the pieces."""
    segs = _cut(ctx, a, _dim(a.dim, len(ctx.axes(a.input))))
    if isinstance(a.sizes, int):
        ctx.literal(a.node, a.path("sizes"), *segs, kind="split")
    elif isinstance(a.sizes, (list, tuple)):
        for i, s in enumerate(a.sizes):
            if isinstance(s, int):
                ctx.literal(a.node, a.path("sizes", i), segs[i])


@_rule(
    "chunk",
    "tensor_split",
    signature=_sig_cut,
    aliases={
        "chunks": "sections",
        "indices": "sections",
        "indices_or_sections": "sections",
        "tensor_indices_or_sections": "sections",
    },
)
def chunk(ctx: Context, a: Args) -> None:
    """Cut `dim` into a number of pieces (or at indices) that follow from its size."""
    _cut(ctx, a, _dim(a.dim, len(ctx.axes(a.input))))


@_rule("unbind", signature=_sig_unbind)
def unbind(ctx: Context, a: Args) -> None:
    """One output per position along `dim`, which each output drops: `dim` is an index."""
    x = ctx.axes(a.input)
    dim = _dim(a.dim, len(x))
    ctx.A.pin(x[dim], f"unbound by {a.node.name}")
    _carry_other_axes(ctx, x, a.out, dim)


@_rule("view_as_complex", signature=_sig_unary)
def view_as_complex(ctx: Context, a: Args) -> None:
    """The last axis, a (real, imaginary) pair, becomes one complex number."""
    x = ctx.axes(a.input)
    ctx.A.pin(x[-1], f"real and imaginary parts in {a.node.name}")
    for ax, b in zip(x[:-1], a.out, strict=True):
        ctx.A.unify(ax, b)


@_rule("view_as_real", signature=_sig_unary)
def view_as_real(ctx: Context, a: Args) -> None:
    """Each complex number becomes a (real, imaginary) pair on a new last axis."""
    ctx.A.pin(a.out[-1], f"real and imaginary parts in {a.node.name}")
    for ax, b in zip(ctx.axes(a.input), a.out[:-1], strict=True):
        ctx.A.unify(ax, b)


@_rule("cat", "concat", "concatenate", signature=_sig_cat, aliases={"axis": "dim"})
def cat(ctx: Context, a: Args) -> None:
    """Join along `dim`: the output axis is refined as the concatenation of the inputs'."""
    if isinstance(a.tensors, fx.Node):  # torch.fx: a list made by another node (split()[:2])
        tensors = list(ctx.dims.out[a.tensors])
    else:
        tensors = [ctx.axes(t) for t in a.tensors]
    out = a.out
    n = len(out)
    dim = _dim(a.dim, n)
    tensors = [t for t in tensors if t is not None and len(t) == n]
    whole = ctx.A.new(ctx.size(out[dim]))
    ctx.A.refine(whole, "cat", tuple(t[dim] for t in tensors))
    ctx.A.unify(out[dim], whole)
    for t in tensors:
        for i in range(n):
            if i != dim:
                ctx.A.unify(out[i], t[i])


# -- slices ---------------------------------------------------------------------------------
@_rule("slice", signature=_sig_slice)
def slice_(ctx: Context, a: Args) -> None:
    """Positions `start:end:step` of `dim`: refined as before | kept | after."""
    x = ctx.axes(a.input)
    dim = _dim(a.dim, len(x))
    _carry_other_axes(ctx, x, [a.out], dim)
    where = (a.path("start"), "slice")
    _slice_axis(ctx, a.node, x[dim], a.out[dim], a.start, a.end, a.step, where)


@_rule("narrow", signature=_sig_narrow)
def narrow(ctx: Context, a: Args) -> None:
    """`length` positions of `dim` from `start`: refined as before | kept | after."""
    x = ctx.axes(a.input)
    dim = _dim(a.dim, len(x))
    _carry_other_axes(ctx, x, [a.out], dim)
    start, length = a.start, a.length
    if not (isinstance(start, int) and isinstance(length, int)):
        ctx.A.pin(x[dim], f"sliced by {a.node.name} at a computed position")
        ctx.A.pin(a.out[dim], f"sliced by {a.node.name}")
        return
    start = start + ctx.size(x[dim]) if start < 0 else start
    where = (a.path("start"), "narrow")
    _slice_axis(ctx, a.node, x[dim], a.out[dim], start, start + length, 1, where)


@_rule("select", signature=_sig_select)
def select(ctx: Context, a: Args) -> None:
    """One position `index` of `dim`: that axis is an index and disappears."""
    x = ctx.axes(a.input)
    dim = _dim(a.dim, len(x))
    if not _filled(ctx, a.input):  # every position of a filled tensor is the same
        ctx.A.pin(x[dim], f"one position taken by {a.node.name}")
        if isinstance(a.index, int):
            ctx.dims.picks.append((a.node, x[dim], a.index, a.path("index")))
    for ax, b in zip([ax for i, ax in enumerate(x) if i != dim], a.out, strict=True):
        ctx.A.unify(ax, b)


# -- stacking, repeating, padding ----------------------------------------------------------
@_rule("stack", signature=_sig_stack, aliases={"axis": "dim"})
def stack(ctx: Context, a: Args) -> None:
    """Join along a new axis `dim`: it indexes the inputs (pinned); every other output axis
    is each input's."""
    out = a.out
    dim = _dim(a.dim, len(out))
    ctx.A.pin(out[dim], f"stacked by {a.node.name}")
    tensors = a.tensors if isinstance(a.tensors, (list, tuple)) else []
    for t in tensors:
        x = ctx.axes(t)
        if x is not None and len(x) == len(out) - 1:
            for ax, o in zip(x, [o for i, o in enumerate(out) if i != dim], strict=True):
                ctx.A.unify(ax, o)


@_rule("repeat_interleave", signature=_sig_repeat_interleave)
def repeat_interleave(ctx: Context, a: Args) -> None:
    """Each position of `dim` repeated `repeats` times in a row: that output axis is the
    input's (outer) times a broadcast copy axis (inner), as `unsqueeze(dim + 1).expand()
    .flatten(dim, dim + 1)` would be; repeats given as a tensor, or no `dim`, pin."""
    x, out = ctx.axes(a.input), a.out
    if x is None or not isinstance(a.repeats, int) or not isinstance(a.dim, int):
        ctx.pin_all([x, out], f"repeated by {a.node.name}")
        return
    dim = _dim(a.dim, len(x))
    _carry_other_axes(ctx, x, [out], dim)
    if a.repeats == 1:
        ctx.A.unify(x[dim], out[dim])
        return
    copies = ctx.A.new(a.repeats)
    ctx.A.unify_seq([out[dim]], [x[dim], copies])
    ctx.dims.broadcasts.append((copies, a.node))
    ctx.literal(a.node, a.path("repeats"), copies)  # a cut count of copies rewrites it
    if isinstance(a.output_size, int):
        ctx.literal(a.node, a.path("output_size"), out[dim])


@_rule("repeat", "tile", signature=_sig_shaped, aliases={"repeats": "size", "dims": "size"})
def repeat(ctx: Context, a: Args) -> None:
    """The input tiled `size[i]` times along axis i (leading entries add axes): each output
    axis is a broadcast copy axis (outer) times the input's (inner)."""
    x, out = ctx.axes(a.input), a.out
    sizes = list(a.size)
    if x is None or not all(isinstance(s, int) for s in sizes) or len(sizes) != len(out):
        ctx.pin_all([x, out], f"repeated by {a.node.name}")
        return
    extra = len(out) - len(x)
    for i, (r, o) in enumerate(zip(sizes, out, strict=True)):
        if i < extra:
            if r > 1:
                ctx.dims.broadcasts.append((o, a.node))
                ctx.literal(a.node, a.path("size", i), o)
            continue
        ax = x[i - extra]
        if r == 1:
            ctx.A.unify(ax, o)
            continue
        copies = ctx.A.new(r)
        ctx.A.unify_seq([o], [copies, ax])
        ctx.dims.broadcasts.append((copies, a.node))
        ctx.literal(a.node, a.path("size", i), copies)


@_rule("pad", "constant_pad_nd", signature=_sig_pad)
def pad(ctx: Context, a: Args) -> None:
    """`pad` = (left, right) pairs from the last axis backwards: padded axes are pinned
    (positions shift), the rest carry over."""
    x, out = ctx.axes(a.input), a.out
    amounts = list(a.pad) if isinstance(a.pad, (list, tuple)) else None
    if x is None or amounts is None or not all(isinstance(p, int) for p in amounts):
        ctx.pin_all([x, out], f"padded by {a.node.name}")
        return
    padded = {len(x) - 1 - i // 2 for i, p in enumerate(amounts) if p != 0}
    for i, (ax, o) in enumerate(zip(x, out, strict=True)):
        if i in padded:
            ctx.pin_all([ax, o], f"padded by {a.node.name}")
        else:
            ctx.A.unify(ax, o)
