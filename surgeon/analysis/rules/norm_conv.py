"""Normalisations, convolutions and pooling: ops over channels and space.

`layer_norm`/`rms_norm` (weight and bias along the normalised axes), `batch_norm`/
`group_norm` (parameters along the channels, axis 1), `conv1d/2d/3d` (channels couple
through the weight, space is pinned), pooling and upsampling (space is pinned).
"""

from __future__ import annotations

from typing import Any

from torch import fx

from ..context import Context
from ..registry import Args
from ._common import _rule, _sig_any, _sig_unary


# -- signatures ---------------------------------------------------------------------------
def _sig_layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, **options): ...
def _sig_rms_norm(input, normalized_shape, weight=None, eps=None): ...
def _sig_conv(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1): ...


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
