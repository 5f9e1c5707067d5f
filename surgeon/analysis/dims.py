"""The driver: run the op rules over a traced graph, giving atoms for every axis, the
parameters' axes and the shape literals.

It reads the table (`rules/`, filled through `registry.py`) and the rule context
(`context.py`); neither imports this module. The names re-exported here (`Dims`,
`Literal`, `Contraction`, `source_line`, `rule_key`) are where the rest of the package
has always found them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from ..errors import UnsupportedOpError, first_line
from ..frontends import Graph, op_name
from .context import Context, Contraction, Dims, Literal, source_line
from .registry import bind, rule_key
from .rules import RULES  # the table, with the built-in rules in it

__all__ = ["Dims", "Literal", "Contraction", "discover_dims", "rule_key", "source_line"]


def _shapes(val: Any) -> Any:
    """The shape structure of a node's value: a tuple of ints per tensor, nested like the value."""
    if isinstance(val, torch.Tensor):
        return tuple(int(s) for s in val.shape)
    if isinstance(val, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in val):
        return [_shapes(v) for v in val]
    return None


def _op_label(node: fx.Node) -> str:
    """The op's full name, its namespace included (`aten.sort.default`, `mylib.myop.default`)."""
    t = node.target
    if isinstance(t, torch._ops.OpOverload):
        return f"{t._schema.name.replace('::', '.')}.{t._overloadname}"
    return op_name(node)


def unsupported(node: fx.Node) -> UnsupportedOpError:
    """The error for a call without a rule: the op, the node, the model's line, the fix."""
    return UnsupportedOpError(
        f"no rule for op {_op_label(node)} at node {node.name} ({source_line(node)}): "
        f'register one with surgeon.register_rule("{rule_key(node)}", ...) '
        "(see docs/op-rules.md)"
    )


def live_nodes(graph: fx.Graph) -> set[fx.Node]:
    """The nodes whose values reach the output, with the runtime shape checks (`_assert_*`)
    of such values: a value computed and never read (`inputs_embeds[:, :, -1]`,
    "needed for the shape only") is not."""

    def is_check(n: fx.Node) -> bool:
        name = getattr(n.target, "__name__", "")
        return n.op == "call_function" and name.lstrip("_").startswith("assert")

    def is_root(n: fx.Node) -> bool:  # kept for its own sake; random ops (SDPA) count as
        # impure in fx but are kept only for their users
        if n.op in ("output", "call_module"):
            return True
        return n.op == "call_function" and n.is_impure() and not n.users and not is_check(n)

    live: set[fx.Node] = set()
    stack = [n for n in graph.nodes if is_root(n)]
    while stack:
        n = stack.pop()
        if n not in live:
            live.add(n)
            stack.extend(n.all_input_nodes)
    checks = [n for n in graph.nodes if is_check(n) and all(i in live for i in n.all_input_nodes)]
    return live | set(checks)


def discover_dims(graph: Graph) -> Dims:
    """Apply the rule of every live node (`live_nodes`) in order; raise
    `UnsupportedOpError` for an op without one."""
    ctx = Context(graph)
    live = live_nodes(graph.graph)
    for node in graph.graph.nodes:
        if node.op in ("call_function", "call_method") and node not in live:
            continue
        try:
            shape = _shapes(node.meta.get("val"))
        except Exception as e:  # noqa: BLE001 - an unbacked size: torch raises its own types
            raise UnsupportedOpError(
                f"node {node.name} ({source_line(node)}) has a size that depends on the data "
                f"({first_line(e, 80)}): surgeon needs sizes fixed by the input shapes"
            ) from e
        if node.op == "placeholder" or any(i in ctx.dynamic for i in node.all_input_nodes):
            ctx.dynamic.add(node)
        if node.op == "placeholder":
            ctx.dims.out[node] = ctx.fresh(shape)
            ctx.pin_all(ctx.dims.out[node], "graph input")
        elif node.op == "get_attr":
            _parameter(ctx, node, shape)
        elif node.op == "output":
            for arg in node.all_input_nodes:  # pinned by the analysis (`_output_leaves`)
                ctx.dims.outputs += _flat(ctx.dims.out.get(arg))
            _follow_positions(ctx, node, "output")
        elif node.op in ("call_function", "call_method"):
            if shape is None:
                continue  # no tensor comes out (sizes, asserts): nothing to couple
            rule = RULES.get(rule_key(node))
            if rule is None:
                raise unsupported(node)
            ctx.dims.out[node] = ctx.fresh(shape)
            ctx.dims.args[node] = args = bind(rule, node, ctx.dims.out[node])
            rule.fn(ctx, args)
            _follow_positions(ctx, node, rule_key(node), rule.same_values)
        elif shape is not None:  # call_module: one that returns nothing couples nothing
            raise UnsupportedOpError(
                f"no rule for {node.op} node {node.name} ({source_line(node)}): "
                "trace through submodules (the fx frontend does) or use the export frontend"
            )
    ctx.A.break_cycles()
    return ctx.dims


def _follow_positions(ctx: Context, node: fx.Node, key: str, same_values: bool = False) -> None:
    """Positions (`Dims.positions`) go on through ops that keep the values (`same_values`
    in the table: their integer output holds the values of their input), through the
    element of a tuple and through `cat` of positions of one axis; read by a rule that
    did not ask for them (`Context.positions`), their atom is pinned: the reader's
    meaning of them is unknown."""
    positions = ctx.dims.positions
    if key == "getitem" and isinstance(node.args[1], int):
        atom = positions.get((node.args[0], node.args[1]))
        if atom is not None:
            positions[node] = atom
    elif key in ("cat", "concat") and _all_positions(node.all_input_nodes, positions):
        atoms = {ctx.A.find(positions[i]) for i in node.all_input_nodes}
        if len(atoms) == 1:  # picks of one axis side by side (a router's first and second)
            positions[node] = [ctx.positions(i) for i in node.all_input_nodes][0]
    elif key in _PARTS and node.args and node.args[0] in positions:
        val = node.meta.get("val")  # the parts of positions: positions of the same axis
        if isinstance(val, (list, tuple)):
            atom = ctx.positions(node.args[0])
            positions.update({(node, i): atom for i in range(len(val))})
    elif same_values and node.all_input_nodes:
        source, val = node.all_input_nodes[0], node.meta.get("val")
        if source in positions and isinstance(val, torch.Tensor) and not val.is_floating_point():
            positions[node] = ctx.positions(source)
    for i in node.all_input_nodes:
        if i in positions and i not in ctx.understood:
            ctx.A.pin(positions[i], f"positions read by {node.name} ({source_line(node)})")
    ctx.understood.clear()


# Ops whose outputs are parts of their input (a tuple of tensors): values kept as they are.
_PARTS = ("unbind", "split", "split_with_sizes", "chunk", "tensor_split")


def _all_positions(nodes: list[fx.Node], positions: dict) -> bool:
    return bool(nodes) and all(i in positions for i in nodes)


def _flat(atoms: Any) -> list[int]:
    if atoms is None:
        return []
    if isinstance(atoms, int):
        return [atoms]
    return [a for x in atoms for a in _flat(x)]


def _parameter(ctx: Context, node: fx.Node, shape: Any) -> None:
    """A tensor of the model: one set of atoms per canonical name (tied ones share them)."""
    graph = ctx.graph
    ctx.dims.out[node] = axes = ctx.fresh(shape)
    name = graph.params.canonical(node.target) if node.target in graph.params else None
    if name is not None and axes is not None and node.users:
        if name in ctx.dims.tensors:
            for a, b in zip(ctx.dims.tensors[name], axes, strict=True):
                ctx.A.unify(a, b)
        else:
            ctx.dims.tensors[name] = axes
