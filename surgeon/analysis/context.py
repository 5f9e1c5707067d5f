"""What an op rule works with: the atoms found so far (`Dims`) and the `Context` around them.

This module knows no op. The table of rules (`registry.py`, `rules/`) imports it, and the
driver (`dims.py`) imports both; nothing here imports back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import fx

from ..frontends import Graph
from .atoms import Atoms

__all__ = ["Context", "Contraction", "Dims", "Literal", "source_line"]


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
    """What the op rules wrote while they ran over the graph: the atoms of every node's
    and every tensor's axes (`out`, `tensors`), and the facts the analysis reads after
    them: shape literals to rewrite, contractions (attention's products), broadcasts,
    splits, the fan-in axis of each weight, where neurons enter a weight matrix, and the
    routing of experts."""

    atoms: Atoms
    out: dict[fx.Node, Any] = field(default_factory=dict)  # node -> atoms (nested for tuples)
    tensors: dict[str, list[int]] = field(default_factory=dict)  # canonical name -> axis atoms
    literals: list[Literal] = field(default_factory=list)
    contractions: list[Contraction] = field(default_factory=list)
    # atoms made by broadcasting (expand): a tensor shared by several heads, etc.
    broadcasts: list[tuple[int, fx.Node]] = field(default_factory=list)
    splits: list[tuple[int, fx.Node]] = field(default_factory=list)  # axes cut into segments
    filled: set[fx.Node] = field(default_factory=set)  # tensors of one value (zeros_like)
    # (node, argument) where the argument lends only its shape or dtype (expand_as's other)
    lends_shape: set[tuple[fx.Node, fx.Node]] = field(default_factory=set)
    fan_in: dict[str, int] = field(default_factory=dict)  # weight -> axis summed over (inputs)
    # (activation, axis) entering a weight matrix along its fan-in: where neurons are scored
    inputs_of_weights: list[tuple[fx.Node, int]] = field(default_factory=list)
    # node -> its arguments by name, as its rule saw them (`registry.Args`)
    args: dict[fx.Node, Any] = field(default_factory=dict)
    outputs: list[int] = field(default_factory=list)  # axes of the graph's outputs
    # node (or (node, i) for a tuple's element) -> the atom whose positions its integer
    # values are (topk's indices: which experts a router chose)
    positions: dict[Any, int] = field(default_factory=dict)
    # atoms of tensors indexed by such positions (stacked expert weights): experts
    experts: list[int] = field(default_factory=list)
    # node -> (parameter node, {its axis: the parameter's axis}): weights picked by data
    # (each token's expert weights), products with them are not attention
    selected: dict[fx.Node, tuple[fx.Node, dict[int, int]]] = field(default_factory=dict)
    picked_by: dict[fx.Node, fx.Node] = field(default_factory=dict)  # selected -> its positions
    # (product, its selected operand): each routed row's product with its expert's weights
    expert_products: list[tuple[fx.Node, fx.Node]] = field(default_factory=list)
    # one position of an axis taken by a constant index (`h[:, :, 2]`): (node, atom, the
    # index, where it is written); a per-layer input reads its layer's position this way
    picks: list[tuple[fx.Node, int, int, tuple]] = field(default_factory=list)
    # values computed from sizes written in the graph alone (`arange(1, 1 + n)`): the
    # analysis pins their axes, but for heads, which may keep the heads whose values the
    # child's class computes again (`Group.derived`)
    derived: list[fx.Node] = field(default_factory=list)


def source_line(node: fx.Node) -> str:
    """`file:line` of the user code a node came from, or its name when unknown."""
    trace = node.meta.get("stack_trace") or ""
    lines = [ln.strip() for ln in trace.splitlines() if ln.strip().startswith("File ")]
    if not lines:
        return "source unknown"
    parts = lines[-1].split(",")
    return f"{parts[0][5:].strip(chr(34))}:{parts[1].strip().removeprefix('line ')}"


class Context:
    """What a rule sees besides its arguments: the atoms of every value computed so far
    (`dims.out`), the union-find they live in (`A`), and helpers that relate them."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.dims = Dims(Atoms())
        self.A = self.dims.atoms
        self.dynamic: set[fx.Node] = set()  # nodes whose value depends on the graph's inputs
        self.understood: set[fx.Node] = set()  # positions the running rule followed

    def positions(self, x: Any) -> int | None:
        """The atom whose positions the integer values of `x` are (`Dims.positions`), the
        calling rule taking responsibility for them; None if they are not positions. Any
        rule that reads positions without asking pins their atom (the driver does)."""
        atom = self.dims.positions.get(x) if isinstance(x, fx.Node) else None
        if atom is not None:
            self.understood.add(x)
        return atom

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
        self,
        node: fx.Node,
        where: tuple | None,
        *atoms: int,
        kind: str = "size",
        bounded: bool = True,
    ) -> None:
        """Record that the argument at `where` (a path into `node.args`, see `Args.path`)
        states the sizes of `atoms`, so that the surgery rewrites it when they shrink."""
        if where is None:
            return  # the argument was left to its default: nothing written to rewrite
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
