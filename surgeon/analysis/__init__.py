"""Analysis: the dimension groups, residual stream, blocks and layers of a traced model.

`analyse(graph)` runs the op rules (`rules/`, one module per family, registered in
`registry.py`) over the graph and reads the result: which axes are one group, what role
each group plays, which layer it belongs to, and the couplings (tied tensors, buffers
such as rotary frequencies, fused projections) that the surgery passes must respect.
Nothing here knows a model family: roles come from the graph's structure (products of
two activations are attention; the group spanning the most parameters is the residual
stream; layers are numbered module-list entries).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import fx

from ..errors import SurgeonError
from ..frontends import Graph, tensor_of
from .atoms import Atoms
from .dims import Dims, discover_dims
from .registry import register_rule, rule_for, unregister_rule
from .residual import NUMBERED, Block, _between, find_blocks, layer_span, nested, residual_root

__all__ = [
    "FFN_ROLES",
    "ROLES",
    "Analysis",
    "Group",
    "LayerInfo",
    "analyse",
    "permuted_tensors",
    "register_rule",
    "unregister_rule",
]

# The roles a group can have (Group.role); "rank": the inner width of a low-rank
# projection inside attention (multi-head latent attention's q and kv ranks), or the
# width routed experts read and write when a projection takes the stream into a space of
# their own (a config's `moe_hidden_size`), or another axis of their tensors that others
# share (shared experts counted on the router's rows), or the rank of a low-rank
# projection into a token mixer's width (a linear attention's gates), kept;
# "mixer": another inner width of a token mixer, not its heads (a convolution's channels,
# a recurrence's width, a value width attention splits its own way), kept unless the
# config sizes it with the sizes the plan cuts (`pipeline._follow_config`).
ROLES = (
    *("residual", "ffn", "heads", "kv_groups", "head_dim", "experts", "vocab", "rank"),
    *("mixer", "other"),
)
# The roles of an FFN group, named as configs name their widths: a dense MLP's, each routed
# expert's, the shared experts' beside them.
FFN_ROLES = ("intermediate_size", "moe_intermediate_size", "shared_expert_intermediate_size")


@dataclass
class Group:
    """Axes that are permuted and sliced together: one leaf atom of the dimension algebra."""

    id: int
    size: int
    role: str
    members: list[tuple[str, int]]  # (tensor name, axis) whose positions it indexes
    layer: int | None = None  # index into Analysis.layers, None when shared by several
    pinned: str | None = None  # why it may not be permuted, if it may not
    literals: int = 0  # shape literals (view sizes, split sizes, ...) that state its size
    # whether the surgery may cut it (and reorder it, unless `ordered`): not pinned, and
    # held by parameters and buffers only
    movable: bool = False
    # cut, never reordered: an axis of the model's output (the residual stream of a model
    # without a head), so an uncut child computes the same output; or one a buffer shares
    # (sinusoidal positions as wide as the hidden size), which a Hugging Face class
    # rebuilds from the config in its own order
    ordered: bool = False
    # heads whose values the forward computes from their count (ALiBi's slopes): cut only
    # to the heads whose values the child's class computes again (`surgeon/derived.py`),
    # in the order it computes them
    derived: bool = False


@dataclass
class LayerInfo:
    """One layer of a stack (a numbered module-list entry whose blocks write the residual
    stream): its blocks, its sizes as found in the graph (FFN width, heads, KV heads,
    head_dim, experts), the groups that carry them (`ffn`, `heads`, `kv`, `experts`:
    what the slice pass cuts per layer), and the stream values it reads and leaves (what
    depth removes and calibration runs layer by layer)."""

    name: str  # module path, e.g. "model.layers.0"
    blocks: list[Block]
    intermediate_size: int = 0
    num_heads: int = 0
    num_kv_heads: int = 0
    head_dim: int = 0
    # positions of other groups that one axis concatenates with the heads (a convolution's
    # heads beside attention's, read by one output projection): heads a config may count
    heads_beside: int = 0
    input: fx.Node | None = None  # the stream value the layer reads
    output: fx.Node | None = None  # the stream value it leaves (after a post-norm, if any)
    nodes: set[fx.Node] = field(default_factory=set)  # its nodes, input excluded
    heads: list[int] = field(default_factory=list)  # leaves of the heads axis, outermost first
    kv: list[int] = field(default_factory=list)  # those of them that are KV groups
    ffn: list[int] = field(default_factory=list)  # its FFN groups (their sizes add up)
    # each FFN group's role, as configs name its width (`FFN_ROLES`): a dense MLP's, a
    # routed expert's (it shares tensors with the experts group), a shared expert's
    ffn_role: dict[int, str] = field(default_factory=dict)
    experts: list[int] = field(default_factory=list)  # its groups of routed experts
    num_experts: int = 0
    applied: int = 1  # how many times its weights are applied in one forward
    # where applied several times, one after another along the stream (a stack run in a
    # loop): each application's (input, output), as `input` and `output` are the layer's
    spans: list[tuple[fx.Node, fx.Node]] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)  # its modules: name, and any entry
    # of another list with its index that its blocks read (an `ffns.3` beside `attentions.3`)

    def widths(self, sizes: dict[int, int]) -> dict[str, int]:
        """The FFN width of each role it has, `sizes[group]` the width of each group."""
        out: dict[str, int] = {}
        for g in self.ffn:
            out[self.ffn_role[g]] = out.get(self.ffn_role[g], 0) + sizes[g]
        return out

    @property
    def stream(self) -> int:
        """The atom class of the residual stream it reads and writes."""
        return self.blocks[0].stream

    @property
    def stack(self) -> str:
        """The module list that holds it (`model.layers`, `model.decoder.layers`)."""
        return self.name.rpartition(".")[0]


@dataclass
class Analysis:
    """What `analyse` found in one traced graph, and all the passes read of it: the axes
    as atoms and groups (`dims`, `groups`), the residual stream(s), the blocks that write
    them and the layers that hold the blocks, and the couplings the surgery must keep
    (tied tensors, buffers, fused projections)."""

    graph: Graph
    dims: Dims
    residual: int  # atom class of the residual stream (of several: the last layer's)
    blocks: list[Block]
    layers: list[LayerInfo]
    groups: dict[int, Group]
    couplings: dict[str, list] = field(default_factory=dict)
    # every residual stream, `residual` first: one per stack that has its own input (an
    # encoder with its own embedding, a vision tower); stacks on one stream share it
    streams: list[int] = field(default_factory=list)
    # axes with one position per layer of a stack, each read by its layer alone (per-layer
    # inputs cut from one projection): group -> {position: parent layer}; cut with depth
    per_layer: dict[int, dict[int, int]] = field(default_factory=dict)
    # the layers whose heads the model's config sizes by its head count
    # (`num_attention_heads`, ...), found by building its class with another count; None:
    # no config to ask (see `cuts_heads`)
    config_heads: set[int] | None = None
    # whether the model's config states each layer's kind (`layer_types`: its class builds
    # a layer of a child as the child's config says, wherever the layer came from); False
    # where none is known, so depth keeps each layer where a layer of its kind sits
    stated_kinds: bool = False

    def cuts_heads(self, layer: LayerInfo) -> bool:
        """Whether a heads target (`num_heads`, `num_kv_heads`) cuts this layer's heads.
        Where the layers of a stack hold attention of several shapes (a hybrid's linear
        attention beside softmax attention), it cuts those whose heads the config sizes
        by its head count; the others (linear attention, sized by config fields of its
        own) keep their heads. Where none of them follows it, or there is no config to
        ask, it cuts them all."""
        if not layer.heads:
            return False
        mine = [i for i, x in enumerate(self.layers) if x.stack == layer.stack and x.heads]
        shapes = {(self.layers[i].num_heads, self.layers[i].head_dim) for i in mine}
        follow = [i for i in mine if i in (self.config_heads or ())]
        if len(shapes) < 2 or not follow:
            return True
        return self.layers.index(layer) in follow

    @property
    def atoms(self) -> Atoms:
        return self.dims.atoms

    @property
    def hidden_size(self) -> int:
        return self.atoms.size[self.residual]

    def stream_of(self, stack: str | None) -> int:
        """The residual stream a stack of layers reads and writes (`residual` for None)."""
        for layer in self.layers:
            if stack is not None and layer.stack == stack:
                return layer.stream
        return self.residual

    @property
    def stacks(self) -> list[str]:
        """The module paths that hold layers (`model.encoder.layers`, ...), in order."""
        return list(dict.fromkeys(layer.stack for layer in self.layers))

    def top_k(self, layer: LayerInfo) -> list[tuple[fx.Node, int, bool]]:
        """Each pick among a layer's routed experts: the node (a `topk`, or a `max` or
        `argmax` that picks the best one), its k, and whether it ranks all the experts
        (True) or those of one group (group-limited routing scores each by its best)."""
        if not layer.experts:
            return []
        out, inner = [], layer.experts[-1]
        for key, atom in self.dims.positions.items():
            node = key[0] if isinstance(key, tuple) else key
            name = str(node.target) if node.op == "call_function" else ""
            if "topk" in name:
                k = node.args[1] if len(node.args) > 1 else None
            elif any(f"aten.{op}." in name for op in ("max", "argmax")):
                k = 1  # the best one
            else:  # what positions pass through (getitem, cat, casts): no pick of its own
                continue
            leaves = self.atoms.leaves(atom)
            if inner in leaves and isinstance(k, int):
                out.append((node, k, set(layer.experts) <= set(leaves)))
        return out

    def by_role(self, role: str) -> list[Group]:
        return [g for g in self.groups.values() if g.role == role]


def analyse(graph: Graph) -> Analysis:
    """Discover groups, residual stream, blocks, layers, roles and couplings of `graph`."""
    dims = discover_dims(graph)
    atoms = dims.atoms
    kinds = {e.name: e.kind for e in graph.params}
    root = residual_root(dims, kinds)
    if root is None:
        raise SurgeonError(
            f"{type(graph.module).__name__} reads no parameters: there is nothing to subclone"
        )

    def canonical(target):
        return graph.params.canonical(target) if target in graph.params else None

    soft = _output_leaves(dims)
    streams, blocks = _streams(graph, dims, kinds, root, canonical)
    root = streams[0]
    layers = _layers(blocks)
    groups = _groups(graph, dims)
    for leaf in (leaf for r in streams for leaf in atoms.leaves(r)):
        if leaf in groups:  # not the size-1 segments a slice may leave
            groups[leaf].role = "residual"
    for atom in dims.experts:  # stacked weights indexed by a router's choice
        for leaf in atoms.leaves(atom):
            if leaf in groups and groups[leaf].role == "other":
                groups[leaf].role = "experts"
    sites = _attention(dims, groups)
    _vocab(graph, dims, groups)
    _outputs_like_vocab(graph, dims, groups)
    layer_of = {p: i for i, layer in enumerate(layers) for b in layer.blocks for p in b.params}
    for g in groups.values():
        owners = {layer_of.get(name) for name, _ in g.members if kinds.get(name) == "parameter"}
        g.layer = owners.pop() if len(owners) == 1 else None
        if (
            g.role == "other"
            and g.layer is not None
            and g.pinned is None
            and kinds.get(g.members[0][0]) == "parameter"
        ):
            g.role = "ffn"
    _derived(dims, groups, kinds)
    for g in groups.values():
        held = {kinds.get(n) for n, _ in g.members}
        g.movable = g.pinned is None and held <= {"parameter", "buffer"}
        g.ordered = g.id in soft or "buffer" in held or g.derived
    _fill_layers(layers, groups, sites, dims, canonical)
    analysis = Analysis(graph, dims, root, blocks, layers, groups, streams=streams)
    analysis.per_layer = _per_layer(analysis, kinds)
    analysis.couplings = _couplings(analysis, kinds)
    return analysis


def _streams(graph: Graph, dims: Dims, kinds: dict, root: int, canonical):
    """The residual streams (the one the last block writes first) and their blocks, in
    graph order. The stream that spans the most weights is found first; then, for each
    numbered list of modules with entries that hold weights of no layer found (a second
    tower, an encoder with an embedding of its own, the later stages of a hierarchical
    backbone, each of its own width), the atom class that spans the most of those
    entries' weights is another stream where residual blocks in them write it; a list is
    searched again while that finds one."""
    streams = [root]
    blocks = find_blocks(graph.graph, dims, root, canonical)
    tried: set[tuple] = set()
    while True:
        free = _free_entries(dims, kinds, _layers_of(blocks))
        pending = [(p, e) for p, e in free.items() if (p, frozenset(e)) not in tried]
        if not pending:
            break
        path, entries = pending[0]
        tried.add((path, frozenset(entries)))
        inside = tuple(f"{path}.{i}." for i in sorted(entries))
        counts = Counter(
            dims.atoms.find(a)
            for name, axes in dims.tensors.items()
            if kinds.get(name) == "parameter" and name.startswith(inside)
            for a in set(axes)
        )
        for candidate, _ in counts.most_common():
            if candidate not in streams and dims.atoms.size[candidate] > 1:
                found = [
                    b
                    for b in find_blocks(graph.graph, dims, candidate, canonical)
                    if b.layer is not None and (b.layer + ".").startswith(inside)
                ]
                streams += [candidate] if found else []
                blocks += found
                break
    order = {n: i for i, n in enumerate(graph.graph.nodes)}
    blocks = nested(sorted(blocks, key=lambda b: order[b.add]), dims.tensors)
    last = blocks[-1].stream if blocks else root  # the stream the output is read from
    return sorted(streams, key=lambda r: r != last), blocks


def _layers_of(blocks: list[Block]) -> set[str]:
    """The numbered modules whose weights the blocks read (their layers' parts too), and
    their layers (entries of a list nested in one of those)."""
    outer = {m.group(1) for b in blocks for p in b.params if (m := NUMBERED.match(p))}
    return outer | {b.layer for b in blocks if b.layer is not None}


def _per_layer(analysis: Analysis, kinds: dict[str, str]) -> dict[int, dict[int, int]]:
    """Groups of weights only, as long as a stack of layers, whose every position is
    taken by a constant index (`per_layer_inputs[:, :, i]`) and read by one layer alone,
    each layer reading one: group -> {position: parent layer}. Depth keeps the positions
    of the layers it keeps, in their order."""
    atoms, groups, layers = analysis.atoms, analysis.groups, analysis.layers
    owner = {n: i for i, layer in enumerate(layers) for n in layer.nodes}
    reads: dict[int, dict[int, int]] = {}
    bad: set[int] = set()
    for node, atom, index, _ in analysis.dims.picks:
        leaves = atoms.leaves(atom)
        g = leaves[0] if len(leaves) == 1 else None
        if g not in groups:
            continue
        readers = _layers_reading(node, owner)
        if len(readers) != 1 or reads.setdefault(g, {}).setdefault(index, readers[0]) != readers[0]:
            bad.add(g)
    out = {}
    for g, found in reads.items():
        group, held = groups[g], {kinds.get(name) for name, _ in groups[g].members}
        stacks = {layers[i].stack for i in found.values()}
        members = [i for i, layer in enumerate(layers) if layer.stack in stacks]
        if (
            g not in bad
            and len(stacks) == 1
            and (group.pinned or "").startswith("one position taken by")
            and held <= {"parameter", "buffer"}
            and sorted(found) == list(range(group.size))
            and sorted(found.values()) == members
        ):
            out[g] = found
    return out


def _layers_reading(node: fx.Node, owner: dict) -> list[int]:
    """The layers whose nodes are the first to read `node`'s value (-1: the output, or a
    value no layer reads), following the nodes of no layer in between."""
    found, seen, stack = set(), set(), [node]
    while stack:
        n = stack.pop()
        for user in n.users:
            if user in owner:
                found.add(owner[user])
            elif user.op == "output":
                found.add(-1)
            elif user not in seen:
                seen.add(user)
                stack.append(user)
    return sorted(found)


def _output_leaves(dims: Dims) -> set[int]:
    """The leaves of the graph's outputs: they keep their order (their positions are the
    model's interface) but may be cut, when the residual stream is (a model without a head
    returns its last hidden state, which a narrower child narrows) or when the child's
    config sizes them (a pooler as wide as the hidden size)."""
    atoms = dims.atoms
    return {leaf for a in dims.outputs for leaf in atoms.leaves(a)}


def _layers(blocks: list[Block]) -> list[LayerInfo]:
    layers: dict[str, LayerInfo] = {}
    for b in blocks:
        if b.layer is not None:
            layers.setdefault(b.layer, LayerInfo(b.layer, [])).blocks.append(b)
    layers = _merge_parallel(layers)
    for layer in layers.values():
        index = layer.name.rpartition(".")[2]
        numbered = (m.group(1) for b in layer.blocks for p in b.params if (m := NUMBERED.match(p)))
        # a layer of an outermost list may span other lists' entries of its index
        # (`attentions.3`, `ffns.3`); a layer of a nested list is its entry alone
        outermost = _outermost(layer.name)
        parts = [p for p in dict.fromkeys(numbered) if p.rpartition(".")[2] == index]
        layer.parts = list(dict.fromkeys([layer.name, *(parts if outermost else [])]))
        layer.input, layer.output, layer.nodes = layer_span(layer.blocks, layer.parts)
        seen = Counter(p for b in layer.blocks for p in dict.fromkeys(b.params))
        if min(seen.values(), default=1) > 1:  # its weights applied several times
            layer.spans = _applications(layer, min(seen.values()))
        if layer.spans:  # its nodes: those of its applications, not what runs between
            layer.nodes = set().union(*(_between(a, b, set()) for a, b in layer.spans))
        read = (a.target for n in layer.nodes for a in n.all_input_nodes if a.op == "get_attr")
        numbered = (m.group(1) for t in read if (m := NUMBERED.match(t)))
        more = [p for p in numbered if p.rpartition(".")[2] == index and outermost]  # a post-norm's
        layer.parts = list(dict.fromkeys([*layer.parts, *more]))
    return list(layers.values())


def _applications(layer: LayerInfo, n: int) -> list:
    """Each application's (input, output) of a layer whose weights are applied `n` times,
    where its blocks fall into that many runs, one after another in the graph,
    each of which reads every weight of the layer once (recurrent layers run in a
    loop over their stack; one layer applied as every layer); [] where they do not."""
    order = {node: i for i, node in enumerate(layer.blocks[0].add.graph.nodes)}
    blocks = sorted(layer.blocks, key=lambda b: order[b.add])
    if len(blocks) % n:
        return []
    size = len(blocks) // n
    runs = [blocks[k * size : (k + 1) * size] for k in range(n)]
    every = set(p for b in blocks for p in b.params)
    spans = []
    for run in runs:
        if set(p for b in run for p in b.params) != every:
            return []
        start, end, _ = layer_span(run, layer.parts or [layer.name])
        spans.append((start, end))
    ends = [order[end] for _, end in spans]
    starts = [order[start] for start, _ in spans]
    if any(starts[k + 1] < ends[k] for k in range(n - 1)):
        return []  # interleaved: not one application after another
    return spans


def _merge_parallel(layers: dict[str, LayerInfo]) -> dict[str, LayerInfo]:
    """Module lists that hold the parts of one layer each (`attentions.i` then
    `ffns.i`, for every i): their entries run interleaved, i by i, so entry i of every such
    list is one layer, named after the first list's. Lists that run one after the other
    (an encoder's, then a decoder's) stay stacks of their own."""
    order = [(name.rpartition(".")[0], name.rpartition(".")[2]) for name in layers]
    lists = list(dict.fromkeys(owner for owner, _ in order))
    indices = list(dict.fromkeys(i for _, i in order))
    if len(lists) < 2 or len(indices) < 2 or order != [(o, i) for i in indices for o in lists]:
        return layers
    merged: dict[str, LayerInfo] = {}
    for i in indices:
        first = layers[f"{lists[0]}.{i}"]
        first.blocks = [b for owner in lists for b in layers[f"{owner}.{i}"].blocks]
        merged[first.name] = first
    return merged


def _derived(dims: Dims, groups: dict[int, Group], kinds: dict) -> None:
    """Groups along values computed from sizes alone (`Dims.derived`): heads, and groups
    that weights hold (relative positions: sinusoids as wide as the hidden size that
    a projection of them reads), are marked `derived` (the child's class computes such
    values from its own sizes: they can be cut where it computes the kept positions'
    values again); any other group is pinned, as an index."""
    for node in dims.derived:
        for axis in dims.out.get(node) or []:
            for leaf in dims.atoms.leaves(axis):
                g = groups.get(leaf)
                if g is None or g.pinned is not None:
                    continue
                held = any(kinds.get(n) == "parameter" for n, _ in g.members)
                if g.role in ("heads", "kv_groups") or held:
                    g.derived = True
                else:
                    g.pinned = "positions (arange)"


def _groups(graph: Graph, dims: Dims) -> dict[int, Group]:
    atoms = dims.atoms
    pinned = atoms.pinned_leaves()
    groups: dict[int, Group] = {}
    for name, axes in dims.tensors.items():
        for axis, a in enumerate(axes):
            for leaf in dict.fromkeys(atoms.leaves(a)):
                if atoms.size[leaf] == 1:
                    continue
                g = groups.setdefault(
                    leaf, Group(leaf, atoms.size[leaf], "other", [], pinned=pinned.get(leaf))
                )
                g.members.append((name, axis))
    for lit in dims.literals:
        for leaf in {leaf for a in lit.atoms if a >= 0 for leaf in atoms.leaves(a)}:
            if leaf in groups:
                groups[leaf].literals += 1
    return groups


@dataclass
class _Site:
    node: fx.Node
    heads: list[int]  # leaves of the heads axis, outermost first
    kv: list[int]  # those of them that index the keys' own parameters (KV groups)
    head_dim: int  # size of the contracted axis


def _attention(dims: Dims, groups: dict[int, Group]) -> list[_Site]:
    """Products of two activations over a parameter-indexed axis are q·kᵀ: the contracted
    axis is head_dim, the shared parameter-indexed axes are heads. A heads leaf made by
    broadcasting a parameter-derived tensor (expand of k/v) counts query heads per KV group."""
    atoms = dims.atoms
    shared = {atoms.find(a) for a, node in dims.broadcasts}
    sites = []
    for c in dims.contractions:
        contracted = [leaf for leaf in atoms.leaves(c.contracted) if leaf in groups]
        if not contracted or all(_positions(groups[leaf]) for leaf in contracted):
            # attention · values contracts over positions; so does a kernel computed
            # from weights applied to windows of the sequence (a dynamic convolution's)
            continue
        heads = [leaf for a in c.batch for leaf in atoms.leaves(a) if leaf in groups]
        # heads index the projections' weights beside head_dim; windows of positions
        # folded into the batch (windowed attention) index no such weight
        weights = {n for leaf in contracted for n, _ in groups[leaf].members}
        heads = [h for h in heads if {n for n, _ in groups[h].members} & weights] or heads
        kv = [leaf for leaf in heads if atoms.find(leaf) not in shared]
        if not kv and len(heads) > 1:  # values broadcast along the keys' own heads too
            keys = _own_weights(c.operands[1], c.operands[0])
            kv = [leaf for leaf in heads if {n for n, _ in groups[leaf].members} & keys]
        for leaf in contracted:
            if groups[leaf].role != "residual":
                groups[leaf].role = "head_dim"
        for leaf in heads:
            if groups[leaf].role != "residual":
                groups[leaf].role = "kv_groups" if leaf in kv and len(kv) < len(heads) else "heads"
        site = _Site(c.node, heads, kv, atoms.size[atoms.find(c.contracted)])
        sites.append(site)
        _mark_values(dims, c.node, groups)
    return sites


def _own_weights(node: fx.Node, other: fx.Node) -> set[str]:
    """The tensors `node` is computed from that `other` is not (the keys' projection,
    beside the query's): their `get_attr` targets."""

    def weights(start: fx.Node) -> set[str]:
        seen, frontier, out = {start}, [start], set()
        while frontier:
            n = frontier.pop()
            if n.op == "get_attr":
                out.add(n.target)
            for x in n.all_input_nodes:
                if x not in seen:
                    seen.add(x)
                    frontier.append(x)
        return out

    return weights(node) - weights(other)


def _positions(group: Group) -> bool:
    """Whether a group's positions are places in the sequence (the offsets of a window
    that `im2col` or `unfold` reads), which an attention's head_dim never is."""
    return (group.pinned or "").startswith(("positions of ", "windows of "))


def _mark_values(dims: Dims, qk: fx.Node, groups: dict[int, Group]) -> None:
    """The value head_dim: the last axis of the attention output (SDPA) or of the next
    activation product that consumes the scores."""
    atoms = dims.atoms
    for c in dims.contractions:
        if c.node is qk or qk in c.operands or _reaches(qk, c.node):
            out = dims.out[c.node]
            for leaf in atoms.leaves(out[-1]):
                if leaf in groups and groups[leaf].role in ("other", "ffn"):
                    groups[leaf].role = "head_dim"
            if c.node is not qk:
                return


def _reaches(a: fx.Node, b: fx.Node, limit: int = 12) -> bool:
    frontier, seen = [a], {a}
    for _ in range(limit):
        frontier = [u for n in frontier for u in n.users if u not in seen]
        seen.update(frontier)
        if b in seen:
            return True
    return False


def _vocab(graph: Graph, dims: Dims, groups: dict[int, Group]) -> None:
    """Rows of a table looked up (`lookup` in the op table) by the model's input ids are
    the vocabulary."""
    atoms = dims.atoms
    inputs = {n for n in graph.graph.nodes if n.op == "placeholder"}
    for node, args in dims.args.items():
        rule = rule_for(node)
        if rule is None or rule.lookup is None:
            continue
        table, ids = (args.get(name) for name in rule.lookup)
        if not (isinstance(table, fx.Node) and isinstance(ids, fx.Node)):
            continue
        if table.op == "get_attr" and ids.op != "get_attr" and _from_inputs(ids, inputs):
            for leaf in atoms.leaves(dims.out[table][0]):
                if leaf in groups:
                    groups[leaf].role = "vocab"


def _outputs_like_vocab(graph: Graph, dims: Dims, groups: dict[int, Group]) -> None:
    """An output axis as wide as the vocabulary (an untied LM head) is the vocabulary too."""
    sizes = {g.size for g in groups.values() if g.role == "vocab"}
    for g in groups.values():
        if g.role == "other" and g.pinned == "graph output" and g.size in sizes:
            g.role = "vocab"


def _from_inputs(node: fx.Node, inputs: set[fx.Node], limit: int = 8) -> bool:
    frontier = [node]
    for _ in range(limit):
        if any(n in inputs for n in frontier):
            return True
        frontier = [i for n in frontier for i in n.all_input_nodes]
    return False


def _fill_layers(layers, groups, sites, dims, canonical) -> None:
    order = {leaf: i for atom in dims.experts for i, leaf in enumerate(dims.atoms.leaves(atom))}
    for layer in layers:
        nodes = set().union(*(b.nodes for b in layer.blocks))
        # the layer's attention: of several products q·kᵀ in it, the first over heads;
        # a scorer beside it whose scores sum over its heads only pick keys (a sparse
        # attention's indexer: its top-k only masks the attention)
        mine = [s for s in sites if s.node in nodes]
        site = next((s for s in mine if s.heads), mine[0] if mine else None)
        if site is not None:
            layer.num_heads = math.prod(groups[leaf].size for leaf in site.heads)
            layer.num_kv_heads = math.prod(groups[leaf].size for leaf in site.kv)
            layer.head_dim = site.head_dim
            layer.heads, layer.kv = list(site.heads), list(site.kv)
            layer.heads_beside = _beside(dims.atoms, groups, layer.heads)
        mine = [g for g in groups.values() if g.layer is not None and layers[g.layer] is layer]
        ranks = _attention_reads(site, layer.blocks, canonical)
        mixing = _convolved(nodes, canonical) | {
            n for leaf in layer.heads for n, _ in groups[leaf].members
        }
        for g in mine:
            names = {n for n, _ in g.members}
            if g.role == "ffn" and names <= ranks:
                g.role = "rank"  # a low-rank projection inside attention (MLA's): kept
            elif g.role == "ffn" and names & mixing:  # a token mixer's width: not the FFN
                g.role = "mixer"
        mixers = {g.id for g in mine if g.role == "mixer"}
        for g in mine:  # a low-rank projection into a token mixer's width (a gate's): kept
            if g.role == "ffn" and _reaches_group(g, mixers, dims):
                g.role = "rank"
        layer.ffn = [g.id for g in mine if g.role == "ffn"]
        layer.intermediate_size = sum(groups[g].size for g in layer.ffn)
        # outermost first: group-limited routing views its experts as (groups x experts)
        layer.experts = sorted((g.id for g in mine if g.role == "experts"), key=order.get)
        layer.num_experts = math.prod(groups[g].size for g in layer.experts) if layer.experts else 0
        routed = {n for g in layer.experts for n, _ in groups[g].members}
        for g in layer.ffn:
            # an axis of the routed experts' tensors that others share is not their width:
            # the space they read and write (projections into and out of it, a norm over
            # it), or shared experts scored on rows of the router beside the routed ones
            # (their count): kept
            names = {n for n, _ in groups[g].members}
            if names & routed and names - routed:
                groups[g].role = "rank"
        layer.ffn = [g for g in layer.ffn if groups[g].role == "ffn"]
        layer.intermediate_size = sum(groups[g].size for g in layer.ffn)
        beside = {p for b in layer.blocks if routed & set(b.params) for p in b.params}
        for g in layer.ffn:
            names = {n for n, _ in groups[g].members}
            if names & routed:
                layer.ffn_role[g] = FFN_ROLES[1]
            elif names <= beside:  # in the block of the routed experts: a shared expert
                layer.ffn_role[g] = FFN_ROLES[2]
            else:  # a dense MLP
                layer.ffn_role[g] = FFN_ROLES[0]


def _beside(atoms, groups: dict[int, Group], heads: list[int]) -> int:
    """The positions of the other segments of an axis that concatenates the attention's
    heads with other groups, where there is one such axis (0 where there is none)."""
    for refinement in atoms.refinement.values():
        if refinement.kind != "cat":
            continue
        parts = [atoms.leaves(p) for p in refinement.parts]
        if heads not in parts:
            continue
        others = [leaf for part in parts if part != heads for leaf in part]
        if others and all(leaf in groups and leaf not in heads for leaf in others):
            return sum(groups[leaf].size for leaf in others)
    return 0


def _reaches_group(group: Group, others: set[int], dims: Dims) -> bool:
    """Whether a tensor that `group` indexes has another axis in one of `others`."""
    atoms = dims.atoms
    for name, axis in group.members:
        axes = dims.tensors.get(name, [])
        for i, a in enumerate(axes):
            if i != axis and set(atoms.leaves(a)) & others:
                return True
    return False


def _convolved(nodes, canonical) -> set[str]:
    """The parameters among `nodes` that are a convolution's weight (a token mixer's: a
    convolution along the sequence)."""
    out = set()
    for node in nodes:
        if node.op == "call_function" and "conv" in str(node.target) and len(node.args) > 1:
            w = node.args[1]
            for _ in range(4):  # through a reshape of the weight (unsqueeze, view, ...)
                if not isinstance(w, fx.Node) or w.op != "call_function" or not w.args:
                    break
                w = w.args[0]
            if isinstance(w, fx.Node) and w.op == "get_attr":
                out.add(canonical(w.target))
    return out - {None}


def _attention_reads(site, blocks, canonical) -> set[str]:
    """The parameters a layer's attention scores are computed from within their block (from
    its residual input on): the query and key projections and what feeds them."""
    nodes = next((b.nodes for b in blocks if site is not None and site.node in b.nodes), set())
    seen, frontier = set(), [site.node] if nodes else []
    while frontier:
        node = frontier.pop()
        for x in node.all_input_nodes:
            if x not in seen and (x in nodes or x.op == "get_attr"):
                seen.add(x)
                frontier.append(x)
    return {canonical(n.target) for n in seen if n.op == "get_attr"} - {None}


def _segments(atoms: Atoms, a: int) -> list[int]:
    """The concatenated parts of an atom, nested concatenations flattened."""
    r = atoms.parts(a)
    if r is None or r.kind != "cat":
        return [atoms.find(a)]
    return [s for p in r.parts for s in _segments(atoms, p)]


def permuted_tensors(
    analysis: Analysis, perms: dict[int, torch.Tensor], only: set[tuple[str, int]] | None = None
) -> dict[str, torch.Tensor]:
    """Each tensor of the graph with the axes of the groups in `perms` permuted (new
    position i holds old position perm[i]); `only` restricts it to some (tensor, axis)
    members. Returns {canonical name: new tensor} for the tensors that changed."""
    atoms, out = analysis.atoms, {}
    module = analysis.graph.module
    for name, axes in analysis.dims.tensors.items():
        tensor = None
        for axis, a in enumerate(axes):
            for leaf, perm in perms.items():
                if only is not None and (name, axis) not in only:
                    continue
                if leaf in atoms.leaves(a):
                    src = tensor if tensor is not None else tensor_of(module, name)
                    tensor = src.index_select(axis, atoms.positions(a, {leaf: perm}))
                    out[name] = tensor
    return out


def _couplings(analysis: Analysis, kinds: dict[str, str]) -> dict[str, list]:
    """What the surgery must keep consistent besides the groups themselves."""
    atoms, groups, graph = analysis.atoms, analysis.groups, analysis.graph
    buffers = []
    for g in groups.values():
        held = sorted({name for name, _ in g.members if kinds.get(name) != "parameter"})
        if held and any(kinds.get(name) == "parameter" for name, _ in g.members):
            buffers.append({"group": g.id, "role": g.role, "tensors": held})
    rotary = [b for b in buffers if b["role"] == "head_dim"]
    # A projection whose whole output axis is cut into parts used separately (q|k|v,
    # gate|up). A cut inside a per-head axis (rotary halves, per-head q|k|v) is not listed.
    fused = []
    for name, axes in analysis.dims.tensors.items():
        if kinds.get(name) != "parameter" or len(axes) < 2:
            continue
        for axis, a in enumerate(axes):
            for whole, node in analysis.dims.splits:
                if atoms.find(a) == atoms.find(whole):
                    fused.append(
                        {
                            "tensor": name,
                            "axis": axis,
                            "split_by": node.name,
                            "segments": [atoms.size[p] for p in _segments(atoms, whole)],
                        }
                    )
                    break
    per_head_norms = [
        name
        for name, axes in analysis.dims.tensors.items()
        if kinds.get(name) == "parameter"
        and len(axes) == 1
        and all(
            groups.get(leaf) is not None and groups[leaf].role == "head_dim"
            for leaf in atoms.leaves(axes[0])
        )
    ]
    return {
        "tied": [list(t) for t in graph.params.tied],
        "rotary": rotary,
        "buffers": [b for b in buffers if b not in rotary],
        "fused": fused,
        "per_head_norms": per_head_norms,
        "other_stacks": _other_stacks(analysis, kinds),
    }


def _other_stacks(analysis: Analysis, kinds: dict[str, str]) -> list[str]:
    """Numbered lists of modules whose weights the forward reads but which hold none of
    the layers found (no residual blocks were found in them): kept as they are."""
    parts = {part for layer in analysis.layers for part in layer.parts}
    return _unclaimed(analysis.dims, kinds, parts)


def _unclaimed(dims: Dims, kinds: dict[str, str], layers: set[str]) -> list[str]:
    """The numbered lists of modules (outermost) whose weights the forward reads, none
    of whose entries is among `layers` (module paths), inside one or holds one."""
    entries = _entries(dims, kinds, layers)
    return sorted(p for p, (free, seen) in entries.items() if free == seen)


def _free_entries(dims: Dims, kinds: dict[str, str], layers: set[str]) -> dict[str, set[str]]:
    """Per numbered list of modules whose weights the forward reads (the outermost one
    that is not a layer's or does not hold one), its entries that are neither among
    `layers`, inside one, nor hold one: {list path: {index, ...}}."""
    entries = _entries(dims, kinds, layers)
    return {p: free for p, (free, _) in entries.items() if free}


def _entries(dims: Dims, kinds: dict[str, str], layers: set[str]) -> dict[str, tuple]:
    """{list path: (free indices, all indices)} for the lists of two entries or more
    found walking each parameter's path from the outside in: an entry inside one of
    `layers` ends the walk, one that holds one is looked into, any other is free."""
    holders = {layer[: m.end()] for layer in layers for m in _INDEX.finditer(layer)}
    out: dict[str, tuple[set, set]] = {}
    for name in dims.tensors:
        if kinds.get(name) != "parameter":
            continue
        for m in _INDEX.finditer(name):
            entry, path = name[: m.end()], name[: m.start()]
            if any(entry.startswith(x + ".") for x in layers):
                break  # a list inside a layer (its experts)
            free, seen = out.setdefault(path, (set(), set()))
            seen.add(m.group(1))
            if entry in layers:
                break
            if entry not in holders:
                free.add(m.group(1))
                break
    return {p: (free, seen) for p, (free, seen) in out.items() if len(seen) > 1}


_INDEX = re.compile(r"\.(\d+)(?=\.)")


def _outermost(name: str) -> bool:
    """Whether module path `name` is an entry of an outermost numbered list."""
    m = NUMBERED.match(name)
    return m is not None and m.group(1) == name
