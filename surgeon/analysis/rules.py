"""The built-in op rules: for each op family, which axes of its inputs and output are one atom.

A rule `fn(ctx, a)` reads the atoms of its inputs (`ctx.axes(a.input)`) and the fresh atoms
of its output (`a.out`, made from `node.meta["val"]`), and unifies, refines or pins them.
`a` holds the node's arguments by the names of the family's signature (the small
functions `_sig_*` below), the same in both frontends: see `registry.py`. A rule does not
look at the op's name; ops that differ are separate families.

There is no default: an op missing here is an `UnsupportedOpError`. To add one, use
`surgeon.register_rule` (see `docs/op-rules.md`).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx

from ..errors import UnsupportedOpError
from .context import Context, Contraction, source_line
from .registry import RULES, Args, register_rule

__all__ = ["RULES", "register_rule"]

_rule = register_rule  # the built-in rules register the way a user's do


def _dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


# -- signatures: the names of each family's arguments, in torch.fx's positional order ---------
def _sig_any(*args, **kwargs): ...
def _sig_unary(input, *rest, **options): ...
def _sig_binary(input, other=None, *rest, **options): ...
def _sig_shaped(input, *size, **options): ...
def _sig_new_full(input, size, fill_value=None, **options): ...
def _sig_factory(*size, **options): ...
def _sig_full(size, fill_value=None, **options): ...
def _sig_reduce(input, dim=None, *rest, **options): ...
def _sig_norm(input, p="fro", dim=None, *rest, **options): ...
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
def _sig_getitem(input, index): ...
def _sig_getattr(input, name): ...
def _sig_linear(input, weight, bias=None): ...
def _sig_addmm(input, mat1, mat2, *, beta=1, alpha=1): ...
def _sig_matmul(input, other): ...
def _sig_baddbmm(input, batch1, batch2, *, beta=1, alpha=1): ...
def _sig_sdpa(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
    enable_gqa=False,
): ...  # fmt: skip
def _sig_embedding(input, weight, padding_idx=None, *rest, **options): ...
def _sig_layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, **options): ...
def _sig_rms_norm(input, normalized_shape, weight=None, eps=None): ...
def _sig_conv(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1): ...


# -- elementwise ------------------------------------------------------------------------
# Unary ops, binary ops with broadcasting, and ops equivariant along an axis (softmax):
# every tensor operand's axes line up with the output's from the right.
ELEMENTWISE = (
    "abs",
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
    "truediv",  # the name torch.fx gives `/`
    "expm1",
    "log1p",
    "log2",
    "log10",
    "exp2",
    "floor",
    "ceil",
    "round",
    "trunc",
    "frac",
    "tan",
    "atan",
    "atan2",
    "asin",
    "acos",
    "sinh",
    "cosh",
    "asinh",
    "acosh",
    "atanh",
    "erfc",
    "erfinv",
    "sgn",
    "hardsigmoid",
    "hardswish",
    "relu6",
    "selu",
    "celu",
    "softsign",
    "log_sigmoid",
    "logsigmoid",
    "threshold",
    "xlogy",
    "fmod",
    "lerp",
    "addcmul",
    "addcdiv",
    "copysign",
    "hypot",
    "nan_to_num",
    "logaddexp",
    "bitwise_xor",
    "logical_xor",
    "__xor__",
    "copy_",
    "clamp_",
    "pow_",
    "exp_",
    "neg_",
    "relu_",
    "silu_",
    "gelu_",
    "sigmoid_",
    "tanh_",
    "fill_",
    "zero_",
    "floor_divide",
    "isfinite",
    "positive",
    "square_",
    "multiply",
    "divide",
    "subtract",
    "detach_",
    "dropout_",
    "feature_dropout",
    "alpha_dropout",
    "native_dropout",
    "polar",
    "complex",
    "real",
    "imag",
    "conj",
    "angle",
)


@_rule(*ELEMENTWISE, signature=_sig_any)
def elementwise(ctx: Context, a: Args) -> None:
    """Every tensor operand lines up with the output from the right (broadcasting)."""
    for x in a.node.all_input_nodes:
        axes = ctx.axes(x)
        if axes is not None:
            ctx.broadcast(a.out, axes)


@_rule("zeros_like", "ones_like", "full_like", signature=_sig_any)
def filled_like(ctx: Context, a: Args) -> None:
    """One value in the shape of `input`: its axes, every position alike."""
    elementwise(ctx, a)
    ctx.dims.filled.add(a.node)
    _lends_shape(ctx, a.node, *a.node.all_input_nodes)


def _lends_shape(ctx: Context, node: fx.Node, *args: Any) -> None:
    """`args` give `node` only their shape or dtype, none of their values."""
    ctx.dims.lends_shape.update((node, x) for x in args if isinstance(x, fx.Node))


# `input + other`: element-wise, and the residual additions are among them.
_rule("add", "iadd", signature=_sig_binary, adds=True)(elementwise)


@_rule("to", "_to_copy", "type_as", "type", signature=_sig_unary)
def first_operand_only(ctx: Context, a: Args) -> None:
    """The other tensor argument (if any) only lends a dtype or device."""
    ctx.broadcast(a.out, ctx.axes(a.input))
    _lends_shape(ctx, a.node, *a.rest)


def _size_literals(ctx: Context, a: Args) -> None:
    """Each int of `a.size` states the size of the output axis at its position."""
    for i, s in enumerate(a.size):
        if isinstance(s, int) and i < len(a.out):
            ctx.literal(a.node, a.path("size", i), a.out[i])


@_rule("new_ones", "new_zeros", "new_empty", signature=_sig_shaped)
@_rule("new_full", signature=_sig_new_full)
def new_factory(ctx: Context, a: Args) -> None:
    """A new tensor of `size` that takes only dtype and device from `input`."""
    _size_literals(ctx, a)


def _sig_scan(input, dim=None, *rest, **options): ...
def _sig_diff(input, n=1, dim=-1, *rest, **options): ...
def _sig_flip(input, dims=None, *rest, **options): ...
def _sig_roll(input, shifts=None, dims=None, *rest, **options): ...


def _positional(ctx: Context, a: Args, dims: Any, out: Any = None) -> None:
    """Values depend on positions along `dims` (None: along every axis): those axes are
    pinned, the others carry over."""
    out, x = out or a.out, ctx.axes(a.input)
    why = f"positions matter to {a.node.name}"
    if x is None or len(x) != len(out) or dims is None:
        if x is not None and len(x) == len(out):
            ctx.broadcast(out, x)
        ctx.pin_all(out, why)
        ctx.pin_all(x, why)
        return
    dims = {_dim(d, len(x)) for d in ((dims,) if isinstance(dims, int) else dims)}
    for i, (ax, o) in enumerate(zip(x, out, strict=True)):
        if i in dims:
            ctx.pin_all([ax, o], why)
        else:
            ctx.A.unify(ax, o)


@_rule("cumsum", "cumprod", "logcumsumexp", "cummax", "cummin", signature=_sig_scan)
def scan(ctx: Context, a: Args) -> None:
    """A running sum (or product) along `dim`: that axis is an order, the others carry."""
    if a.out and not isinstance(a.out[0], int):  # cummax/cummin: (values, indices)
        for o in a.out:
            _positional(ctx, a, a.dim if isinstance(a.dim, int) else None, o)
        return
    _positional(ctx, a, a.dim if isinstance(a.dim, int) else None)


@_rule("diff", signature=_sig_diff)
def diff(ctx: Context, a: Args) -> None:
    """Differences of neighbours along `dim` (one fewer there): that axis is an order."""
    _positional(ctx, a, a.dim if isinstance(a.dim, int) else None)


@_rule("flip", signature=_sig_flip)
@_rule("roll", signature=_sig_roll)
def flip(ctx: Context, a: Args) -> None:
    """Positions reversed (or shifted) along `dims` (every axis when none is given)."""
    dims = (a.dims,) if isinstance(a.dims, int) else a.dims
    ok = isinstance(dims, (list, tuple)) and dims and all(isinstance(d, int) for d in dims)
    _positional(ctx, a, dims if ok else None)


@_rule("triu", "tril", signature=_sig_unary)
def triangle(ctx: Context, a: Args) -> None:
    """Keep a triangle of the two trailing axes: they are positions, the others carry."""
    _positional(ctx, a, (-2, -1))


# -- factories and data-dependent ops ----------------------------------------------------
@_rule("zeros", "ones", "empty", "randn", "rand", signature=_sig_factory)
@_rule("full", signature=_sig_full)
def factory(ctx: Context, a: Args) -> None:
    """A new tensor of `size`: its ints state the output's axis sizes."""
    _size_literals(ctx, a)


@_rule("scalar_tensor", "tensor", signature=_sig_any)
def constant(ctx: Context, a: Args) -> None:
    """A tensor made from data: its axes are fresh and free."""


@_rule("arange", "meshgrid", "eye", signature=_sig_any)
def arange(ctx: Context, a: Args) -> None:
    """Positions 0, 1, ...: the output's axis is an index."""
    ctx.pin_all(a.out, "positions (arange)")


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
    `dim` are picked by data (pinned); along every other axis input, index and output go
    together (a shuffle of tokens by an index repeated across the hidden size)."""
    x, idx, out = ctx.axes(a.input), ctx.axes(a.index), a.out
    if x is None or idx is None or not isinstance(a.dim, int) or not len(x) == len(idx) == len(out):
        return data_dependent(ctx, a)
    dim = _dim(a.dim, len(x))
    why = f"indexed by {a.node.name}"
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


@_rule(
    "scatter",
    "take",
    "masked_select",
    "nonzero",
    "argmax",
    "argmin",
    "bucketize",
    "searchsorted",
    "histc",
    "scatter_",
    "scatter_add",
    "scatter_add_",
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
    or None for anything computed from the inputs."""
    while isinstance(x, fx.Node) and x.op == "call_function" and len(x.all_input_nodes) == 1:
        if x in ctx.dynamic:
            return None
        x = x.all_input_nodes[0]
    if not isinstance(x, fx.Node) or x.op != "get_attr":
        return None
    value: Any = ctx.graph.module
    for part in str(x.target).split("."):
        value = getattr(value, part, None)
    return value if isinstance(value, torch.Tensor) else None


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
    stay right when the rest is cut (Falcon's `qkv[..., [-2], :]` past the query heads)."""
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
    """`max(x, dim)` reduces; `max(x, y)` with a tensor `y` is element-wise."""
    if ctx.axes(a.dim) is not None:
        return elementwise(ctx, a)
    return reduction(ctx, a)


# -- shape ops --------------------------------------------------------------------------
@_rule("view", "reshape", "_unsafe_view", signature=_sig_shaped, aliases={"shape": "size"})
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


@_rule(
    "flatten",
    "unsqueeze",
    "squeeze",
    "view_as",
    "reshape_as",
    "expand_as_view",
    signature=_sig_unary,
)
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


@_rule("expand", signature=_sig_shaped)
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


def _carry_other_axes(ctx: Context, x: list[int], outs: list, dim: int) -> None:
    for o in outs:
        rest = [ax for i, ax in enumerate(o) if i != dim or len(o) != len(x)]
        others = [ax for i, ax in enumerate(x) if i != dim]
        for ax, b in zip(others, rest, strict=False):
            ctx.A.unify(ax, b)


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


def _slice_axis(ctx: Context, node: fx.Node, axis, out_axis, start, end, step, where) -> None:
    """`where` = (path of the start argument, kind): "slice" (start, end follow at the
    next positions), "narrow" (start, length) or "index" (a Python slice object)."""
    size = ctx.size(axis)
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
    ctx.A.refine(whole, "cat", tuple(parts))
    ctx.A.unify(axis, whole)
    # The offsets, as sums of the segments before them (-1: no segment before).
    before = parts[0] if start > 0 else -1
    ctx.literal(node, where[0], before, out_axis, kind=where[1], bounded=end < size)


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


def _filled(ctx: Context, x: Any) -> bool:
    """Whether `x` holds one value everywhere (`zeros_like(h, dtype=int)`, GIT's token
    types): any of its positions reads the same."""
    return isinstance(x, fx.Node) and x in ctx.dims.filled


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


# -- ops with parameters ----------------------------------------------------------------
@_rule("linear", signature=_sig_linear, mixes_stream=True)
def linear(ctx: Context, a: Args) -> None:
    """input (..., in) · weight (out, in) + bias (out) -> (..., out)."""
    x, w, b = ctx.axes(a.input), ctx.axes(a.weight), ctx.axes(a.bias)
    ctx.A.unify(x[-1], w[1])
    ctx.A.unify(a.out[-1], w[0])
    ctx.fan_in(a.weight, 1, a.input, -1)
    if b is not None:
        ctx.A.unify(a.out[-1], b[0])
    for ax, o in zip(x[:-1], a.out[:-1], strict=True):
        ctx.A.unify(ax, o)


@_rule("addmm", signature=_sig_addmm, mixes_stream=True)
def addmm(ctx: Context, a: Args) -> None:
    """input + mat1 (n, in) @ mat2 (in, out), the weight stored (in, out) as in Conv1D."""
    x, w = ctx.axes(a.mat1), ctx.axes(a.mat2)
    ctx.A.unify(x[1], w[0])
    ctx.A.unify(a.out[1], w[1])
    ctx.A.unify(a.out[0], x[0])
    ctx.fan_in(a.mat2, 0, a.mat1, 1)
    ctx.broadcast(a.out, ctx.axes(a.input))


def _record_contraction(ctx: Context, a: Args, batch, contracted, left, right) -> None:
    """Products of two activations (both computed from the inputs, not `x @ w.t()`, nor
    with weights the data picked) are attention; record them for role finding."""
    selected = ctx.dims.selected
    if left in selected or right in selected:
        return
    if all(t in ctx.dynamic for t in (left, right)):
        ctx.dims.contractions.append(Contraction(a.node, tuple(batch), contracted, (left, right)))


@_rule("matmul", "mm", "bmm", signature=_sig_matmul, aliases={"mat2": "other"}, mixes_stream=True)
def matmul(ctx: Context, a: Args) -> None:
    """input (..., n, k) @ other (..., k, m) -> (..., n, m), batch axes broadcast."""
    x, y, out = ctx.axes(a.input), ctx.axes(a.other), a.out
    if len(x) < 2 or len(y) < 2:
        ctx.pin_all([x, y, out], f"vector product {a.node.name}")
        return
    ctx.A.unify(x[-1], y[-2])
    ctx.A.unify(out[-2], x[-2])
    ctx.A.unify(out[-1], y[-1])
    ctx.fan_in(a.other, len(y) - 2, a.input, -1)
    _selected_fan_in(ctx, a.other, len(y) - 2, a.input, len(x) - 1)
    _selected_fan_in(ctx, a.input, len(x) - 1, a.other, len(y) - 2)
    for operand in (a.input, a.other):
        if operand in ctx.dims.picked_by:
            ctx.dims.expert_products.append((a.node, operand))
    ctx.broadcast(out[:-2], x[:-2])
    ctx.broadcast(out[:-2], y[:-2])
    _record_contraction(ctx, a, out[:-2], x[-1], a.input, a.other)


def _selected_fan_in(ctx: Context, weight: Any, axis: int, activation: Any, act_axis: int) -> None:
    """`fan_in` for weights the data picked: recorded on the parameter they come from."""
    source, axes = ctx.dims.selected.get(weight, (None, {}))
    if source is not None and axis in axes:
        ctx.fan_in(source, axes[axis], activation, act_axis)


@_rule("baddbmm", signature=_sig_baddbmm, mixes_stream=True)
def baddbmm(ctx: Context, a: Args) -> None:
    """input + batch1 (b, n, k) @ batch2 (b, k, m) -> (b, n, m)."""
    x, y, out = ctx.axes(a.batch1), ctx.axes(a.batch2), a.out
    ctx.A.unify(x[-1], y[-2])
    ctx.A.unify(out[-2], x[-2])
    ctx.A.unify(out[-1], y[-1])
    ctx.A.unify(out[0], x[0])
    ctx.A.unify(out[0], y[0])
    ctx.broadcast(out, ctx.axes(a.input))
    _record_contraction(ctx, a, out[:1], x[-1], a.batch1, a.batch2)


@_rule("scaled_dot_product_attention", signature=_sig_sdpa)
def sdpa(ctx: Context, a: Args) -> None:
    """query (..., L, E), key (..., S, E), value (..., S, Ev) -> (..., L, Ev); attn_mask
    (..., L, S). With `enable_gqa` the query heads are KV heads x queries per KV head."""
    q, k, v = ctx.axes(a.query), ctx.axes(a.key), ctx.axes(a.value)
    mask, out = ctx.axes(a.attn_mask), a.out
    ctx.A.unify(q[-1], k[-1])
    ctx.A.unify(k[-2], v[-2])
    ctx.A.unify(out[-2], q[-2])
    ctx.A.unify(out[-1], v[-1])
    for t in (q, k, v):
        for o, x in zip(reversed(out[:-2]), reversed(t[:-2]), strict=False):
            if ctx.size(o) == ctx.size(x):
                ctx.A.unify(o, x)
            elif a.enable_gqa and ctx.size(o) % ctx.size(x) == 0:
                shared = ctx.A.new(ctx.size(o) // ctx.size(x))
                ctx.A.unify_seq([o], [x, shared])
                ctx.dims.broadcasts.append((shared, a.node))
    if mask is not None:
        ctx.broadcast(out[:-1] + [k[-2]], mask)
    ctx.dims.contractions.append(Contraction(a.node, tuple(out[:-2]), q[-1], (a.query, a.key)))


@_rule(
    "embedding",
    signature=_sig_embedding,
    aliases={"indices": "input"},
    lookup=("weight", "input"),
)
def embedding(ctx: Context, a: Args) -> None:
    """Rows of `weight` picked by the ids `input`: the row axis is pinned (its index is a
    token), the output is the ids' axes and the row's."""
    w, ids, out = ctx.axes(a.weight), ctx.axes(a.input), a.out
    ctx.A.pin(w[0], "rows picked by ids (embedding)")
    ctx.A.unify(out[-1], w[1])
    for x, b in zip(ids, out[:-1], strict=True):
        ctx.A.unify(x, b)


@_rule("layer_norm", signature=_sig_layer_norm)
@_rule("rms_norm", signature=_sig_rms_norm)
def layer_norm(ctx: Context, a: Args) -> None:
    """Normalise over the trailing `normalized_shape` axes; `weight` and `bias` (if any)
    lie along them; the ints of `normalized_shape` are literals."""
    x = ctx.axes(a.input)
    shape: Any = a.normalized_shape
    if isinstance(shape, fx.Node):  # x.shape[-1:] in a torch.fx graph
        shape = tuple(shape.meta.get("val") or ())
    elif isinstance(shape, int):
        shape = (shape,)
    k = len(shape)
    for i in range(k):
        if isinstance(shape[i], int) and isinstance(a.normalized_shape, (list, tuple)):
            ctx.literal(a.node, a.path("normalized_shape", i), x[len(x) - k + i])
    for ax, o in zip(x, a.out, strict=True):
        ctx.A.unify(ax, o)
    for param in (a.weight, a.get("bias")):
        p = ctx.axes(param)
        if p is not None:
            for ax, b in zip(p, x[-k:], strict=True):
                ctx.A.unify(ax, b)


@_rule("conv1d", "conv2d", "conv3d", signature=_sig_conv, mixes_stream=True)
def conv(ctx: Context, a: Args) -> None:
    """input (B, Cin, *space) * weight (Cout, Cin/groups, *kernel): channels couple, space
    is pinned."""
    x, w, b, out = ctx.axes(a.input), ctx.axes(a.weight), ctx.axes(a.bias), a.out
    ctx.A.unify(out[0], x[0])
    ctx.A.unify(out[1], w[0])
    if b is not None:
        ctx.A.unify(out[1], b[0])
    if a.groups == 1:
        ctx.A.unify(x[1], w[1])
        ctx.fan_in(a.weight, 1, a.input, 1)
    elif _depthwise(a):  # one group per channel: channels pass through, `groups` counts them
        ctx.A.unify(x[1], out[1])
        ctx.A.pin(w[1], f"one input channel per group ({a.node.name})")
        ctx.literal(a.node, a.path("groups"), out[1])
    else:
        ctx.pin_all([x[1], w[0], w[1]], f"grouped convolution {a.node.name}")
    ctx.pin_all([x[2:], w[2:], out[2:]], f"spatial axes of {a.node.name}")


def _depthwise(a: Args) -> bool:
    """A convolution with one input and one output channel per group."""
    x, w = a.input.meta.get("val"), a.weight.meta.get("val")
    if x is None or w is None or not isinstance(a.groups, int):
        return False
    return x.shape[1] == w.shape[0] == a.groups and w.shape[1] == 1


# -- ordering, stacking, repeating ------------------------------------------------------
def _sig_sorted(input, dim=-1, *rest, **options): ...
def _sig_topk(input, k, dim=-1, *rest, **options): ...
def _sig_stack(tensors, dim=0): ...
def _sig_repeat_interleave(input=None, repeats=None, dim=None, output_size=None, **options): ...
def _sig_pad(input, pad, *rest, **options): ...
def _sig_einsum(equation=None, *operands): ...


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


def _channel_parameters(ctx: Context, a: Args) -> list[int]:
    """Unify the output with the input axis by axis, and every other 1-d tensor operand
    (weight, bias, running statistics, in whichever order the spelling passes them) with
    the channels (axis 1); returns the input's axes."""
    x = ctx.axes(a.node.all_input_nodes[0])
    out = a.out if a.out and isinstance(a.out[0], int) else a.out[0]
    for ax, o in zip(x, out, strict=True):
        ctx.A.unify(ax, o)
    for t in a.node.all_input_nodes[1:]:
        p = ctx.axes(t)
        if p is not None and len(p) == 1 and len(x) > 1 and ctx.size(p[0]) == ctx.size(x[1]):
            ctx.A.unify(p[0], x[1])
    return x


@_rule(
    "batch_norm",
    "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit",
    "native_batch_norm",
    signature=_sig_any,
)
def batch_norm(ctx: Context, a: Args) -> None:
    """Normalise each channel (axis 1): every axis carries over; weight, bias and running
    statistics lie along the channels."""
    _channel_parameters(ctx, a)


@_rule("group_norm", "native_group_norm", signature=_sig_any)
def group_norm(ctx: Context, a: Args) -> None:
    """Normalise groups of channels (axis 1): the channels are cut into groups, so they
    keep their places (pinned); weight and bias lie along them."""
    x = _channel_parameters(ctx, a)
    ctx.A.pin(x[1], f"channel groups of {a.node.name}")


_POOLS = (
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_max_pool1d",
    "adaptive_max_pool2d",
    "_adaptive_avg_pool2d",
    "max_pool2d_with_indices",
    "upsample_nearest2d",
    "upsample_bilinear2d",
    "upsample_bicubic2d",
    "upsample_nearest1d",
    "upsample_linear1d",
    "interpolate",
    "pixel_shuffle",
)


@_rule(*_POOLS, signature=_sig_unary)
def pool(ctx: Context, a: Args) -> None:
    """(N, C, *space) -> (N, C, *space'): batch and channels carry, space is pinned."""
    x = ctx.axes(a.input)
    outs = a.out if a.out and not isinstance(a.out[0], int) else [a.out]
    for o in outs:
        for i, (ax, b) in enumerate(zip(x, o, strict=False)):
            if i < 2 and ctx.size(ax) == ctx.size(b):
                ctx.A.unify(ax, b)
            else:
                ctx.pin_all([ax, b], f"spatial axes of {a.node.name}")


@_rule("einsum", signature=_sig_einsum, aliases={"tensors": "operands"}, mixes_stream=True)
def einsum(ctx: Context, a: Args) -> None:
    """A labelled product: axes with one label are one atom (a size-1 one broadcasts);
    labels missing from the output are summed over (the fan-in of a weight operand)."""
    if not isinstance(a.equation, str):  # the sublist form: einsum(a, [0, 1], b, [1, 2])
        ctx.pin_all([*(ctx.axes(t) for t in a.node.all_input_nodes), a.out], "einsum sublists")
        return
    equation = a.equation.replace(" ", "")
    operands = list(a.operands)
    lhs, _, rhs = equation.partition("->")
    specs = lhs.split(",")
    axes = [ctx.axes(op) for op in operands]
    if "." in equation or len(specs) != len(axes) or any(x is None for x in axes):
        ctx.pin_all([*axes, a.out], f"einsum {equation!r} (ellipsis)")
        return
    if not rhs and "->" not in equation:
        rhs = "".join(sorted(c for c in set(lhs) - {","} if lhs.count(c) == 1))
    label: dict[str, int] = {}
    for spec, x in zip(specs, axes, strict=True):
        for c, ax in zip(spec, x, strict=True):
            if c not in label or ctx.size(label[c]) == 1:
                label[c] = ax  # the label's first axis, or one wider than a broadcast 1
            elif ctx.size(ax) == ctx.size(label[c]):
                ctx.A.unify(label[c], ax)
    for c, o in zip(rhs, a.out, strict=True):
        if ctx.size(o) == ctx.size(label[c]):
            ctx.A.unify(o, label[c])
    summed = [c for c in label if c not in rhs]
    if len(operands) == 2 and summed:
        c = summed[0]
        (s0, s1), (x0, x1) = specs, operands
        if c in s0 and c in s1:
            ctx.fan_in(x1, s1.index(c), x0, s0.index(c))
            ctx.fan_in(x0, s0.index(c), x1, s1.index(c))
            batch = [label[b] for b in rhs if b in s0 and b in s1]
            _record_contraction(ctx, a, batch, label[c], x0, x1)


assert operator.matmul.__name__ == "matmul"  # torch.fx records `@` as operator.matmul
