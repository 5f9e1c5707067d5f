"""Run the op rules over a traced graph: atoms for every axis, parameter axes, shape literals."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from ..errors import UnsupportedOpError
from ..frontends import Graph, op_name
from .atoms import Atoms

__all__ = ["Dims", "Literal", "Contraction", "discover_dims", "source_line"]


@dataclass(frozen=True)
class Literal:
    """An argument of a node that states the size of axes, rewritten when they shrink.

    kind "size": the size of atoms[0] (a `view` size); "split": the sizes of the segments
    atoms (an int if all are equal); "slice" (start, end at the next position), "narrow"
    (start, length) and "index" (a Python slice object): a range whose atoms are
    (segment before it or -1, the range itself), `bounded` when it stops before the end.
    """

    node: fx.Node
    where: tuple  # path into node.args: (arg index,) or (arg index, list position)
    atoms: tuple[int, ...]
    kind: str = "size"
    bounded: bool = True


@dataclass(frozen=True)
class Contraction:
    """A product of two activations (attention scores, or the SDPA call itself)."""

    node: fx.Node
    batch: tuple[int, ...]  # atoms shared by both operands and the output (heads, batch)
    contracted: int  # the atom summed over (head_dim for q·k)
    operands: tuple[fx.Node, fx.Node]


@dataclass
class Dims:
    atoms: Atoms
    out: dict[fx.Node, Any] = field(default_factory=dict)  # node -> atoms (nested for tuples)
    tensors: dict[str, list[int]] = field(default_factory=dict)  # canonical name -> axis atoms
    literals: list[Literal] = field(default_factory=list)
    contractions: list[Contraction] = field(default_factory=list)
    # atoms made by broadcasting (expand): a tensor shared by several heads, etc.
    broadcasts: list[tuple[int, fx.Node]] = field(default_factory=list)
    splits: list[tuple[int, fx.Node]] = field(default_factory=list)  # axes cut into segments
    fan_in: dict[str, int] = field(default_factory=dict)  # weight -> axis summed over (inputs)
    # (activation, axis) entering a weight matrix along its fan-in: where neurons are scored
    inputs_of_weights: list[tuple[fx.Node, int]] = field(default_factory=list)


def source_line(node: fx.Node) -> str:
    """`file:line` of the user code a node came from, or its name when unknown."""
    trace = node.meta.get("stack_trace") or ""
    lines = [ln.strip() for ln in trace.splitlines() if ln.strip().startswith("File ")]
    if not lines:
        return "source unknown"
    parts = lines[-1].split(",")
    return f"{parts[0][5:].strip(chr(34))}:{parts[1].strip().removeprefix('line ')}"


def _shapes(val: Any) -> Any:
    """The shape structure of a node's value: a tuple of ints per tensor, nested like the value."""
    if isinstance(val, torch.Tensor):
        return tuple(int(s) for s in val.shape)
    if isinstance(val, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in val):
        return [_shapes(v) for v in val]
    return None


class Context:
    """What a rule sees: atoms of its inputs and fresh atoms of its output."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.dims = Dims(Atoms())
        self.A = self.dims.atoms
        self.dynamic: set[fx.Node] = set()  # nodes whose value depends on the graph's inputs

    def fresh(self, shape: Any) -> Any:
        if shape is None:
            return None
        if isinstance(shape, list):
            return [self.fresh(s) for s in shape]
        return [self.A.new(s) for s in shape]

    def axes(self, x: Any) -> list[int] | None:
        """Atoms of a tensor argument (a node), or None for scalars and non-tensors."""
        if isinstance(x, fx.Node):
            out = self.dims.out.get(x)
            if out is not None and (not out or isinstance(out[0], int)):
                return out
        return None

    def size(self, atom: int) -> int:
        return self.A.size[self.A.find(atom)]

    def literal(
        self, node: fx.Node, where: tuple, *atoms: int, kind: str = "size", bounded: bool = True
    ) -> None:
        self.dims.literals.append(Literal(node, where, tuple(atoms), kind, bounded))

    def fan_in(self, weight: Any, axis: int, activation: Any = None, act_axis: int = -1) -> None:
        """Record that `weight` (a parameter node) is contracted over its `axis` with axis
        `act_axis` of `activation`: the neurons that enter the weight matrix."""
        if (
            isinstance(weight, fx.Node)
            and weight.op == "get_attr"
            and weight.target in (self.graph.params)
        ):
            self.dims.fan_in[self.graph.params.canonical(weight.target)] = axis
            if isinstance(activation, fx.Node) and activation in self.dynamic:
                n = len(self.dims.out[activation])
                self.dims.inputs_of_weights.append((activation, act_axis % n))

    def broadcast(self, out: list[int], operand: list[int]) -> None:
        """Elementwise: align from the right; unify equal sizes, skip broadcast (size 1)."""
        for o, x in zip(reversed(out), reversed(operand), strict=False):
            if self.size(x) == self.size(o):
                self.A.unify(o, x)

    def pin_all(self, atoms: Any, why: str) -> None:
        if atoms is None:
            return
        if isinstance(atoms, int):
            self.A.pin(atoms, why)
            return
        for a in atoms:
            self.pin_all(a, why)


def rule_key(node: fx.Node) -> str:
    """The name rules are looked up by: `view` for aten.view.default, Tensor.view, ..."""
    t = node.target
    if node.op == "call_method":
        return t
    if isinstance(t, torch._ops.OpOverload):
        return t._overloadpacket.__name__
    return getattr(t, "__name__", str(t))


def discover_dims(graph: Graph) -> Dims:
    """Apply the rule of every node in order; raise `UnsupportedOpError` for an op without one."""
    from .rules import RULES

    ctx = Context(graph)
    for node in graph.graph.nodes:
        shape = _shapes(node.meta.get("val"))
        if node.op == "placeholder" or any(i in ctx.dynamic for i in node.all_input_nodes):
            ctx.dynamic.add(node)
        if node.op == "placeholder":
            ctx.dims.out[node] = ctx.fresh(shape)
            ctx.pin_all(ctx.dims.out[node], "graph input")
        elif node.op == "get_attr":
            ctx.dims.out[node] = axes = ctx.fresh(shape)
            name = graph.params.canonical(node.target) if node.target in graph.params else None
            if name is not None and axes is not None and node.users:
                if name in ctx.dims.tensors:
                    for a, b in zip(ctx.dims.tensors[name], axes, strict=True):
                        ctx.A.unify(a, b)
                else:
                    ctx.dims.tensors[name] = axes
        elif node.op == "output":
            for arg in node.all_input_nodes:
                ctx.pin_all(ctx.dims.out.get(arg), "graph output")
        elif node.op in ("call_function", "call_method"):
            if shape is None:
                continue  # no tensor comes out (sizes, asserts): nothing to couple
            rule = RULES.get(rule_key(node))
            if rule is None:
                raise UnsupportedOpError(
                    f"no rule for op {op_name(node)} at node {node.name} "
                    f"({source_line(node)}): add one to surgeon/analysis/rules.py "
                    "(see docs/op-rules.md)"
                )
            ctx.dims.out[node] = ctx.fresh(shape)
            rule(ctx, node)
        elif shape is not None:  # call_module (the guards of ep.module() return nothing)
            raise UnsupportedOpError(
                f"no rule for {node.op} node {node.name} ({source_line(node)}): "
                "trace through submodules (the fx frontend does) or use the export frontend"
            )
    return ctx.dims
