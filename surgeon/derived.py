"""Heads whose values the forward computes from their count (issue 32).

A forward may compute a value per head from the head count alone, from sizes written in
the graph (ALiBi's slopes: Bloom's and MPT's `2 ** (-8 (i + 1) / n)` for `n` heads, from an
`arange`). The child's class computes them again from its own count, so heads can be cut
only to heads whose values it computes again: child head j must be a parent head that
holds, in every such tensor, the value the child's class computes at j. The analysis marks
these heads (`Group.derived`); here the values are compared: the parent's, computed on the
CPU from the constants of its graph, and the child's, from the graph of its class built
from the child's config on the meta device (the same tensors: the same line of the
model's code, op and occurrence). Where several parent heads hold a child head's value,
importance chooses (`match`). The same holds for a width that weights read along values
computed from sizes (XLNet's relative positions: sines | cosines of `d_model / 2`
frequencies that its `r` projection reads, cut with the hidden size): the child's class
computes its own frequencies, and the parent's positions that hold them are kept (every
other one, at half the width). Nothing here knows a model family.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import fx, nn

from .analysis.context import source_line
from .errors import PlanError

__all__ = ["allowed_positions", "match"]

_TRIES = 8  # head counts tried, where none of the asked one's sets works, to name those that do


def match(allowed: list[list[int]], scores: torch.Tensor | None = None) -> list[int]:
    """A distinct parent position for each child position among its `allowed` ones (a
    bipartite matching, the higher-scoring candidates tried first); raises ValueError
    where there is none."""
    order = [
        sorted(c, key=lambda i: -float(scores[i])) if scores is not None else list(c)
        for c in allowed
    ]
    owner: dict[int, int] = {}

    def place(j: int, seen: set[int]) -> bool:
        for i in order[j]:
            if i in seen:
                continue
            seen.add(i)
            if i not in owner or place(owner[i], seen):
                owner[i] = j
                return True
        return False

    for j in range(len(order)):
        if not place(j, set()):
            raise ValueError(f"no parent position left for child position {j}")
    chosen = {j: i for i, j in owner.items()}
    return [chosen[j] for j in range(len(order))]


def _constants(graph: fx.Graph) -> set[fx.Node]:
    """The nodes computed from sizes written in the graph alone (no input, no tensor)."""
    out: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "call_function" and all(i in out for i in node.all_input_nodes):
            out.add(node)
    return out


def _frontier(graph: fx.Graph) -> dict[tuple, list[fx.Node]]:
    """Constant nodes read by a computation on the inputs, by (the model's line, op),
    in graph order: how the parent's and the child's graphs name the same tensors."""
    constants = _constants(graph)
    out: dict[tuple, list[fx.Node]] = {}
    for node in graph.nodes:
        if node in constants and any(u not in constants for u in node.users):
            if isinstance(node.meta.get("val"), torch.Tensor):
                out.setdefault((source_line(node), str(node.target)), []).append(node)
    return out


def _value(node: fx.Node, memo: dict[fx.Node, Any]) -> Any:
    """A constant node's value, computed on the CPU (the graph may be on the meta device)."""
    if node not in memo:

        def arg(x: Any) -> Any:
            if isinstance(x, fx.Node):
                return _value(x, memo)
            if isinstance(x, torch.device):
                return torch.device("cpu")
            if isinstance(x, (list, tuple)):
                return type(x)(arg(y) for y in x)
            return x

        args = arg(tuple(node.args))
        kwargs = {k: arg(v) for k, v in node.kwargs.items()}
        memo[node] = node.target(*args, **kwargs)
    return memo[node]


def _candidates(
    parent: list[tuple], child: list[torch.Tensor], n: int, size: int
) -> list[list[int]]:
    """For each of the child's `n` positions, the parent positions (of `size`) whose values
    equal the child's there, in every tensor compared (`parent`: (value, axis, the axis's
    positions of each parent position, those of each child position at `n`))."""
    out = [list(range(size)) for _ in range(n)]
    for (p, axis, mine, theirs), c in zip(parent, child, strict=True):
        p, c = p.movedim(axis, 0).double(), c.movedim(axis, 0).double()
        rows = torch.stack([p[i] for i in mine(size)])  # (size, axis positions of one, ...)
        for j, at in enumerate(theirs(n)):
            same = torch.isclose(rows, c[at].unsqueeze(0), rtol=1e-6, atol=0).flatten(1).all(1)
            out[j] = [i for i in out[j] if bool(same[i])]
    return out


def _along(atoms, atom: int, group: int):
    """For an axis of `atom` with `group` among its leaves: (the axis positions of each
    of the parent's positions of the group; those of each of the child's, at `n` kept),
    each a list of index tensors: a group that is the whole axis, a segment of it or a
    factor (the sines | cosines of one frequency, XLNet's relative positions)."""
    size = atoms.size[group]
    where = torch.empty(atoms.size[atoms.find(atom)], dtype=torch.long)
    for i in range(size):
        where[atoms.positions(atom, {group: torch.tensor([i])})] = i

    def mine(_: int) -> list[torch.Tensor]:
        return [atoms.positions(atom, {group: torch.tensor([i])}) for i in range(size)]

    def theirs(n: int) -> list[torch.Tensor]:
        at = where[atoms.positions(atom, {group: torch.arange(n)})]
        return [(at == j).nonzero().flatten() for j in range(n)]

    return mine, theirs


def _child_values(model: nn.Module, config: Any, inputs: Any, keys: list) -> list | None:
    """The values of the tensors at `keys` ((model line, op), occurrence) in the graph of
    `model`'s class built from `config` on the meta device (on the CPU, uninitialised,
    where it cannot be traced there); None where it cannot be traced or lacks one of them."""
    for device in ("meta", "cpu"):
        try:
            graph = _child_graph(model, config, inputs, device)
            frontier = _frontier(graph)
            memo: dict[fx.Node, Any] = {}
            out = []
            for key, k in keys:
                nodes = frontier.get(key, [])
                out.append(_value(nodes[min(k, len(nodes) - 1)], memo) if nodes else None)
        except Exception:  # noqa: BLE001 - a class that cannot be built or traced there
            continue
        return None if any(v is None for v in out) else out
    return None


def _child_graph(model: nn.Module, config: Any, inputs: Any, device: str) -> fx.Graph:
    from .frontends.graph import built_on_meta
    from .frontends.twin import traced

    if device == "meta":
        return traced(built_on_meta(lambda: type(model)(config)), inputs).graph
    from transformers.initialization import no_init_weights

    with no_init_weights():
        child = type(model)(config)
    return traced(child, inputs).graph


def _compared(parent, group: int) -> tuple[list, list]:
    """The parent's constant tensors read along `group` (one axis holding it, alone or
    with copies of itself: sines | cosines): their (key, occurrence) in the graph and
    (value, axis, the axis positions of each parent position, of each child position)."""
    analysis = parent.analysis
    atoms, dims = analysis.atoms, analysis.dims
    keys, values, memo = [], [], {}
    for key, nodes in _frontier(parent.graph.graph).items():
        for k, node in enumerate(nodes):
            axes = dims.out.get(node)
            if not axes or not isinstance(axes[0], int):
                continue
            for axis, atom in enumerate(axes):
                leaves = [x for x in atoms.leaves(atom) if atoms.size[x] > 1]
                if group in leaves:
                    if set(leaves) != {group}:
                        return [], []  # the group is part of a wider axis: not compared
                    keys.append((key, k))
                    values.append((_value(node, memo), axis, *_along(atoms, atom, group)))
    return keys, values


def allowed_positions(parent, state, config: Any) -> dict[int, list[list[int]]]:
    """For each derived group the plan cuts (`Group.derived`): the parent positions each
    child position may hold, from the values the child's class computes (`config`: the
    child's). `PlanError`, in one line, where no set of the parent's positions holds
    them, naming the head counts that work (of heads)."""
    analysis = parent.analysis
    out = {}
    for group, k in state.keep.items():
        g = analysis.groups[group]
        if not g.derived:
            continue
        size = analysis.atoms.size[group]
        keys, values = _compared(parent, group)
        heads = g.role in ("heads", "kv_groups")
        what = (
            f"target.num_heads = {k}"
            if g.role == "heads"
            else f"target.num_kv_heads = {k}"
            if heads
            else f"{g.members[0][0]} (axis {g.members[0][1]}, cut to {k} with the sizes "
            "its config derives it from)"
        )
        per = "a value per head from the head count" if heads else "its values from sizes"
        if config is None or not keys:
            raise PlanError(
                f"{what} cannot be cut here: the forward computes {per} (positions "
                "(arange)), and there is no config class to rebuild them from"
            )
        where = keys[0][0][0].rpartition("/")[2]
        allowed = _allowed(parent.model, config, parent.graph.inputs, keys, values, k, size)
        if allowed is None and not heads:
            raise PlanError(
                f"{what} cannot be cut here: the forward computes {per} ({where}), and "
                f"{type(parent.model).__name__} with this child's sizes computes values "
                f"that no {k} of the parent's {size} positions hold: leave the sizes it "
                "follows (hidden_size) uncut"
            )
        if allowed is None:
            works = _counts_that_work(parent, keys, values, g, k, size)
            raise PlanError(
                f"{what} cannot be cut here: the forward computes {per} ({where}), and "
                f"{type(parent.model).__name__} with {k} heads computes values that no {k} "
                f"of the parent's {size} heads hold; head counts that work: "
                f"{', '.join(map(str, works)) or 'none of those tried'}"
            )
        out[group] = allowed
    return out


def _allowed(model, config, inputs, keys, values, n: int, size: int):
    """The candidates of each child position at `n` heads (`config`), or None."""
    child = _child_values(model, config, inputs, keys)
    if child is None:
        return None
    for (p, axis, _, theirs), c in zip(values, child, strict=True):
        want = list(p.shape)
        want[axis] = sum(len(at) for at in theirs(n))
        if list(c.shape) != want:
            return None
    allowed = _candidates(values, child, n, size)
    try:
        match(allowed)
    except ValueError:
        return None
    return allowed


def _counts_that_work(parent, keys, values, g, asked: int, size: int) -> list[int]:
    """Head counts below the parent's whose values the parent's heads hold: its config
    with only its head counts changed, tried from the largest (a few of them)."""
    from .fit import _set_sizes

    out = []
    hidden = {"hidden_size": parent.analysis.hidden_size}
    for n in [n for n in range(size - 1, 0, -1) if n != asked][:_TRIES]:
        config = copy.deepcopy(parent.model.config)
        sizes, full = {"num_heads": n, "num_kv_heads": n}, {"num_heads": size, "num_kv_heads": size}
        try:
            _set_sizes(config, {**sizes, **hidden}, {**full, **hidden}, hidden["hidden_size"])
        except Exception:  # noqa: BLE001 - a config that refuses this count
            continue
        if _allowed(parent.model, config, parent.graph.inputs, keys, values, n, size):
            out.append(n)
    return out
