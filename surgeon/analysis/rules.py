"""The op-rule table: for each op, which axes of its inputs and output are one atom.

A rule reads `ctx.axes(arg)` (atoms of an input tensor) and `ctx.dims.out[node]` (fresh
atoms of the output, made from `node.meta["val"]`), and unifies, refines or pins them.
Keys are op names without namespace or overload, shared by the ATen ops of torch.export
(`aten.view.default` -> `view`) and the functions and methods of torch.fx (`Tensor.view`,
`F.linear` -> `linear`), so one rule serves both frontends.

There is no default: an op missing here is an `UnsupportedOpError`. To add one, see
`docs/op-rules.md`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import fx

from ..errors import UnsupportedOpError
from .atoms import Refinement
from .dims import Context, Contraction, rule_key, source_line

__all__ = ["RULES"]

Rule = Callable[[Context, fx.Node], None]
RULES: dict[str, Rule] = {}


def rule(*names: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for name in names:
            RULES[name] = fn
        return fn

    return register


def arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def _is_aten(node: fx.Node) -> bool:
    return isinstance(node.target, torch._ops.OpOverload)


# -- elementwise ------------------------------------------------------------------------
# Unary ops, binary ops with broadcasting, and ops equivariant along an axis (softmax):
# every tensor operand's axes line up with the output's from the right.
ELEMENTWISE = (
    "abs",
    "add",
    "sub",
    "rsub",
    "mul",
    "div",
    "true_divide",
    "floordiv",
    "remainder",
    "pow",
    "neg",
    "exp",
    "log",
    "sqrt",
    "rsqrt",
    "sin",
    "cos",
    "tanh",
    "sigmoid",
    "erf",
    "reciprocal",
    "relu",
    "gelu",
    "silu",
    "mish",
    "softplus",
    "hardtanh",
    "leaky_relu",
    "elu",
    "softmax",
    "log_softmax",
    "_softmax",
    "where",
    "masked_fill",
    "clamp",
    "clamp_min",
    "clamp_max",
    "maximum",
    "minimum",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "logical_not",
    "logical_and",
    "logical_or",
    "bitwise_not",
    "bitwise_and",
    "bitwise_or",
    "__and__",
    "__or__",
    "__invert__",
    "alias",
    "clone",
    "contiguous",
    "detach",
    "dropout",
    "lift_fresh_copy",
    "float",
    "half",
    "bfloat16",
    "zeros_like",
    "ones_like",
    "full_like",
    "empty_like",
    "fill",
    "isnan",
    "isinf",
    "sign",
    "square",
    "add_",
    "mul_",
    "div_",
    "sub_",
    "masked_fill_",
)


@rule(*ELEMENTWISE)
def elementwise(ctx: Context, node: fx.Node) -> None:
    out = ctx.dims.out[node]
    for x in node.all_input_nodes:
        axes = ctx.axes(x)
        if axes is not None:
            ctx.broadcast(out, axes)


@rule("to", "_to_copy", "type_as", "type")
def first_operand_only(ctx: Context, node: fx.Node) -> None:
    """The other tensor argument (if any) only lends a dtype or device."""
    ctx.broadcast(ctx.dims.out[node], ctx.axes(node.args[0]))


@rule("new_ones", "new_zeros", "new_empty", "new_full")
def new_factory(ctx: Context, node: fx.Node) -> None:
    """A new tensor that takes only dtype and device from its first argument."""
    _size_literals(ctx, node, 1)


@rule("triu", "tril", "cumsum", "cumprod", "flip", "roll", "diff")
def positional(ctx: Context, node: fx.Node) -> None:
    """Values depend on positions along some axes: keep the shape, pin those axes."""
    out, x = ctx.dims.out[node], ctx.axes(node.args[0])
    if x is not None and len(x) == len(out):
        ctx.broadcast(out, x)
    ctx.pin_all(out, f"positions matter to {node.name}")
    ctx.pin_all(x, f"positions matter to {node.name}")


# -- factories and data-dependent ops ----------------------------------------------------
def _size_literals(ctx: Context, node: fx.Node, index: int) -> None:
    sizes = node.args[index] if len(node.args) > index else node.kwargs.get("size")
    out = ctx.dims.out[node]
    if isinstance(sizes, (list, tuple)):
        for i, s in enumerate(sizes):
            if isinstance(s, int) and i < len(out):
                ctx.literal(node, (index, i), out[i])


@rule("zeros", "ones", "empty", "full", "randn", "rand", "scalar_tensor", "tensor")
def factory(ctx: Context, node: fx.Node) -> None:
    _size_literals(ctx, node, 0)


@rule("arange")
def arange(ctx: Context, node: fx.Node) -> None:
    ctx.pin_all(ctx.dims.out[node], "positions (arange)")


@rule(
    "index",
    "index_select",
    "gather",
    "scatter",
    "index_put",
    "take",
    "masked_select",
    "nonzero",
    "argmax",
    "argmin",
    "bucketize",
    "searchsorted",
)
def data_dependent(ctx: Context, node: fx.Node) -> None:
    """Which positions are read depends on data: every axis involved keeps its meaning."""
    for x in node.all_input_nodes:
        ctx.pin_all(ctx.axes(x), f"indexed by {node.name}")
    ctx.pin_all(ctx.dims.out[node], f"made by {node.name}")


_ORDER_FIRST = ("norm", "linalg_vector_norm")


# -- reductions -------------------------------------------------------------------------
@rule(
    "mean",
    "sum",
    "amax",
    "amin",
    "max",
    "min",
    "var",
    "std",
    "prod",
    "norm",
    "all",
    "any",
    "logsumexp",
    "var_mean",
    "std_mean",
    "linalg_vector_norm",
)
def reduction(ctx: Context, node: fx.Node) -> None:
    """Order-free reductions: the kept axes carry over; the reduced ones disappear."""
    x = ctx.axes(node.args[0])
    out = ctx.dims.out[node]
    if x is None:
        return
    if len(node.args) > 1 and ctx.axes(node.args[1]) is not None:  # max(a, b): element-wise
        return elementwise(ctx, node)
    if out and not isinstance(out[0], int):  # (values, indices) pairs, var_mean, ...
        outs = out
    else:
        outs = [out]
    # norm(x, p, dim) and linalg_vector_norm(x, ord, dim) take the order first
    dims = arg(node, 2 if rule_key(node) in _ORDER_FIRST else 1, "dim")
    if isinstance(dims, int):
        dims = [dims]
    if not dims or isinstance(dims, fx.Node):  # full reduction (or a dtype/ord argument)
        dims = list(range(len(x))) if not outs[0] else []
    reduced = {_dim(d, len(x)) for d in dims}
    for o in outs:
        kept = [a for i, a in enumerate(x) if i not in reduced]
        if len(o) == len(x):  # keepdim
            kept = [a if i not in reduced else None for i, a in enumerate(x)]
        for a, b in zip(kept, o, strict=False):
            if a is not None:
                ctx.A.unify(a, b)


# -- shape ops --------------------------------------------------------------------------
@rule(
    "view",
    "reshape",
    "_unsafe_view",
    "flatten",
    "unflatten",
    "unsqueeze",
    "squeeze",
    "view_as",
    "reshape_as",
    "expand_as_view",
)
def reshape(ctx: Context, node: fx.Node) -> None:
    """A view of the same elements: the two axis lists are one product of atoms."""
    x, out = ctx.axes(node.args[0]), ctx.dims.out[node]
    ctx.A.unify_seq(list(x), list(out))
    if rule_key_is(node, "view", "reshape", "_unsafe_view"):
        shape = node.args[1] if len(node.args) == 2 else node.args[1:]
        base = 1 if len(node.args) == 2 else None
        if isinstance(shape, (list, tuple)):
            for i, s in enumerate(shape):  # ints, and sizes computed in a torch.fx graph
                if isinstance(s, (int, fx.Node)) and s != -1 and i < len(out):
                    ctx.literal(node, (base, i) if base is not None else (1 + i,), out[i])


def rule_key_is(node: fx.Node, *names: str) -> bool:
    return rule_key(node) in names


@rule("expand", "expand_as", "broadcast_to")
def expand(ctx: Context, node: fx.Node) -> None:
    """Broadcast: existing axes carry over, size-1 axes grown become new atoms (e.g. the
    query heads that share one KV group)."""
    x, out = ctx.axes(node.args[0]), ctx.dims.out[node]
    ctx.broadcast(out, x)
    grown = [o for o, a in zip(reversed(out), reversed(x), strict=False) if ctx.size(a) == 1]
    grown += out[: len(out) - len(x)]
    ctx.dims.broadcasts += [(a, node) for a in grown if ctx.size(a) > 1]
    sizes = node.args[1] if len(node.args) == 2 else node.args[1:]
    if rule_key_is(node, "expand") and isinstance(sizes, (list, tuple)):
        base = (1,) if len(node.args) == 2 else ()
        for i, s in enumerate(sizes):
            if isinstance(s, (int, fx.Node)) and s != -1:
                ctx.literal(node, (*base, i) if base else (1 + i,), out[i])


@rule("transpose", "swapaxes", "swapdims", "t", "permute", "movedim", "moveaxis", "numpy_T", "mT")
def transpose(ctx: Context, node: fx.Node) -> None:
    """A reordering of axes: output axis i is input axis order[i]."""
    x, out = ctx.axes(node.args[0]), ctx.dims.out[node]
    order = _axis_order(node, len(x))
    for i, src in enumerate(order):
        ctx.A.unify(out[i], x[src])


def _axis_order(node: fx.Node, n: int) -> list[int]:
    key = rule_key(node)
    order = list(range(n))
    if key == "permute":
        dims = node.args[1:] or node.kwargs.get("dims")
        if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
            dims = dims[0]
        return [_dim(d, n) for d in dims]
    if key == "numpy_T":
        return order[::-1]
    if key in ("movedim", "moveaxis"):
        src = arg(node, 1, "source")
        dst = arg(node, 2, "destination")
        src = [src] if isinstance(src, int) else list(src)
        dst = [dst] if isinstance(dst, int) else list(dst)
        result: list[int | None] = [None] * n
        for s_, d_ in zip(src, dst, strict=True):
            result[_dim(d_, n)] = _dim(s_, n)
        rest = iter(i for i in order if i not in {_dim(s_, n) for s_ in src})
        return [r if r is not None else next(rest) for r in result]
    if n < 2:
        return order
    if key == "t":
        d0, d1 = 0, 1
    elif key == "mT":
        d0, d1 = n - 2, n - 1
    else:
        d0 = arg(node, 1, "dim0", node.kwargs.get("axis0"))
        d1 = arg(node, 2, "dim1", node.kwargs.get("axis1"))
    d0, d1 = _dim(d0, n), _dim(d1, n)
    order[d0], order[d1] = order[d1], order[d0]
    return order


@rule("split", "split_with_sizes", "chunk", "unbind", "tensor_split")
def split(ctx: Context, node: fx.Node) -> None:
    """Cut one axis into segments: the axis is refined as their concatenation."""
    x, outs = ctx.axes(node.args[0]), ctx.dims.out[node]
    n = len(x)
    dim = _dim(arg(node, 2, "dim", 0), n)
    if rule_key_is(node, "unbind"):
        dim = _dim(arg(node, 1, "dim", 0), n)
    whole = ctx.A.new(ctx.size(x[dim]))
    segs = [o[dim] if len(o) == n else ctx.A.new(1) for o in outs]
    if rule_key_is(node, "unbind"):  # each output drops the axis: it is an index
        ctx.A.pin(x[dim], f"unbound by {node.name}")
        segs = []
    else:
        ctx.A.refinement[whole] = Refinement("cat", tuple(segs))
        ctx.A.unify(x[dim], whole)
        ctx.dims.splits.append((whole, node))
        sizes = node.args[1] if rule_key_is(node, "split", "split_with_sizes") else None
        if isinstance(sizes, int):
            ctx.literal(node, (1,), *segs, kind="split")
        elif isinstance(sizes, (list, tuple)):
            for i, s in enumerate(sizes):
                if isinstance(s, int):
                    ctx.literal(node, (1, i), segs[i])
    for o in outs:
        rest = [a for i, a in enumerate(o) if i != dim or len(o) != n]
        others = [a for i, a in enumerate(x) if i != dim]
        for a, b in zip(others, rest, strict=False):
            ctx.A.unify(a, b)


@rule("cat", "concat", "concatenate")
def cat(ctx: Context, node: fx.Node) -> None:
    given = arg(node, 0, "tensors")
    if isinstance(given, fx.Node):  # torch.fx: a list made by another node (split(...)[:2])
        tensors = list(ctx.dims.out[given])
    else:
        tensors = [ctx.axes(t) for t in given]
    out = ctx.dims.out[node]
    n = len(out)
    dim = _dim(arg(node, 1, "dim", 0), n)
    tensors = [t for t in tensors if t is not None and len(t) == n]
    whole = ctx.A.new(ctx.size(out[dim]))
    ctx.A.refinement[whole] = Refinement("cat", tuple(t[dim] for t in tensors))
    ctx.A.unify(out[dim], whole)
    for t in tensors:
        for i in range(n):
            if i != dim:
                ctx.A.unify(out[i], t[i])


@rule("slice", "narrow")
def slice_(ctx: Context, node: fx.Node) -> None:
    """A contiguous range of one axis: refine it as before | kept | after."""
    x, out = ctx.axes(node.args[0]), ctx.dims.out[node]
    n = len(x)
    dim = _dim(arg(node, 1, "dim", 0), n)
    size = ctx.size(x[dim])
    if rule_key_is(node, "narrow"):
        start = arg(node, 2, "start", 0)
        start = start + size if isinstance(start, int) and start < 0 else start
        end = start + arg(node, 3, "length", size)
        step = 1
    else:
        start, end, step = (
            arg(node, 2, "start", 0),
            arg(node, 3, "end", None),
            arg(node, 4, "step", 1),
        )
    for i in range(n):
        if i != dim:
            ctx.A.unify(out[i], x[i])
    kind = "narrow" if rule_key_is(node, "narrow") else "slice"
    _slice_axis(ctx, node, x[dim], out[dim], start, end, step, size, ((2,), kind))


def _slice_axis(ctx, node, axis, out_axis, start, end, step, size, where) -> None:
    """`where` = (path of the start argument, kind): "slice" (start, end follow at the
    next positions), "narrow" (start, length) or "index" (a Python slice object)."""
    if not all(isinstance(v, int) or v is None for v in (start, end, step)):
        ctx.A.pin(axis, f"sliced by {node.name} at a computed position")
        ctx.A.pin(out_axis, f"sliced by {node.name}")
        return
    start = 0 if start is None else (start + size if start < 0 else min(start, size))
    end = size if end is None else (end + size if end < 0 else min(end, size))
    if step != 1:
        ctx.A.pin(axis, f"strided slice {node.name}")
        ctx.A.pin(out_axis, f"strided slice {node.name}")
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
    ctx.A.refinement[whole] = Refinement("cat", tuple(parts))
    ctx.A.unify(axis, whole)
    # The offsets, as sums of the segments before them (-1: no segment before).
    before = parts[0] if start > 0 else -1
    ctx.literal(node, where[0], before, out_axis, kind=where[1], bounded=end < size)


@rule("select")
def select(ctx: Context, node: fx.Node) -> None:
    x, out = ctx.axes(node.args[0]), ctx.dims.out[node]
    dim = _dim(arg(node, 1, "dim", 0), len(x))
    ctx.A.pin(x[dim], f"one position taken by {node.name}")
    for a, b in zip([a for i, a in enumerate(x) if i != dim], out, strict=True):
        ctx.A.unify(a, b)


@rule("getitem")
def getitem(ctx: Context, node: fx.Node) -> None:
    """Tuple element (of split, var_mean, ...) or tensor indexing with slices (torch.fx)."""
    src, index = node.args[0], node.args[1]
    out = ctx.dims.out[node]
    parent = ctx.dims.out.get(src) if isinstance(src, fx.Node) else None
    if parent is not None and parent and not isinstance(parent[0], int):
        picked = parent[index]
        pairs = zip(picked, out, strict=True) if isinstance(index, slice) else [(picked, out)]
        for axes_in, axes_out in pairs:
            for a, b in zip(axes_in, axes_out, strict=True):
                ctx.A.unify(a, b)
        return
    x = ctx.axes(src)
    if x is None:
        return
    _tensor_index(ctx, node, x, out, index if isinstance(index, tuple) else (index,))


@rule("getattr")
def getattr_(ctx: Context, node: fx.Node) -> None:
    """`.values` / `.indices` of a (values, indices) result, as torch.fx records them."""
    src, name = node.args[0], node.args[1]
    parent = ctx.dims.out.get(src) if isinstance(src, fx.Node) else None
    fields = {"values": 0, "indices": 1}
    if parent and isinstance(parent[0], int) and name in ("T", "mT"):  # x.T reverses axes
        n = len(parent)
        order = list(range(n))[::-1] if name == "T" else [*range(n - 2), n - 1, n - 2]
        for i, src in enumerate(order):
            ctx.A.unify(ctx.dims.out[node][i], parent[src])
        return
    if parent and not isinstance(parent[0], int) and name in fields:
        for a, b in zip(parent[fields[name]], ctx.dims.out[node], strict=True):
            ctx.A.unify(a, b)
        return
    raise UnsupportedOpError(
        f"no rule for attribute {name!r} read at node {node.name} ({source_line(node)})"
    )


def _tensor_index(ctx, node, x, out, index) -> None:
    if any(isinstance(i, (fx.Node, list, tuple, torch.Tensor)) for i in index):
        return data_dependent(ctx, node)  # advanced indexing: positions picked by data
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
            ctx.A.pin(x[xi], f"one position taken by {node.name}")
            xi += 1
        else:
            size = ctx.size(x[xi])
            path = (1, position) if isinstance(node.args[1], tuple) else (1,)
            _slice_axis(
                ctx, node, x[xi], out[oi], i.start, i.stop, i.step or 1, size, (path, "index")
            )
            xi += 1
            oi += 1


# -- ops with parameters ----------------------------------------------------------------
@rule("linear")
def linear(ctx: Context, node: fx.Node) -> None:
    x, w = ctx.axes(arg(node, 0, "input")), ctx.axes(arg(node, 1, "weight"))
    b, out = ctx.axes(arg(node, 2, "bias")), ctx.dims.out[node]
    ctx.A.unify(x[-1], w[1])
    ctx.A.unify(out[-1], w[0])
    ctx.fan_in(arg(node, 1, "weight"), 1, arg(node, 0, "input"), -1)
    if b is not None:
        ctx.A.unify(out[-1], b[0])
    for a, o in zip(x[:-1], out[:-1], strict=True):
        ctx.A.unify(a, o)


@rule("addmm")
def addmm(ctx: Context, node: fx.Node) -> None:
    """bias + x @ w with w stored (in, out), as in Conv1D layers."""
    b, x, w = (ctx.axes(a) for a in node.args[:3])
    out = ctx.dims.out[node]
    ctx.A.unify(x[1], w[0])
    ctx.A.unify(out[1], w[1])
    ctx.A.unify(out[0], x[0])
    ctx.fan_in(node.args[2], 0, node.args[1], 1)
    ctx.broadcast(out, b)


@rule("matmul", "mm", "bmm")
def matmul(ctx: Context, node: fx.Node) -> None:
    a, b, out = ctx.axes(node.args[0]), ctx.axes(node.args[1]), ctx.dims.out[node]
    if len(a) < 2 or len(b) < 2:
        ctx.pin_all([a, b, out], f"vector product {node.name}")
        return
    ctx.A.unify(a[-1], b[-2])
    ctx.A.unify(out[-2], a[-2])
    ctx.A.unify(out[-1], b[-1])
    ctx.fan_in(node.args[1], len(b) - 2, node.args[0], -1)
    ctx.broadcast(out[:-2], a[:-2])
    ctx.broadcast(out[:-2], b[:-2])
    _record_contraction(ctx, node, out[:-2], a[-1], node.args[0], node.args[1])


def _record_contraction(ctx, node, batch, contracted, left, right) -> None:
    """Products of two activations (both computed from the inputs, not `x @ w.t()`) are
    attention; record them for role finding."""
    if all(t in ctx.dynamic for t in (left, right)):
        ctx.dims.contractions.append(Contraction(node, tuple(batch), contracted, (left, right)))


@rule("baddbmm")
def baddbmm(ctx: Context, node: fx.Node) -> None:
    c, a, b = (ctx.axes(t) for t in node.args[:3])
    out = ctx.dims.out[node]
    ctx.A.unify(a[-1], b[-2])
    ctx.A.unify(out[-2], a[-2])
    ctx.A.unify(out[-1], b[-1])
    ctx.A.unify(out[0], a[0])
    ctx.A.unify(out[0], b[0])
    ctx.broadcast(out, c)
    _record_contraction(ctx, node, out[:1], a[-1], node.args[1], node.args[2])


@rule("scaled_dot_product_attention")
def sdpa(ctx: Context, node: fx.Node) -> None:
    """q (..., L, E), k (..., S, E), v (..., S, Ev) -> (..., L, Ev); mask (..., L, S)."""
    q, k, v = (ctx.axes(arg(node, i, n)) for i, n in enumerate(("query", "key", "value")))
    mask, out = ctx.axes(arg(node, 3, "attn_mask")), ctx.dims.out[node]
    ctx.A.unify(q[-1], k[-1])
    ctx.A.unify(k[-2], v[-2])
    ctx.A.unify(out[-2], q[-2])
    ctx.A.unify(out[-1], v[-1])
    for t in (q, k, v):
        for o, a in zip(reversed(out[:-2]), reversed(t[:-2]), strict=False):
            if ctx.size(o) == ctx.size(a):
                ctx.A.unify(o, a)
            elif node.kwargs.get("enable_gqa") and ctx.size(o) % ctx.size(a) == 0:
                # grouped-query: query heads = KV heads x queries per KV head
                shared = ctx.A.new(ctx.size(o) // ctx.size(a))
                ctx.A.unify_seq([o], [a, shared])
                ctx.dims.broadcasts.append((shared, node))
    if mask is not None:
        ctx.broadcast(out[:-1] + [k[-2]], mask)
    ctx.dims.contractions.append(
        Contraction(node, tuple(out[:-2]), q[-1], (node.args[0], node.args[1]))
    )


@rule("embedding")
def embedding(ctx: Context, node: fx.Node) -> None:
    """Rows of the table are picked by ids: the row axis is pinned (its index is a token)."""
    weight, ids = (node.args[0], node.args[1]) if _is_aten(node) else (node.args[1], node.args[0])
    w, i, out = ctx.axes(weight), ctx.axes(ids), ctx.dims.out[node]
    ctx.A.pin(w[0], "rows picked by ids (embedding)")
    ctx.A.unify(out[-1], w[1])
    for a, b in zip(i, out[:-1], strict=True):
        ctx.A.unify(a, b)


@rule("layer_norm", "rms_norm")
def layer_norm(ctx: Context, node: fx.Node) -> None:
    """Normalise over the trailing `normalized_shape` axes; weight and bias lie along them."""
    x, out = ctx.axes(node.args[0]), ctx.dims.out[node]
    shape = arg(node, 1, "normalized_shape")
    if isinstance(shape, fx.Node):  # x.shape[-1:] in a torch.fx graph
        shape = tuple(shape.meta.get("val") or ())
    k = len(shape)
    for i in range(k):
        if isinstance(shape[i], int):
            ctx.literal(node, (1, i), x[len(x) - k + i])
    for a, o in zip(x, out, strict=True):
        ctx.A.unify(a, o)
    for param in (arg(node, 2, "weight"), arg(node, 3, "bias")):
        p = ctx.axes(param)
        if p is not None:
            for a, b in zip(p, x[-k:], strict=True):
                ctx.A.unify(a, b)


@rule("conv1d", "conv2d", "conv3d")
def conv(ctx: Context, node: fx.Node) -> None:
    """x (B, Cin, *space) * w (Cout, Cin/groups, *kernel): channels couple, space is pinned."""
    x, w = ctx.axes(arg(node, 0, "input")), ctx.axes(arg(node, 1, "weight"))
    b, out = ctx.axes(arg(node, 2, "bias")), ctx.dims.out[node]
    groups = arg(node, 6, "groups", 1)
    ctx.A.unify(out[0], x[0])
    ctx.A.unify(out[1], w[0])
    if b is not None:
        ctx.A.unify(out[1], b[0])
    if groups == 1:
        ctx.A.unify(x[1], w[1])
        ctx.fan_in(arg(node, 1, "weight"), 1, arg(node, 0, "input"), 1)
    else:
        ctx.pin_all([x[1], w[0], w[1]], f"grouped convolution {node.name}")
    ctx.pin_all([x[2:], w[2:], out[2:]], f"spatial axes of {node.name}")


# torch.fx spells some calls with the names of Python operators.
RULES["iadd"] = RULES["add"]
RULES["truediv"] = RULES["div"]
RULES[operator.matmul.__name__] = RULES["matmul"]
