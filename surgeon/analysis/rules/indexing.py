"""Indexing: positions picked by indices, constant or computed from data.

`index`, `getitem` (torch.fx's `x[...]`), `gather`, `index_select`, `index_put`,
`masked_scatter`, windows (`unfold`, `im2col`), and `data_dependent`: the ops whose
positions read depend on data pin every axis they touch. Rows picked by a router's
choice (`Dims.positions`, see `routing.py`) make the indexed axis the experts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from ...errors import UnsupportedOpError
from ..context import Context, source_line
from ..registry import Args
from ._common import _carry_other_axes, _dim, _filled, _rule, _sig_any, _slice_axis


# -- signatures ---------------------------------------------------------------------------
def _sig_getitem(input, index): ...
def _sig_getattr(input, name): ...


def _sig_index_select(input, dim, index): ...


@_rule("index_select", signature=_sig_index_select)
def index_select(ctx: Context, a: Args) -> None:
    """Rows of `input` along `dim` picked by `index`: that axis is pinned (positions picked
    by data), every other axis carries over."""
    x = ctx.axes(a.input)
    if x is None or len(a.out) != len(x):
        return data_dependent(ctx, a)
    dim = _dim(a.dim, len(x))
    ctx.pin_all([x[dim], a.out[dim]], f"indexed by {a.node.name}")
    ctx.pin_all(ctx.axes(a.index), f"indexed by {a.node.name}")
    _carry_other_axes(ctx, x, [a.out], dim)


def _sig_gather(input, dim, index, *rest, **options): ...


@_rule("gather", signature=_sig_gather)
def gather(ctx: Context, a: Args) -> None:
    """`out[.., j, ..] = input[.., index[.., j, ..], ..]` along `dim`: positions along
    `dim` are picked by data (pinned), unless the index holds positions of an axis as
    long (a router's top-k experts): then `dim` is that axis and moves with it; along
    every other axis input, index and output go together (a shuffle of tokens by an
    index repeated across the hidden size)."""
    x, idx, out = ctx.axes(a.input), ctx.axes(a.index), a.out
    if x is None or idx is None or not isinstance(a.dim, int) or not len(x) == len(idx) == len(out):
        return data_dependent(ctx, a)
    dim = _dim(a.dim, len(x))
    why = f"indexed by {a.node.name}"
    chosen = ctx.positions(a.index)  # a router's choice: its top-k scores, picked
    if chosen is not None and ctx.size(chosen) == ctx.size(x[dim]):
        ctx.A.unify(x[dim], chosen)
        ctx.pin_all([idx[dim], out[dim]], why)
    else:
        ctx.pin_all([x[dim], idx[dim], out[dim]], why)
    for d in range(len(x)):
        if d == dim:
            continue
        ctx.A.unify(idx[d], out[d])
        if ctx.size(x[d]) == ctx.size(out[d]):
            ctx.A.unify(x[d], out[d])
        else:
            ctx.pin_all([x[d], out[d]], why)


def _sig_unfold(input, dimension, size, step): ...


@_rule("unfold", signature=_sig_unfold)
def unfold(ctx: Context, a: Args) -> None:
    """`Tensor.unfold`: axis `dimension` read as overlapping windows (a window count in
    its place, the window's positions last); the windowed axis and both new ones are
    positions, every other axis carries over."""
    x, out = ctx.axes(a.input), a.out
    dim = _dim(a.dimension, len(x))
    for d, ax in enumerate(x):
        if d != dim:
            ctx.A.unify(ax, out[d])
    ctx.pin_all([x[dim], out[dim], out[-1]], f"windows of {a.node.name}")


def _sig_im2col(input, kernel_size, dilation=1, padding=0, stride=1): ...


@_rule("im2col", signature=_sig_im2col)
def im2col(ctx: Context, a: Args) -> None:
    """`F.unfold` (aten's im2col; `unfold` is the name of `Tensor.unfold`'s sliding
    windows) of (N, C, H, W) into (N, C x kernel positions, blocks): the channels are the
    outer factor of the output's second axis; kernel offsets and blocks are positions."""
    x, out = ctx.axes(a.input), a.out
    if x is None or len(x) not in (3, 4) or len(out) != len(x) - 1:
        return data_dependent(ctx, a)
    c = len(x) - 3  # the channel axis, after a batch axis if any
    offsets = ctx.A.new(ctx.size(out[c]) // ctx.size(x[c]))
    ctx.A.unify_seq([out[c]], [x[c], offsets])
    if c:
        ctx.A.unify(out[0], x[0])
    ctx.pin_all([offsets, out[-1], *x[-2:]], f"positions of {a.node.name}")


def _sig_scatter(input, dim, index, src=None, *rest, **options): ...


@_rule("scatter", "scatter_", "scatter_add", "scatter_add_", signature=_sig_scatter)
def scatter(ctx: Context, a: Args) -> None:
    """`out[.., index[.., j, ..], ..] = src[.., j, ..]` along `dim`: where the index holds
    positions of an axis as long as `dim` (a router's top-k experts, their weights written
    into a score per expert), `dim` is that axis and moves with it; the index's and the
    source's `dim` (the k picks) are pinned. Any other index: data dependent."""
    x, idx, out = ctx.axes(a.input), ctx.axes(a.index), a.out
    src = ctx.axes(a.src) if isinstance(a.src, fx.Node) else None
    same = x is not None and idx is not None and len(x) == len(out) == len(idx)
    if not same or not isinstance(a.dim, int) or (src is not None and len(src) != len(x)):
        return data_dependent(ctx, a)
    dim = _dim(a.dim, len(x))
    chosen = ctx.positions(a.index)
    if chosen is None or ctx.size(chosen) != ctx.size(x[dim]):
        return data_dependent(ctx, a)
    ctx.A.unify(x[dim], chosen)
    ctx.A.unify(out[dim], chosen)
    ctx.dims.experts.append(chosen)
    ctx.pin_all([idx[dim], *([src[dim]] if src else [])], f"picks of {a.node.name}")
    for d in range(len(x)):
        if d == dim:
            continue
        ctx.A.unify(x[d], out[d])
        for other in (idx, src or ()):
            if other and ctx.size(other[d]) == ctx.size(x[d]):
                ctx.A.unify(other[d], x[d])


@_rule(
    "take",
    "masked_select",
    "nonzero",
    "bucketize",
    "searchsorted",
    "histc",
    "scatter_reduce",
    "index_add",
    "index_copy",
    "index_fill",
    "bincount",
    "unique",
    "one_hot",
    signature=_sig_any,
)
def data_dependent(ctx: Context, a: Args) -> None:
    """Which positions are read depends on data: every axis involved keeps its meaning."""
    for x in a.node.all_input_nodes:
        ctx.pin_all(ctx.axes(x), f"indexed by {a.node.name}")
    ctx.pin_all(a.out, f"made by {a.node.name}")


def _sig_index_put(input, indices, values, accumulate=False): ...


@_rule("index_put", "index_put_", signature=_sig_index_put)
def index_put(ctx: Context, a: Args) -> None:
    """`input[indices] = values` (image features written over their tokens' embeddings):
    the leading axes the indices address are picked by data; `values` lines up with the
    axes after them, which keep their meaning and can be cut."""
    x = ctx.axes(a.input)
    indices = a.indices if isinstance(a.indices, (list, tuple)) else None
    vals = [i.meta.get("val") if isinstance(i, fx.Node) else None for i in indices or ()]
    if x is None or not indices or any(v is None for v in vals):
        return data_dependent(ctx, a)
    covered = sum(v.dim() if v.dtype == torch.bool else 1 for v in vals)
    for i in indices:
        ctx.pin_all(ctx.axes(i), f"indexed by {a.node.name}")
    ctx.pin_all(x[:covered], f"positions written by {a.node.name}")
    for o, b in zip(a.out, x, strict=True):
        ctx.A.unify(o, b)
    if isinstance(a.values, fx.Node):
        values = ctx.axes(a.values)
        ctx.broadcast(x[covered:], values)
        ctx.pin_all(values[: max(0, len(values) - len(x) + covered)], f"written by {a.node.name}")


def _sig_masked_scatter(input, mask, source): ...


@_rule("masked_scatter", "masked_scatter_", signature=_sig_masked_scatter)
def masked_scatter(ctx: Context, a: Args) -> None:
    """`input.masked_scatter(mask, source)` with a mask that is one value along input's
    trailing axes (of size 1 there, or grown from size 1 by a broadcast: a token mask
    expanded over the features, as image features are written over their tokens'
    embeddings) writes whole rows: those axes keep their meaning and line up with the
    source's trailing axes; the positions before them are picked by data. Any other mask
    picks single elements: data dependent."""
    x, source, mask = ctx.axes(a.input), ctx.axes(a.source), ctx.axes(a.mask)
    if x is None or source is None or mask is None or len(mask) > len(x):
        return data_dependent(ctx, a)
    grown = {ctx.A.find(g) for g, _ in ctx.dims.broadcasts}
    whole = 0
    for m in reversed(mask):
        if ctx.size(m) != 1 and ctx.A.find(m) not in grown:
            break
        whole += 1
    whole = min(whole, len(source))
    if not whole:
        return data_dependent(ctx, a)
    lead = len(x) - whole
    ctx.broadcast(x[lead:], mask[len(mask) - whole :])
    ctx.pin_all(mask[: len(mask) - whole], f"indexed by {a.node.name}")
    ctx.pin_all(x[:lead], f"positions written by {a.node.name}")
    ctx.pin_all(source[: len(source) - whole], f"written by {a.node.name}")
    for o, b in zip(a.out, x, strict=True):
        ctx.A.unify(o, b)
    for b, v in zip(x[lead:], source[len(source) - whole :], strict=True):
        ctx.A.unify(b, v)


def _sig_index(input, indices=None): ...


def _constant(ctx: Context, x: Any) -> torch.Tensor | None:
    """The value of a tensor the graph holds as a constant (a lifted tensor, through copies),
    or None for anything computed from the inputs, or held on the meta device (a parent
    traced without its weights: the value is unknown, so its reader pins)."""
    while isinstance(x, fx.Node) and x.op == "call_function" and len(x.all_input_nodes) == 1:
        if x in ctx.dynamic:
            return None
        x = x.all_input_nodes[0]
    if not isinstance(x, fx.Node) or x.op != "get_attr":
        return None
    value: Any = ctx.graph.module
    for part in str(x.target).split("."):
        value = getattr(value, part, None)
    if not isinstance(value, torch.Tensor) or value.device.type == "meta":
        return None
    return value


def _run(values: list[int], size: int) -> tuple[int, int] | None:
    """(start, end) of consecutive positions all counted from the start or all from the
    end (`[-2]`), else None."""
    if not values or not (all(v >= 0 for v in values) or all(v < 0 for v in values)):
        return None
    if values != list(range(values[0], values[0] + len(values))):
        return None
    start = values[0] + (size if values[0] < 0 else 0)
    return start, start + len(values)


def _fixed_slice(ctx: Context, node: fx.Node, axis: int, out_axis: int, run, values) -> None:
    """Positions `run` of `axis` picked by constant indices, which the surgery cannot
    rewrite: the part on the side the indices count from keeps its size (pinned), so they
    stay right when the rest is cut (a fused `qkv[..., [-2], :]` past the query heads)."""
    start, end = run
    size = ctx.size(axis)
    before = ctx.A.new(start) if start > 0 else None
    after = ctx.A.new(size - end) if end < size else None
    whole = ctx.A.new(size)
    parts = tuple(p for p in (before, out_axis, after) if p is not None)
    ctx.A.refine(whole, "cat", parts)
    ctx.A.unify(axis, whole)
    ctx.dims.splits.append((axis, node))
    anchor = after if values[0] < 0 else before
    if anchor is not None:
        ctx.A.pin(anchor, f"counted past by the constant indices of {node.name}")


@_rule("index", signature=_sig_index)
def index(ctx: Context, a: Args) -> None:
    """`input[..., idx, ...]` (aten.index): one constant run of consecutive positions on
    one axis is a slice (`_fixed_slice`); indices computed from data pin, as any
    data-dependent op."""
    x, out = ctx.axes(a.input), a.out
    indices = list(a.indices) if isinstance(a.indices, (list, tuple)) else None
    used = [i for i, t in enumerate(indices or []) if t is not None]
    if x is None or not used:
        return data_dependent(ctx, a)
    run = None
    if len(used) == 1 and len(out) == len(x):
        value = _constant(ctx, indices[used[0]])
        if value is not None and value.dim() == 1 and not value.is_floating_point():
            values = value.tolist()
            run = _run(values, ctx.size(x[used[0]]))
    if run is not None:
        _carry_other_axes(ctx, x, [out], used[0])
        _fixed_slice(ctx, a.node, x[used[0]], out[used[0]], run, values)
    else:
        _gather(ctx, a, x, indices, used)


def _gather(ctx: Context, a: Args, x: list[int], indices: list, used: list[int]) -> None:
    """Tensor indices on some axes (`pos_table[position_ids]`, `h[arange(B), last]`): the
    indexed axes are pinned; the axes not indexed carry over; the output's axes from the
    (broadcast) indices are theirs. The indices go first when they are not adjacent."""
    why = f"indexed by {a.node.name}"
    idx = [ctx.axes(indices[i]) for i in used]
    shapes = [_val_shape(indices[i]) for i in used]
    if any(s is None for s in shapes) or len(used) != used[-1] - used[0] + 1:
        return data_dependent(ctx, a)  # a boolean mask, or indices set apart
    width = max(len(s) for s in shapes)
    lead = used[0]
    before, after = x[:lead], x[used[-1] + 1 :]
    if len(a.out) != len(before) + width + len(after):
        return data_dependent(ctx, a)
    picked = None
    for i in used:
        chosen = ctx.positions(indices[i])  # rows picked by a router's choice: experts
        if chosen is not None and ctx.size(chosen) == ctx.size(x[i]):
            ctx.A.unify(x[i], chosen)
            ctx.dims.experts.append(chosen)
            picked = indices[i]
        else:
            ctx.A.pin(x[i], why)
    source = _weight_source(ctx, a.input)
    if source is not None and len(used) == 1 and lead == 0:  # each token's expert weights
        ctx.dims.selected[a.node] = (source, {width + j: 1 + j for j in range(len(after))})
        if picked is not None:
            ctx.dims.picked_by[a.node] = picked
    for ax, o in zip(before, a.out[:lead], strict=True):
        ctx.A.unify(ax, o)
    for ax, o in zip(after, a.out[lead + width :], strict=True):
        ctx.A.unify(ax, o)
    mid = a.out[lead : lead + width]
    for axes in idx:
        if axes is not None:
            ctx.broadcast(mid, axes)


def _weight_source(ctx: Context, x: Any) -> fx.Node | None:
    """The parameter `x` is computed from alone, axis for axis (a copy, a cast), or None."""
    while isinstance(x, fx.Node) and x.op == "call_function" and x not in ctx.dynamic:
        shape = _val_shape(x)
        if len(x.all_input_nodes) != 1 or shape is None:
            return None
        if shape != _val_shape(x.all_input_nodes[0]):
            return None
        x = x.all_input_nodes[0]
    if isinstance(x, fx.Node) and x.op == "get_attr" and x.target in ctx.graph.params:
        return x
    return None


def _val_shape(t: Any) -> tuple | None:
    """The shape of an integer index tensor; None for a boolean mask or anything else."""
    val = t.meta.get("val") if isinstance(t, fx.Node) else None
    if not isinstance(val, torch.Tensor) or val.dtype == torch.bool:
        return None
    return tuple(val.shape)


@_rule("getitem", signature=_sig_getitem)
def getitem(ctx: Context, a: Args) -> None:
    """`input[index]`: an element of a tuple (split, var_mean, ...), or tensor indexing
    with ints, slices, None and ... (torch.fx)."""
    parent = ctx.dims.out.get(a.input) if isinstance(a.input, fx.Node) else None
    if parent and not isinstance(parent[0], int):  # a tuple of tensors
        picked = parent[a.index]
        pairs = zip(picked, a.out, strict=True) if isinstance(a.index, slice) else [(picked, a.out)]
        for axes_in, axes_out in pairs:
            for x, b in zip(axes_in, axes_out, strict=True):
                ctx.A.unify(x, b)
        return
    x = ctx.axes(a.input)
    if x is None:
        return
    _tensor_index(ctx, a, x, a.index if isinstance(a.index, tuple) else (a.index,))


@_rule("getattr", signature=_sig_getattr)
def getattr_(ctx: Context, a: Args) -> None:
    """`.T`, `.mT` of a tensor, `.real` / `.imag` of a complex one, `.values` / `.indices`
    of a (values, indices) result, as torch.fx records them."""
    parent = ctx.dims.out.get(a.input) if isinstance(a.input, fx.Node) else None
    fields = {"values": 0, "indices": 1}
    if parent and isinstance(parent[0], int) and a.name in ("T", "mT"):
        n = len(parent)
        order = list(range(n))[::-1] if a.name == "T" else [*range(n - 2), n - 1, n - 2]
        for i, src in enumerate(order):
            ctx.A.unify(a.out[i], parent[src])
        return
    if parent and isinstance(parent[0], int) and a.name in ("real", "imag"):
        for x, b in zip(parent, a.out, strict=True):
            ctx.A.unify(x, b)
        return
    if parent and not isinstance(parent[0], int) and a.name in fields:
        for x, b in zip(parent[fields[a.name]], a.out, strict=True):
            ctx.A.unify(x, b)
        return
    raise UnsupportedOpError(
        f"no rule for attribute {a.name!r} read at node {a.node.name} ({source_line(a.node)})"
    )


def _tensor_index(ctx: Context, a: Args, x: list[int], index: tuple) -> None:
    lists = [p for p, i in enumerate(index) if isinstance(i, (list, tuple))]
    if len(lists) == 1 and not any(isinstance(i, (fx.Node, torch.Tensor)) for i in index):
        return _list_index(ctx, a, x, index, lists[0])
    tensors = [isinstance(i, fx.Node) for i in index]
    if any(tensors) and all(t or i == slice(None) for t, i in zip(tensors, index, strict=True)):
        indices = [i if t else None for t, i in zip(tensors, index, strict=True)]
        return _gather(ctx, a, x, indices, [p for p, t in enumerate(tensors) if t])
    if any(isinstance(i, (fx.Node, list, tuple, torch.Tensor)) for i in index):
        return data_dependent(ctx, a)  # advanced indexing: positions picked by data
    n_real = sum(1 for i in index if i is not None and i is not Ellipsis)
    expanded, positions = [], []  # full index, and where each entry is in `index`
    for p, i in enumerate(index):
        if i is Ellipsis:
            expanded += [slice(None)] * (len(x) - n_real)
            positions += [-1] * (len(x) - n_real)
        else:
            expanded.append(i)
            positions.append(p)
    pad = len(x) - sum(1 for i in expanded if i is not None)
    expanded += [slice(None)] * pad
    positions += [-1] * pad
    xi = oi = 0
    for position, i in zip(positions, expanded, strict=True):
        if i is None:
            oi += 1
        elif isinstance(i, int):
            if not _filled(ctx, a.input):
                ctx.A.pin(x[xi], f"one position taken by {a.node.name}")
                where = a.path("index", position) if isinstance(a.index, tuple) else a.path("index")
                ctx.dims.picks.append((a.node, x[xi], i, where))
            xi += 1
        else:
            path = a.path("index", position) if isinstance(a.index, tuple) else a.path("index")
            _slice_axis(
                ctx, a.node, x[xi], a.out[oi], i.start, i.stop, i.step or 1, (path, "index")
            )
            xi += 1
            oi += 1


def _list_index(ctx: Context, a: Args, x: list[int], index: tuple, at: int) -> None:
    """`x[..., [-2], ...]` (torch.fx): with only full slices and one list of consecutive
    ints, the list is a constant slice (`_fixed_slice`); anything else pins."""
    values = list(index[at])
    before = index[:at]
    plain = all(i == slice(None) or i is Ellipsis for i in index if i is not index[at])
    if Ellipsis in before:
        dim = len(x) - (len(index) - at)
    else:
        dim = at
    run = _run(values, ctx.size(x[dim])) if plain and all(type(v) is int for v in values) else None
    if run is None or len(a.out) != len(x):
        return data_dependent(ctx, a)
    _carry_other_axes(ctx, x, [a.out], dim)
    _fixed_slice(ctx, a.node, x[dim], a.out[dim], run, values)
