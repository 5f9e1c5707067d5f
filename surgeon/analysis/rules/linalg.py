"""Products with weights and between activations: `linear`, `matmul`, `einsum`, SDPA.

The contracted axes are one atom; an op that mixes an activation's features with weights
is marked `mixes_stream` (a block's computation f(x), not its skip x), and records the
fan-in of its weight; a product of two activations is recorded as a contraction
(attention). `embedding` reads rows of a table by ids (`lookup`).
"""

from __future__ import annotations

import operator
from typing import Any

from ..context import Context, Contraction
from ..registry import Args
from ._common import _rule


# -- signatures ---------------------------------------------------------------------------
def _sig_linear(input, weight, bias=None): ...
def _sig_addmm(input, mat1, mat2, *, beta=1, alpha=1): ...
def _sig_matmul(input, other): ...
def _sig_baddbmm(input, batch1, batch2, *, beta=1, alpha=1): ...
def _sig_sdpa(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
    enable_gqa=False,
): ...  # fmt: skip
def _sig_embedding(input, weight, padding_idx=None, *rest, **options): ...
def _sig_einsum(equation=None, *operands): ...


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


@_rule("einsum", signature=_sig_einsum, aliases={"tensors": "operands"}, mixes_stream=True)
def einsum(ctx: Context, a: Args) -> None:
    """A labelled product: axes with one label are one atom (a size-1 one broadcasts);
    labels missing from the output are summed over (the fan-in of a weight operand)."""
    if not isinstance(a.equation, str):  # the sublist form: einsum(a, [0, 1], b, [1, 2])
        ctx.pin_all([*(ctx.axes(t) for t in a.node.all_input_nodes), a.out], "einsum sublists")
        return
    equation = a.equation.replace(" ", "")
    operands = list(a.operands)
    lhs, arrow, rhs = equation.partition("->")
    specs = lhs.split(",")
    axes = [ctx.axes(op) for op in operands]
    if len(specs) != len(axes) or any(x is None for x in axes):
        ctx.pin_all([*axes, a.out], f"einsum {equation!r} (operands)")
        return
    if "." in equation:  # `...` as labels of its own (LongT5's "...qhd,...khd->...hqk")
        expanded = _expand_ellipsis(specs, rhs, bool(arrow), [len(x) for x in axes])
        if expanded is None:
            ctx.pin_all([*axes, a.out], f"einsum {equation!r} (ellipsis)")
            return
        specs, rhs = expanded
        lhs = ",".join(specs)
    elif not rhs and not arrow:
        rhs = "".join(sorted(c for c in set(lhs) - {","} if lhs.count(c) == 1))
    if any(len(spec) != len(x) for spec, x in zip(specs, axes, strict=True)):
        ctx.pin_all([*axes, a.out], f"einsum {equation!r} (ranks)")
        return
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


def _expand_ellipsis(
    specs: list[str], rhs: str, arrow: bool, ranks: list[int]
) -> tuple[list[str], str] | None:
    """An equation's `...` written out as labels of their own, aligned from the right
    across the operands as broadcasting aligns them; None where it cannot be read."""
    fresh = [chr(0x100 + i) for i in range(max(ranks, default=0))]  # no letter of einsum's
    counts = []
    for spec, rank in zip(specs, ranks, strict=True):
        if spec.count("...") > 1 or spec.replace("...", "").count(".") or rank < len(spec) - 3:
            return None
        counts.append(rank - (len(spec) - 3) if "..." in spec else 0)
    n = max(counts, default=0)
    out = [
        spec.replace("...", "".join(fresh[n - k : n]))
        for spec, k in zip(specs, counts, strict=True)
    ]
    if not arrow:  # implicit output: the ellipsis, then the labels used once, sorted
        letters = "".join(s.replace("...", "") for s in specs)
        return out, "".join(fresh[:n]) + "".join(
            sorted(c for c in set(letters) if letters.count(c) == 1)
        )
    if rhs.count("...") > 1 or rhs.replace("...", "").count("."):
        return None
    return out, rhs.replace("...", "".join(fresh[:n]))


assert operator.matmul.__name__ == "matmul"  # torch.fx records `@` as operator.matmul
