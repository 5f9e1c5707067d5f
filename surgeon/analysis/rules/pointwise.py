"""Element-wise ops and their kin: every tensor operand lines up with the output.

Element-wise and activation ops (broadcasting from the right), the additions a residual
stream is made of (`adds`), copies and casts (`same_values`), tensors made in the shape of
another (`zeros_like`, `new_ones`) or from sizes (`zeros`, `arange`), scans along one axis
(`cumsum`, `flip`, `triu`: that axis is pinned), and the ops that draw random numbers
(`random`).
"""

from __future__ import annotations

from typing import Any

from torch import fx

from ..context import Context
from ..registry import Args
from ._common import _dim, _lends_shape, _rule, _sig_any, _sig_shaped, _sig_unary
from .indexing import data_dependent


# -- signatures ---------------------------------------------------------------------------
def _sig_binary(input, other=None, *rest, **options): ...
def _sig_new_full(input, size, fill_value=None, **options): ...
def _sig_factory(*size, **options): ...
def _sig_full(size, fill_value=None, **options): ...


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
    "dropout",
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


def _sig_clamp(input, min=None, max=None, **options): ...
def _sig_clamp_min(input, min, **options): ...
def _sig_clamp_max(input, max, **options): ...


@_rule("clamp", signature=_sig_clamp)
@_rule("clamp_min", signature=_sig_clamp_min)
@_rule("clamp_max", signature=_sig_clamp_max)
def clamp(ctx: Context, a: Args) -> None:
    """Element-wise; of positions (`Dims.positions`: a router's expert ids) between bounds
    that hold every position of their axis (`ids.clamp_max(num_experts - 1)`, Ergo's
    guard), the same positions: a child with fewer positions keeps them in bounds too.
    Bounds that cut into the axis read the positions (the driver pins them)."""
    elementwise(ctx, a)
    atom = ctx.dims.positions.get(a.input) if isinstance(a.input, fx.Node) else None
    if atom is None:
        return
    low, high = a.get("min", None), a.get("max", None)
    number = (int, float)
    if low is not None and not (isinstance(low, number) and low <= 0):
        return
    if high is not None and not (isinstance(high, number) and high >= ctx.size(atom) - 1):
        return
    ctx.dims.positions[a.node] = ctx.positions(a.input)


# Copies: the values of the input as they are, so integer positions stay positions.
_COPIES = ("alias", "clone", "contiguous", "detach", "lift_fresh_copy")
_rule(*_COPIES, signature=_sig_any, same_values=True)(elementwise)


@_rule("zeros_like", "ones_like", "full_like", signature=_sig_any)
def filled_like(ctx: Context, a: Args) -> None:
    """One value in the shape of `input`: its axes, every position alike."""
    elementwise(ctx, a)
    ctx.dims.filled.add(a.node)
    _lends_shape(ctx, a.node, *a.node.all_input_nodes)


# `input + other`: element-wise, and the residual additions are among them.
_rule("add", "iadd", signature=_sig_binary, adds=True)(elementwise)


@_rule("to", "_to_copy", signature=_sig_unary, same_values=True)
@_rule("type_as", "type", signature=_sig_unary)
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


# -- scans: values that depend on positions along an axis ----------------------------------
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


# -- factories ----------------------------------------------------------------------------
@_rule("zeros", "ones", "empty", signature=_sig_factory)
@_rule("rand", "randn", signature=_sig_factory, random=True)
@_rule("full", signature=_sig_full)
def factory(ctx: Context, a: Args) -> None:
    """A new tensor of `size`: its ints state the output's axis sizes."""
    _size_literals(ctx, a)


@_rule("scalar_tensor", "tensor", signature=_sig_any)
def constant(ctx: Context, a: Args) -> None:
    """A tensor made from data: its axes are fresh and free."""


@_rule("meshgrid", "eye", signature=_sig_any)
def positions(ctx: Context, a: Args) -> None:
    """Positions 0, 1, ...: the output's axes are indices."""
    ctx.pin_all(a.out, "positions (arange)")


@_rule("arange", signature=_sig_any)
def arange(ctx: Context, a: Args) -> None:
    """Positions 0, 1, ...: the output's axis is an index. Of sizes written in the graph
    (no input of its own), it is a value derived from a size (`Dims.derived`: ALiBi's
    slopes, one per head, computed from the head count): the analysis
    pins it unless it is a heads group, which is cut only to heads whose values the
    child's class computes again (`surgeon/derived.py`)."""
    if a.node.all_input_nodes:
        ctx.pin_all(a.out, "positions (arange)")
    else:
        ctx.dims.derived.append(a.node)


# -- random draws -------------------------------------------------------------------------
# Ops whose output is drawn at random (`random`; `rand` and `randn` are factories above).
# A draw whose axes no cut size reaches (a masked autoencoder's noise per patch) is the
# same in parent and child when both run with one seed, as every check does
# (`Inputs.call`); `surgeon.prepare` refuses one along a width a plan may cut. The rules
# relate the axes as the ops' shapes do.
_RANDOM_ELEMENTWISE = (
    "bernoulli",
    "bernoulli_",
    "normal",
    "normal_",
    "uniform",
    "uniform_",
    "exponential_",
    "poisson",
    "native_dropout",
)
_rule(*_RANDOM_ELEMENTWISE, signature=_sig_any, random=True)(elementwise)
_rule("randint", signature=_sig_any, random=True)(constant)  # fresh axes
_rule("randperm", signature=_sig_any, random=True)(positions)  # a shuffle of positions
_rule("multinomial", signature=_sig_any, random=True)(data_dependent)  # indices drawn


@_rule("rand_like", "randn_like", "randint_like", signature=_sig_unary, random=True)
def random_like(ctx: Context, a: Args) -> None:
    """Values drawn in the shape of `input`: its axes, none of its values."""
    ctx.broadcast(a.out, ctx.axes(a.input))
    _lends_shape(ctx, a.node, a.input)
