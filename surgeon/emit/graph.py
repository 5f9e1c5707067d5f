"""Build the child as a trainable fx GraphModule: cut tensors, rewrite shape literals."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import fx, nn

from ..analysis.dims import Literal
from ..passes.state import SurgeryState

__all__ = ["emit_graph"]


def emit_graph(state: SurgeryState) -> fx.GraphModule:
    """The child: a copy of the parent's graph with every shape literal rewritten, holding
    new Parameters (cut, permuted, rescaled copies): training it never changes the parent."""
    parent = state.graph.module
    shared = {id(t): t for t in (*parent.parameters(), *parent.buffers())}
    root = copy.deepcopy(parent, shared)  # the graph and modules, not the weights
    nodes = {n.name: n for n in root.graph.nodes}
    for lit in state.analysis.dims.literals:
        _rewrite(state, nodes[lit.node.name], lit)
    _set_tensors(state, root)
    child = fx.GraphModule(root, root.graph, type(parent).__name__)
    child.eval()
    return child


def _set_tensors(state: SurgeryState, root: nn.Module) -> None:
    """Give the child its own copy of every tensor; tied names share one new Parameter."""
    table, dims = state.graph.params, state.analysis.dims
    done: dict[str, torch.Tensor] = {}
    names = [n for n, _ in root.named_parameters(remove_duplicate=False)]
    names += [n for n, _ in root.named_buffers(remove_duplicate=False)]
    names += [n.target for n in root.graph.nodes if n.op == "get_attr"]
    for name in dict.fromkeys(names):
        canonical = table.canonical(name) if name in table else name
        if canonical not in done:
            axes = dims.tensors.get(canonical)
            done[canonical] = _child_tensor(state, root, name, axes, state.scale.get(canonical))
        _assign(root, name, done[canonical])


def _child_tensor(state: SurgeryState, root: nn.Module, name: str, axes, scale) -> torch.Tensor:
    owner, _, attr = name.rpartition(".")
    module = root.get_submodule(owner) if owner else root
    tensor = getattr(module, attr)
    value = tensor.detach()
    for axis, atom in enumerate(axes or ()):
        if state.new_size(atom) != value.shape[axis] or _moved(state, atom):
            value = value.index_select(axis, state.positions(atom))
    value = value.clone() if scale is None else value * scale
    if isinstance(tensor, nn.Parameter):
        return nn.Parameter(value, requires_grad=tensor.requires_grad)
    return value


def _moved(state: SurgeryState, atom: int) -> bool:
    atoms = state.analysis.atoms
    return any(leaf in state.select for leaf in atoms.leaves(atom))


def _assign(root: nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, attr = name.rpartition(".")
    module = root.get_submodule(owner) if owner else root
    if isinstance(value, nn.Parameter):
        module._parameters[attr] = value
    elif attr in module._buffers:
        module._buffers[attr] = value
    else:
        setattr(module, attr, value)


def _rewrite(state: SurgeryState, node: fx.Node, lit: Literal) -> None:
    """Set the literal's argument to the child's sizes, where they differ."""
    size = state.new_size
    old = state.analysis.atoms
    if lit.kind == "size":
        new = size(lit.atoms[0])
        if new != old.size[old.find(lit.atoms[0])]:
            _set_arg(node, lit.where, new)
    elif lit.kind == "split":
        sizes = [size(a) for a in lit.atoms]
        if sizes != [old.size[old.find(a)] for a in lit.atoms]:
            if len(set(sizes)) == 1:
                _set_arg(node, lit.where, sizes[0])
            else:
                _set_arg(node, lit.where, sizes)
                if isinstance(node.target, torch._ops.OpOverload):
                    node.target = torch.ops.aten.split_with_sizes.default
    else:
        _rewrite_range(state, node, lit)


def _rewrite_range(state: SurgeryState, node: fx.Node, lit: Literal) -> None:
    before, mid = lit.atoms
    start = state.new_size(before) if before >= 0 else None
    stop = (start or 0) + state.new_size(mid)
    if lit.kind == "index":
        old: slice = _get_arg(node, lit.where)
        new = slice(
            start if start is not None else old.start, stop if lit.bounded else old.stop, old.step
        )
        _set_arg(node, lit.where, new)
        return
    index = lit.where[0]
    if start is not None:
        _set_arg(node, (index,), start)
    if lit.kind == "narrow":
        _set_arg(node, (index + 1,), state.new_size(mid))
    elif lit.bounded:
        _set_arg(node, (index + 1,), stop)


def _get_arg(node: fx.Node, where: tuple) -> Any:
    value = node.args[where[0]]
    return value[where[1]] if len(where) > 1 else value


def _set_arg(node: fx.Node, where: tuple, value: Any) -> None:
    args = list(node.args)
    if len(where) == 1:
        args[where[0]] = value
    else:
        inner = args[where[0]]
        items = list(inner)
        items[where[1]] = value
        args[where[0]] = tuple(items) if isinstance(inner, tuple) else items
    node.args = tuple(args)
