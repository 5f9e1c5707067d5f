"""The built-in op rules: for each op family, which axes of its inputs and output are one atom.

One module per family, each registering its rules in the table (`registry.RULES`) when it
is imported; importing this package imports them all:

- `pointwise.py`: element-wise and activation ops, additions, copies and casts,
  factories and `*_like`, scans (`cumsum`, `flip`, `triu`), random draws;
- `reductions.py`: `sum`, `mean`, `var`, `norm`, `max`/`min`, ...;
- `shape.py`: views (`view`, `flatten`), `expand`, reorders (`transpose`, `permute`),
  cuts and joins (`split`, `chunk`, `cat`, `stack`), slices (`slice`, `narrow`,
  `select`), `repeat`, `pad`;
- `indexing.py`: `index`, `getitem`, `gather`, `index_select`, `index_put`,
  `masked_scatter`, windows (`unfold`, `im2col`), data-dependent ops (`scatter`, ...);
- `routing.py`: `sort`, `topk` (orders along an axis, a router's choice of experts);
- `linalg.py`: `linear`, `addmm`, `matmul`/`bmm`, `baddbmm`, `einsum`, SDPA, `embedding`;
- `norm_conv.py`: `layer_norm`/`rms_norm`, `batch_norm`/`group_norm`, convolutions,
  pooling;
- `_common.py`: the signatures and helpers that several families share.

A rule `fn(ctx, a)` reads the atoms of its inputs (`ctx.axes(a.input)`) and the fresh atoms
of its output (`a.out`, made from `node.meta["val"]`), and unifies, refines or pins them.
`a` holds the node's arguments by the names of the family's signature (the small
functions `_sig_*`), the same in both frontends: see `registry.py`. A rule does not look
at the op's name; ops that differ are separate families. What an op is besides its rule
(`mixes_stream`, `lookup`, `adds`, `random`, `same_values`) is stated where it registers.

There is no default: an op missing here is an `UnsupportedOpError`. To add one, use
`surgeon.register_rule` (see `docs/op-rules.md`).
"""

from __future__ import annotations

from ..registry import RULES, register_rule
from .indexing import (
    data_dependent,
    gather,
    getattr_,
    getitem,
    im2col,
    index,
    index_put,
    index_select,
    masked_scatter,
    unfold,
)
from .linalg import addmm, baddbmm, einsum, embedding, linear, matmul, sdpa
from .norm_conv import batch_norm, conv, group_norm, layer_norm, pool
from .pointwise import (
    ELEMENTWISE,
    arange,
    constant,
    diff,
    elementwise,
    factory,
    filled_like,
    first_operand_only,
    flip,
    new_factory,
    random_like,
    scan,
    triangle,
)
from .reductions import extremum, reduction
from .routing import sort, topk
from .shape import (
    cat,
    chunk,
    expand,
    expand_like,
    glu,
    matrix_transpose,
    movedim,
    narrow,
    pad,
    permute,
    regroup,
    repeat,
    repeat_interleave,
    reverse_axes,
    select,
    slice_,
    split,
    stack,
    t,
    transpose,
    unbind,
    unflatten,
    view,
    view_as_complex,
    view_as_real,
)

__all__ = [
    "RULES",
    "register_rule",
    "ELEMENTWISE",
    "elementwise",
    "filled_like",
    "first_operand_only",
    "new_factory",
    "scan",
    "diff",
    "flip",
    "triangle",
    "factory",
    "constant",
    "arange",
    "random_like",
    "reduction",
    "extremum",
    "view",
    "unflatten",
    "regroup",
    "expand",
    "expand_like",
    "transpose",
    "t",
    "matrix_transpose",
    "reverse_axes",
    "permute",
    "movedim",
    "glu",
    "split",
    "chunk",
    "unbind",
    "view_as_complex",
    "view_as_real",
    "cat",
    "slice_",
    "narrow",
    "select",
    "stack",
    "repeat_interleave",
    "repeat",
    "pad",
    "index_select",
    "gather",
    "unfold",
    "im2col",
    "data_dependent",
    "index_put",
    "masked_scatter",
    "index",
    "getitem",
    "getattr_",
    "sort",
    "topk",
    "linear",
    "addmm",
    "matmul",
    "baddbmm",
    "sdpa",
    "embedding",
    "einsum",
    "layer_norm",
    "conv",
    "batch_norm",
    "group_norm",
    "pool",
]
