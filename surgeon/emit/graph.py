"""Build the child as a trainable fx GraphModule: cut tensors, rewrite shape literals."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import fx, nn

from ..analysis.dims import Literal, live_nodes
from ..passes.state import SurgeryState

__all__ = ["axis_cuts", "cut_tensor", "emit_graph", "take"]


def emit_graph(state: SurgeryState) -> fx.GraphModule:
    """The child: a copy of the parent's graph with every shape literal rewritten, holding
    new Parameters (cut, permuted, rescaled copies): training it never changes the parent."""
    parent = state.graph.module
    shared = {id(t): t for t in (*parent.parameters(), *parent.buffers())}
    root = copy.deepcopy(parent, shared)  # the graph and modules, not the weights
    nodes = {n.name: n for n in root.graph.nodes}
    for lit in state.analysis.dims.literals:
        _rewrite(state, nodes[lit.node.name], lit)
    _set_top_k(state, nodes)
    _cut_derived(state, root.graph, nodes)
    _set_tensors(state, root)
    _move_picks(state, nodes)
    _edit_depth(state, root, nodes)
    _drop_blocks(state, nodes)
    child = fx.GraphModule(root, root.graph, type(parent).__name__)
    # torch.load re-traces a saved graph's code with its tracer's class: torch.export's
    # cannot be made again without its arguments, fx's plain tracer reads the code as well
    child._tracer_cls = None
    child.eval()
    return child


def _set_top_k(state: SurgeryState, nodes: dict[str, fx.Node]) -> None:
    """The routers' top-k over all their experts picks the plan's `num_experts_per_tok`."""
    if state.top_k is None:
        return
    for layer in state.analysis.layers:
        for node, _, whole in state.analysis.top_k(layer):
            if whole and "topk" in str(node.target):
                mine = nodes[node.name]
                mine.args = (mine.args[0], state.top_k, *mine.args[2:])


def _edit_depth(state: SurgeryState, root: nn.Module, nodes: dict[str, fx.Node]) -> list[str]:
    """Drop and duplicate whole layers; returns the module path of each child layer (a
    duplicate is a copy of its layer's module, with its own Parameters)."""
    layers = state.analysis.layers
    order = list(range(len(layers))) if state.layers is None else state.layers
    graph, names, alias = root.graph, [], {}

    def resolve(node: fx.Node) -> fx.Node:
        while node in alias:
            node = alias[node]
        return node

    for i, layer in enumerate(layers):
        start, end = nodes[layer.input.name], nodes[layer.output.name]
        copies = order.count(i)
        if copies == 0:  # x + f(x) -> x, for the whole layer (each time it is applied)
            for first, last in layer.spans or [(layer.input, layer.output)]:
                start, end = nodes[first.name], nodes[last.name]
                end.replace_all_uses_with(resolve(start))
                alias[end] = resolve(start)
            continue
        names.append(layer.name)
        last = end
        for _ in range(1, copies):
            users = list(last.users)
            module = _copy_module(root, layer.name)
            new_end = _copy_layer(graph, layer, nodes, module, last)
            for user in users:
                user.replace_input_with(last, new_end)
            names.append(module)
            last = new_end
    _remove_dead(graph)  # dropped layers, and values the parent computed and never read
    return names


def _cut_derived(state: SurgeryState, graph: fx.Graph, nodes: dict[str, fx.Node]) -> None:
    """Values computed from sizes alone (`Dims.derived`: an `arange`) along a group the
    child cuts are taken at the positions it keeps, as a tensor of the parent would be
    (the kept heads' ALiBi slopes): an `index_select` after the node."""
    atoms = state.analysis.atoms
    for derived in state.analysis.dims.derived:
        axes = state.analysis.dims.out.get(derived) or []
        if len(axes) != 1 or not _moved(state, axes[0]):
            continue
        node = nodes[derived.name]
        kept = atoms.positions(axes[0], state.select).tolist()
        device = node.kwargs.get("device")
        with graph.inserting_after(node):
            where = graph.call_function(
                torch.tensor, (kept,), {"dtype": torch.long, "device": device}
            )
        with graph.inserting_after(where):
            taken = graph.call_function(torch.ops.aten.index_select.default, (node, 0, where))
        node.replace_all_uses_with(taken, delete_user_cb=lambda user, t=taken: user is not t)


def _drop_blocks(state: SurgeryState, nodes: dict[str, fx.Node]) -> None:
    """Remove the residual branch of each dropped block (`x + f(x)` becomes `x`: every
    use of the addition reads its other term) and what only the branch used; its weights
    leave the child with the nodes that read them."""
    blocks = state.dropped_blocks()
    if not blocks:
        return
    dims = state.analysis.dims
    for block in blocks:
        a, b = dims.args[block.add].input, dims.args[block.add].other
        skip = a if b is block.branch else b  # the skip as added (a scaled skip stays scaled)
        add = nodes[block.add.name]
        add.replace_all_uses_with(nodes[skip.name])
    _remove_dead(add.graph)


def _move_picks(state: SurgeryState, nodes: dict[str, fx.Node]) -> None:
    """A layer's constant index into a per-layer axis (`per_layer_inputs[:, :, 3]`), moved
    to where the child keeps that position (a dropped layer's index dies with it)."""
    atoms, per_layer = state.analysis.atoms, state.analysis.per_layer
    for node, atom, index, where in state.analysis.dims.picks:
        group = atoms.leaves(atom)[0]
        if group in per_layer and group in state.select:
            kept = state.select[group].tolist()
            if index in kept:
                _set_arg(nodes[node.name], where, kept.index(index))


def _copy_module(root: nn.Module, path: str) -> str:
    """A copy (own Parameters) of the layer's module, as the next free numbered entry of
    its list (`model.layers.30` in a 30-layer model), so it reads as a layer again."""
    owner, _, _ = path.rpartition(".")
    container = root.get_submodule(owner) if owner else root
    numbers = [int(k) for k in container._modules if k.isdigit()]
    name = str(max(numbers, default=-1) + 1)
    container.add_module(name, copy.deepcopy(root.get_submodule(path)))
    return f"{owner}.{name}" if owner else name


def _copy_layer(graph: fx.Graph, layer, nodes, module: str, source: fx.Node) -> fx.Node:
    """Insert a copy of the layer's nodes after `source`, reading `source` as its input and
    the copied module's tensors; returns the copy's output."""
    members = {nodes[n.name] for n in layer.nodes}
    mapping = {nodes[layer.input.name]: source}
    prefix = layer.name + "."

    def arg(x: fx.Node) -> fx.Node:
        if x in mapping:
            return mapping[x]
        if x.op == "get_attr" and x.target.startswith(prefix):
            mapping[x] = graph.get_attr(module + "." + x.target[len(prefix) :])
        elif _from_params_of(x, prefix):  # e.g. (1 + norm.weight), computed from the layer
            mapping[x] = graph.node_copy(x, arg)
        else:
            return x  # shared by all layers (rotary tables, masks)
        return mapping[x]

    with graph.inserting_before(source.next):
        for n in [n for n in graph.nodes if n in members]:
            mapping[n] = graph.node_copy(n, arg)
    return mapping[nodes[layer.output.name]]


def _from_params_of(node: fx.Node, prefix: str) -> bool:
    """Whether `node` is computed from tensors only (no graph input), some of them under
    `prefix`: a layer's own preprocessing of its weights."""
    seen, stack, own = set(), [node], False
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "placeholder":
            return False
        own = own or (n.op == "get_attr" and n.target.startswith(prefix))
        stack.extend(n.all_input_nodes)
    return own


def _remove_dead(graph: fx.Graph) -> None:
    """Erase what no longer reaches the output (`live_nodes`)."""
    live = live_nodes(graph)
    for n in reversed(list(graph.nodes)):
        if n not in live and n.op != "placeholder":
            graph.erase_node(n)


def _set_tensors(state: SurgeryState, root: nn.Module) -> None:
    """Give the child its own copy of every tensor; tied names share one new Parameter."""
    table, dims = state.graph.params, state.analysis.dims
    done: dict[str, torch.Tensor] = {}
    names = [n for n, _ in root.named_parameters(remove_duplicate=False)]
    names += [n for n, _ in root.named_buffers(remove_duplicate=False)]
    names += [n.target for n in root.graph.nodes if n.op == "get_attr"]
    for name in dict.fromkeys(names):
        owner, _, attr = name.rpartition(".")
        if not isinstance(
            getattr(root.get_submodule(owner) if owner else root, attr), torch.Tensor
        ):
            continue  # a subgraph of a higher-order op, not a tensor
        canonical = table.canonical(name) if name in table else name
        if canonical not in done:
            axes = dims.tensors.get(canonical)
            done[canonical] = _child_tensor(state, root, name, axes, state.scale.get(canonical))
        _assign(root, name, done[canonical])


def _child_tensor(state: SurgeryState, root: nn.Module, name: str, axes, scale) -> torch.Tensor:
    owner, _, attr = name.rpartition(".")
    module = root.get_submodule(owner) if owner else root
    tensor = getattr(module, attr)
    value = cut_tensor(state, tensor.detach(), axes, scale)
    if value.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr():
        value = value.clone()  # a view of the parent's storage: the child owns its tensors
    if isinstance(tensor, nn.Parameter):
        return nn.Parameter(value, requires_grad=tensor.requires_grad)
    return value


def cut_tensor(state: SurgeryState, value: torch.Tensor, axes, scale) -> torch.Tensor:
    """The child's version of a parent tensor: every axis cut and reordered as the passes
    decided, times the rescale factor. It may be a view of `value` (a kept range, or
    nothing cut): the in-memory emitter copies, the streaming one writes it out."""
    for axis, how in axis_cuts(state, axes, value.shape):
        value = take(value, axis, how)
    return value.contiguous() if scale is None else value * scale


def axis_cuts(state: SurgeryState, axes, shape) -> list[tuple[int, slice | torch.Tensor]]:
    """The axes of a parent tensor that the child changes, each with what it keeps: a
    range of positions (a `slice`) or the positions in the child's order (a tensor)."""
    out = []
    for axis, atom in enumerate(axes or ()):
        if state.new_size(atom) != shape[axis] or _moved(state, atom):
            index = state.positions(atom)
            start = int(index[0]) if len(index) else 0
            if torch.equal(index, torch.arange(start, start + len(index))):
                out.append((axis, slice(start, start + len(index))))
            else:
                out.append((axis, index))
    return out


UNREAD = (
    "{n} tensor(s) that the traced forward never reads are cut to the child's shape by "
    "their leading positions where no cut group says which: {names}"
)


def unread_cuts(
    state: SurgeryState, shape, want, name: str | None = None
) -> tuple[list, list[int]] | None:
    """Cuts that take a tensor the traced forward never reads (a mask token, a cross
    attention a causal LM skips) from the parent's `shape` to the `want` the child's class
    gives it: an axis as long as one cut group before and after is cut as that group (the
    one that tensors of the same module hold, where `name` says which module and several
    groups fit: MiniMax's unread decay rates per head beside the ones its forward reads;
    else the residual stream's where several are); any other axis keeps its leading
    positions. Returns (cuts, the axes cut by leading positions), or None where the ranks
    differ or an axis grows."""
    if len(shape) != len(want) or any(m > n for n, m in zip(shape, want, strict=True)):
        return None
    a = state.analysis
    stream = set(a.atoms.leaves(a.residual))
    near = _module_groups(state, name.rpartition(".")[0]) if name else set()
    cuts, guessed = [], []
    for axis, (n, m) in enumerate(zip(shape, want, strict=True)):
        if n == m:
            continue
        like = [g for g, kept in state.select.items() if a.atoms.size[g] == n and len(kept) == m]
        like = [g for g in like if g in near] or [g for g in like if g in stream] or like
        if len(like) == 1:
            cuts.append((axis, state.select[like[0]]))
        else:
            cuts.append((axis, slice(0, m)))
            guessed.append(axis)
    return cuts, guessed


def _module_groups(state: SurgeryState, module: str) -> set[int]:
    """The groups that tensors of `module` itself (not its submodules) share with other
    tensors: a group only one tensor holds is that tensor's own, which nothing the
    traced forward computes ties to the others (an unread tensor's)."""
    a = state.analysis
    holders: dict[int, set[str]] = {}
    for tensor, axes in a.dims.tensors.items():
        for atom in axes:
            if isinstance(atom, int):
                for leaf in a.atoms.leaves(atom):
                    holders.setdefault(leaf, set()).add(tensor)
    return {
        leaf
        for leaf, tensors in holders.items()
        if len(tensors) > 1 and any(t.rpartition(".")[0] == module for t in tensors)
    }


def take(value: torch.Tensor, axis: int, how: slice | torch.Tensor) -> torch.Tensor:
    """`value` along `axis` at the positions `how` (a range is a view, not a copy)."""
    if isinstance(how, slice):
        return value.narrow(axis, how.start, how.stop - how.start)
    return value.index_select(axis, how)


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
        # A size computed in the graph (torch.fx: C // n_head) may follow a cut axis at run
        # time; it is fixed to the child's size unless it is a batch or sequence size.
        computed = isinstance(_get_arg(node, lit.where), fx.Node) and any(
            leaf in state.analysis.groups for leaf in old.leaves(lit.atoms[0])
        )
        if computed or new != old.size[old.find(lit.atoms[0])]:
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
    """The argument at `where`: (position or keyword,) or (position or keyword, index)."""
    value = node.kwargs[where[0]] if isinstance(where[0], str) else node.args[where[0]]
    return value[where[1]] if len(where) > 1 else value


def _set_arg(node: fx.Node, where: tuple, value: Any) -> None:
    keyword = isinstance(where[0], str)
    args = dict(node.kwargs) if keyword else list(node.args)
    if len(where) == 1:
        args[where[0]] = value
    else:
        inner = args[where[0]]
        items = list(inner)
        items[where[1]] = value
        args[where[0]] = tuple(items) if isinstance(inner, tuple) else items
    if keyword:
        node.kwargs = args
    else:
        node.args = tuple(args)
