"""The residual stream: its group, its additions in order, and the blocks between them."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from torch import fx

from .dims import Dims
from .registry import RULES, rule_for

__all__ = ["Block", "residual_root", "find_blocks", "layer_span", "nested", "HEAVY", "NUMBERED"]

# The built-in ops that mix the features of a residual-stream activation (`mixes_stream`
# in the table): kept for callers that read a set; the analysis asks the table.
HEAVY = frozenset(key for key, rule in RULES.items() if rule.mixes_stream)


@dataclass
class Block:
    """One residual addition `out = x + f(x)` and the nodes that compute `f(x)` from `x`."""

    add: fx.Node
    skip: fx.Node  # x
    branch: fx.Node  # f(x)
    nodes: set[fx.Node]
    params: list[str]  # canonical names of the tensors f reads
    layer: str | None  # module path of the numbered layer it belongs to ("model.layers.3")
    stream: int = -1  # atom class of the residual stream it adds to


def residual_root(dims: Dims, params_kind: dict[str, str]) -> int | None:
    """The atom class that spans the most parameter tensors: the residual stream's width."""
    counts: Counter[int] = Counter()
    for name, axes in dims.tensors.items():
        if params_kind.get(name) != "parameter":
            continue
        for root in {dims.atoms.find(a) for a in axes}:
            counts[root] += 1
    return counts.most_common(1)[0][0] if counts else None


def _mixes_stream(dims: Dims, node: fx.Node, root: int) -> bool:
    """A path through an op that mixes the stream with weights (`mixes_stream` in the
    table) is a block's computation f(x); a path through none of them is the skip x."""
    rule = rule_for(node)
    if rule is None or not rule.mixes_stream:
        return False
    for i in node.all_input_nodes:
        axes = dims.out.get(i)
        if i.op != "get_attr" and axes and isinstance(axes[0], int):
            if any(dims.atoms.find(a) == root for a in axes):
                return True
    return False


def _operands(dims: Dims, node: fx.Node) -> tuple:
    """The two terms of an addition (`adds` in the table), by name, whatever the frontend."""
    args = dims.args[node]
    return args.input, args.other


def _is_candidate(dims: Dims, node: fx.Node, root: int) -> bool:
    rule = rule_for(node)
    if rule is None or not rule.adds or node not in dims.args:
        return False
    out = dims.out.get(node)
    if not out or not isinstance(out[0], int) or dims.atoms.find(out[-1]) != root:
        return False
    operands = [a for a in _operands(dims, node) if isinstance(a, fx.Node)]
    return len(operands) == 2 and all(
        dims.out.get(a) is not None and len(dims.out[a]) == len(out) for a in operands
    )


def find_blocks(graph: fx.Graph, dims: Dims, root: int, canonical) -> list[Block]:
    """Residual additions in graph order: one operand reached through a heavy op since the
    last residual value (f(x)), the other through none (x) and computed from the inputs
    (not a bias broadcast to the stream's shape)."""
    through_f: dict[fx.Node, bool] = {}  # node -> computed through a heavy op since x
    data: set[fx.Node] = set()  # nodes computed from the graph's inputs
    adds = []
    for node in graph.nodes:
        inputs = node.all_input_nodes
        if node.op == "placeholder" or (
            node not in dims.filled
            and any(i in data and (node, i) not in dims.lends_shape for i in inputs)
        ):
            data.add(node)
        if _mixes_stream(dims, node, root):
            through_f[node] = True
        elif _is_candidate(dims, node, root):
            a, b = _operands(dims, node)
            skip, branch = (a, b) if through_f.get(b) else (b, a)
            if through_f.get(a, False) != through_f.get(b, False) and skip in data:
                adds.append((node, _origin(skip, data), branch))
                through_f[node] = False
                continue
            through_f[node] = any(through_f.get(i, False) for i in inputs)
        else:
            through_f[node] = any(through_f.get(i, False) for i in inputs)
    blocks = []
    stream = {skip for _, skip, _ in adds} | {add for add, _, _ in adds}
    for add, skip, branch in adds:
        nodes = _between(skip, branch, stream) or _between(
            _read_value(branch, stream, skip), branch, stream
        )  # a parallel block's branch reads an earlier stream value than its skip
        targets = {t for n in nodes for i in n.all_input_nodes for t in _weights(i, data)}
        params = sorted({canonical(t) for t in targets if canonical(t)})
        blocks.append(Block(add, skip, branch, nodes, params, _layer_of(params), root))
    return blocks


def nested(blocks: list[Block], names) -> list[Block]:
    """Blocks of numbered entries that fall into the entries of a module list inside them
    (`encoder.layers.0.blocks.1`: stages of layers, each stage an entry of the outer
    list) belong to those inner entries, where every block of an outer entry lies in one
    entry of one inner list, and some entry of the outer list is a stage: its inner
    entries are two or more and one holds two blocks or more (a layer: its attention and
    its MLP), or one inner entry holds two blocks of their own weights beside weights of
    the outer entry's (a stage cut to one layer, with its patch merge). Then every entry
    of that outer list is read so; so is a list whose entries are lists, one of which
    holds one entry of two blocks or more (stages that are lists of layers, cut to one
    layer each). Sublayers listed inside a layer (`block.3.layer.0`, `.layer.1`) hold one
    block each, routed experts' entries hold no whole block, and one shared layer applied
    again and again holds its blocks' weights several times: those stay as they are.
    `names`: every tensor's. Repeated for lists nested deeper."""
    while True:
        outer: dict[str, list[Block]] = {}
        for b in blocks:
            if b.layer is not None:
                outer.setdefault(b.layer, []).append(b)
        inner: dict[str, list[str]] = {}
        stages: set[str] = set()  # outer lists read as lists of stages
        for name, mine in outer.items():
            entries = [_common_entry(b.params, name) for b in mine]
            paths = {e.rpartition(".")[0] if e else None for e in entries}
            if None in paths or len(paths) != 1:
                continue
            inner[name] = entries
            if _stage(mine, entries, name, paths.pop(), names):
                stages.add(name.rpartition(".")[0])
        moved = [name for name in inner if name.rpartition(".")[0] in stages]
        for name in moved:
            for b, entry in zip(outer[name], inner[name], strict=True):
                b.layer = entry
        if not moved:
            return blocks


def _stage(mine: list[Block], entries: list[str], outer: str, path: str, names) -> bool:
    """Whether outer entry `outer` is a stage of layers (`nested`)."""
    counts = Counter(entries)
    if max(counts.values()) < 2:
        return False
    if len(counts) > 1:
        return True
    params = [p for b in mine for p in dict.fromkeys(b.params)]
    own = len(set(params)) == len(params)  # no block reads another's weights
    beside = any(n.startswith(outer + ".") and not n.startswith(path + ".") for n in names)
    return own and (beside or path == outer)  # or a list of lists: stages of layers


def _common_entry(params: list[str], outer: str) -> str | None:
    """The deepest numbered entry inside `outer` that holds every one of `params`."""
    inside = [p[len(outer) + 1 :] for p in params if p.startswith(outer + ".")]
    if not inside or len(inside) != len(params):
        return None
    found = None
    for m in re.finditer(r"(?:^|\.)(\d+)(?=\.)", inside[0]):
        prefix = inside[0][: m.end()]
        if not all(p.startswith(prefix + ".") for p in inside):
            break
        found = f"{outer}.{prefix}"
    return found


def _read_value(branch: fx.Node, stream: set[fx.Node], skip: fx.Node) -> fx.Node:
    """The stream value a branch is computed from, where it does not read its own skip: the
    latest one behind it in graph order (`x + attn(norm(x)) + mlp(norm(x))`: the MLP's
    branch reads `x`, not `x + attn(...)`); `skip` when it reads none."""
    seen, frontier, found = {branch}, [branch], []
    while frontier:
        for i in frontier.pop().all_input_nodes:
            if i in seen:
                continue
            seen.add(i)
            if i in stream:
                found.append(i)
            else:
                frontier.append(i)
    if not found:
        return skip
    order = {n: k for k, n in enumerate(branch.graph.nodes)}
    return max(found, key=order.__getitem__)


def _origin(skip: fx.Node, data: set[fx.Node]) -> fx.Node:
    """The stream value behind a skip that scales it first (`alpha * x + f(x)`, alpha a
    weight, a vector or a number): back through ops of one data input, of the same
    shape, that nothing else reads."""
    while skip.op == "call_function" and len(skip.users) == 1:
        inputs = [i for i in skip.all_input_nodes if i in data]
        rule = rule_for(skip)
        if len(inputs) != 1 or _shape(inputs[0]) != _shape(skip) or not rule or rule.mixes_stream:
            break
        skip = inputs[0]
    return skip


def _weights(node: fx.Node, data: set[fx.Node], depth: int = 4) -> set[str]:
    """The tensors (get_attr targets) a value is computed from alone: the tensor itself,
    or one cast or reshaped before use (a router's weight cast to float32)."""
    if node.op == "get_attr":
        return {node.target} if node.target is not None else set()
    if node in data or depth == 0 or node.op != "call_function":
        return set()
    return {t for i in node.all_input_nodes for t in _weights(i, data, depth - 1)}


def _between(start: fx.Node, end: fx.Node, stream: set[fx.Node]) -> set[fx.Node]:
    """Nodes on a path from `start` to `end` that does not cross another residual value."""
    ahead = {start}
    frontier = [start]
    while frontier:
        n = frontier.pop()
        for user in n.users:
            if user not in ahead and user not in stream:
                ahead.add(user)
                frontier.append(user)
    behind, frontier = {end}, [end]
    while frontier:
        n = frontier.pop()
        for i in n.all_input_nodes:
            if i not in behind and i in ahead:
                behind.add(i)
                frontier.append(i)
    return (behind & ahead) - {start}


def layer_span(blocks: list[Block], paths: list[str]) -> tuple[fx.Node, fx.Node, set[fx.Node]]:
    """A layer's input (the stream value it reads, before any layout change of its own),
    output (the stream value it leaves: its last residual addition, or the norm or
    permute after it) and the nodes between them. `paths`: its modules (one, or one per
    module list it spans: `attentions.3`, `layer_norm1.3`, `ffns.3`, ...)."""
    start = blocks[0].skip
    end = blocks[-1].add
    index = paths[0].rpartition(".")[2]

    outermost = (m := NUMBERED.match(paths[0])) is not None and m.group(1) == paths[0]

    def within(node: fx.Node) -> bool:  # its modules, or another list's entry of its index
        stack = node.meta.get("nn_module_stack") or {}
        numbered = (NUMBERED.match(p) for p, _ in stack.values())
        same = outermost and any(m and m.group(1).rpartition(".")[2] == index for m in numbered)
        return same or any(_in_module(node, p) for p in paths)

    while True:  # follow the stream while it stays inside the layer's modules
        inside = [u for u in end.users if within(u)]
        if len(inside) == 1 == len(end.users):
            end = inside[0]
            continue
        leaves = _exit(end, within) if inside and len(inside) == len(end.users) else None
        if leaves is None:
            break
        end = leaves  # a norm written out in elementwise ops
    while _shape(start) != _shape(end) and any(_in_module(start, p) for p in paths):
        if len(start.all_input_nodes) != 1:
            break
        start = start.all_input_nodes[0]  # the layer's own change of layout (ViTDet's permute)
    start = _entry(start, lambda n: any(_in_module(n, p) for p in paths))
    return start, end, _between(start, end, set())


def _entry(start: fx.Node, inside) -> fx.Node:
    """The stream value a layer reads where its first skip is computed inside its own
    modules from it (`r = norm(x); r * alpha + f(r)`: the skip is the normed value, the
    layer's input is `x`, and a layer dropped or copied must take its norm with it): the
    one value of the skip's shape, computed outside the layer, behind the skip through
    nodes of the layer that mix nothing with weights; `start` where there is none or
    several."""
    if not inside(start):
        return start
    seen, frontier, outside, changed = {start}, [start], set(), False
    while frontier:
        node = frontier.pop()
        rule = rule_for(node) if node.op == "call_function" else None
        changed = changed or not (rule is not None and rule.same_values)
        for i in node.all_input_nodes:
            if i in seen or i.op == "get_attr":
                continue
            seen.add(i)
            rule = rule_for(i)
            if not inside(i) or i.op != "call_function":
                outside.add(i)
            elif rule is None or rule.mixes_stream:
                return start  # computed through weights: a block of its own, not a norm
            else:
                frontier.append(i)
    if not changed:  # the stream value itself, cast or copied (`x.to(float32)`): the skip
        return start
    same = [i for i in outside if _shape(i) == _shape(start)]
    return same[0] if len(same) == 1 else start


def _exit(node: fx.Node, within) -> fx.Node | None:
    """Where the values computed from `node` inside the layer leave it: the one node of
    them, of `node`'s shape, that nodes outside read (a post-norm in elementwise ops,
    `weight * (x - mean) / std + bias`), or None."""
    inside, frontier = {node}, [node]
    while frontier:
        for user in frontier.pop().users:
            if user not in inside and within(user):
                inside.add(user)
                frontier.append(user)
    exits = [n for n in inside - {node} if any(u not in inside for u in n.users)]
    if len(exits) != 1 or _shape(exits[0]) != _shape(node) or node.users.keys() - inside:
        return None
    return exits[0]


def _shape(node: fx.Node) -> tuple | None:
    val = node.meta.get("val")
    return tuple(val.shape) if hasattr(val, "shape") else None


def _in_module(node: fx.Node, path: str) -> bool:
    stack = node.meta.get("nn_module_stack") or {}
    return any(p == path or p.startswith(path + ".") for p, _ in stack.values())


NUMBERED = re.compile(r"^(.*?\.\d+)(\.|$)")


def _layer_of(params: list[str]) -> str | None:
    """Layers are the numbered entries of a module list: `model.layers.3.mlp.up.weight` is in
    layer `model.layers.3`. A block belongs to the layer most of its tensors are in."""
    counts = Counter(m.group(1) for p in params if (m := NUMBERED.match(p)))
    return counts.most_common(1)[0][0] if counts else None
