"""A deep stack's graph from the trace of a shallow twin (issue 33).

torch.export spends most of a meta-device analysis tracing the same layer again and
again. The twin is the model's own class built from a copy of its config with fewer
layers: the first (it may differ: no attention mask before it, a dense FFN), then two
periods of the per-layer config lists (one layer where they hold one value, two where
`layer_types` alternates sliding and full attention, ...), the lists cut to match. Its
trace stands for the model's when, and only when:

- the model has one module list of layers, as long as its config's `num_hidden_layers`,
  and every later layer has the module types, tensor names, shapes and dtypes of the
  twin's layer one period before it (the twin's own layers and the tensors outside the
  list match the twin's one for one);
- in the twin's graph, each layer of the last period is the same computation as the
  layer a period before it (op for op, each argument the same constant, the same shared
  value, the same tensor of their own layer, or the previous layer's output), which
  catches a forward that reads the layer's index (GPT-2's
  `scale_attn_by_inverse_layer_idx`), and each layer's nodes read no other layer's nodes
  but its predecessor's output, which nodes outside the layers read only of the last.

The last period's nodes are then copied in turn for every missing layer, each copy
reading the previous copy's output and its own layer's tensors, and the graph's readers
of the last layer's output read the last copy's. Anything else returns None: the caller
traces the model itself. Tests compare the expanded graph with the full trace, op for op,
and run both on the same weights."""

from __future__ import annotations

import copy
import re
from itertools import chain
from typing import Any

import torch
from torch import fx, nn

from . import trace
from .export import _on_meta
from .graph import Graph, Inputs, ParamTable, assign, built_on_meta, tensor_of

__all__ = ["trace_twin", "traced"]


def _depth(period: int) -> int:
    """The twin's layers for layers that repeat every `period`: the first (which may
    differ: no attention mask before it, a dense FFN), then two periods to compare."""
    return 1 + 2 * period


def _period(config: Any, n: int) -> int | None:
    """The shortest period of the config's per-layer lists (`layer_types` alternating
    sliding and full attention: 2), 1 when it has none or they hold one value; None
    where they do not repeat."""
    lists = [v for v in config.to_dict().values() if isinstance(v, (list, tuple)) and len(v) == n]
    for period in range(1, n // 3 + 1):
        if all(repr(v[i]) == repr(v[i - period]) for v in lists for i in range(period, n)):
            return period
    return None


def traced(model: nn.Module, example_inputs: Any = None) -> Graph:
    """`trace(model, example_inputs)`, from a shallow twin's trace for a model on the meta
    device where one stands for it (a model with weights is traced whole: `prepare`
    compares that graph with the model's own forward)."""
    return (_on_meta(model) and trace_twin(model, example_inputs)) or trace(model, example_inputs)


def trace_twin(model: nn.Module, inputs: Inputs | Any) -> Graph | None:
    """`model`'s graph from its twin's trace, or None where the twin cannot stand for it.
    The twin is built on the device of `model`'s weights."""
    stack = _stack(model)
    if stack is None:
        return None
    prefix, n = stack
    period = _period(model.config, n)
    if period is None or _depth(period) + 1 >= n:
        return None
    twin = _twin(model, n, period)
    if twin is None or not _same_tensors(model, twin, prefix, period):
        return None
    try:
        small = trace(twin, inputs)
    except Exception:  # noqa: BLE001 - the model's own trace reports it
        return None
    constants = [e for e in small.params if e.kind == "constant"]
    params = ParamTable([*ParamTable.from_module(model), *constants])
    module = _expanded(small.module, prefix, n, period)
    if module is None:
        return None
    for node in module.graph.nodes:  # the model's own tensors, ties as in the model
        if node.op == "get_attr" and node.target in params:
            assign(module, node.target, tensor_of(model, node.target))
    try:
        module.graph.lint()
    except Exception:  # noqa: BLE001 - a reader placed before the layer's last node
        return None
    module.recompile()
    return Graph(module, params, small.inputs, small.frontend)


def _stack(model: nn.Module) -> tuple[str, int] | None:
    """The one module list as long as the config's layer count, and that count."""
    try:
        n = int(model.config.num_hidden_layers)
    except (AttributeError, TypeError, ValueError):
        return None
    found = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) == n and name
    ]
    return (found[0], n) if len(found) == 1 else None


def _twin(model: nn.Module, n: int, period: int) -> nn.Module | None:
    """The model's class from its config with `_depth(period)` layers (its per-layer
    lists cut to match), on the device of its weights."""
    config = copy.deepcopy(model.config)
    depth = _depth(period)
    lists = {
        k: v for k, v in config.to_dict().items() if isinstance(v, (list, tuple)) and len(v) == n
    }
    try:
        config.num_hidden_layers = depth
        for key, value in lists.items():
            setattr(config, key, type(value)(value[:depth]))
        device = next(chain(model.parameters(), [torch.empty(0, device="meta")])).device
        if device.type == "meta":
            return built_on_meta(lambda: type(model)(config)).eval()
        with torch.device(device):
            return type(model)(config).eval()
    except Exception:  # noqa: BLE001 - a config that cannot be shortened has no twin
        return None


def _source(k: int, period: int) -> int:
    """The twin's layer that layer `k` is a copy of (itself within the twin)."""
    depth = _depth(period)
    return k if k < depth else depth - period + (k - depth) % period


def _same_tensors(model: nn.Module, twin: nn.Module, prefix: str, period: int) -> bool:
    """Whether the model is the twin with its last period repeated: the same tensors
    (names, shapes, dtypes) and module types outside the list and in the twin's layers,
    and in every later layer those of the twin's layer it copies (`_source`)."""

    def entries(m: nn.Module, rename) -> set:
        named = chain(
            m.named_parameters(remove_duplicate=False), m.named_buffers(remove_duplicate=False)
        )
        out = {(rename(n), tuple(t.shape), t.dtype) for n, t in named}
        return out | {(rename(n), type(x)) for n, x in m.named_modules(remove_duplicate=False)}

    def as_twin(name: str) -> str:
        k = _layer(name, prefix)
        return name if k is None else _renamed(name, prefix, _source(k, period))

    return entries(model, as_twin) == entries(twin, lambda name: name)


def _layer(name: str, prefix: str) -> int | None:
    """The layer of the list `prefix` that a dotted name is in (None: none)."""
    m = re.match(rf"{re.escape(prefix)}\.(\d+)(?:\.|$)", name)
    return int(m.group(1)) if m else None


def _node_layer(node: fx.Node, prefix: str) -> int | None:
    if node.op == "get_attr":
        return _layer(node.target, prefix)
    stack = node.meta.get("nn_module_stack") or {}
    found = {_layer(path, prefix) for path, _ in stack.values()} - {None}
    return found.pop() if len(found) == 1 else (-1 if found else None)


def _expanded(gm: fx.GraphModule, prefix: str, n: int, period: int) -> fx.GraphModule | None:
    """The twin's graph with its last period of layers copied, in turn, up to `n` layers,
    each copy reading its own layer's tensors by name (the caller gives the module
    them); None where the last two periods are not the same computation layer for layer
    (see the module's docstring)."""
    depth = _depth(period)
    nodes: dict[int, list[fx.Node]] = {}
    attrs: dict[int, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        k = _node_layer(node, prefix)
        if k == -1:  # a node in two layers' modules
            return None
        if k is not None:
            (attrs if node.op == "get_attr" else nodes).setdefault(k, []).append(node)
    if sorted(nodes) != list(range(depth)):
        return None
    inside = {x: k for k, group in (*nodes.items(), *attrs.items()) for x in group}
    outs = [_read_from(nodes[k + 1], inside, k) for k in range(depth - 1)]
    outs.append(_read_outside(gm, inside, depth - 1))
    if any(o is None for o in outs):
        return None
    for a in range(1, 1 + period):  # layer a and its copy a period later
        b = a + period
        if not _same_layer(nodes[a], nodes[b], (outs[a - 1], outs[b - 1]), (a, b), prefix):
            return None
        if nodes[a].index(outs[a]) != nodes[b].index(outs[b]):
            return None
    runs = {k: _runs(gm, attrs.get(k, [])) for k in range(depth - period, depth)}
    if len({len(r) for r in runs.values()}) != 1:
        return None
    graph, previous, anchor = gm.graph, outs[-1], nodes[depth - 1][-1]
    ends = [run[-1] for run in runs[depth - 1]]  # a copy's tensors go after the last's
    readers = [u for u in outs[-1].users if u not in inside]
    for k in range(depth, n):
        src = _source(k, period)
        env: dict[fx.Node, fx.Node] = {outs[src - 1]: previous}
        for r, run in enumerate(runs[src]):
            for node in run:
                name = _renamed(node.target, prefix, k)
                with graph.inserting_after(ends[r]):  # the tensor itself: `trace_twin`'s
                    ends[r] = env[node] = graph.create_node("get_attr", name)
                ends[r].meta = dict(node.meta)
        for node in nodes[src]:
            with graph.inserting_after(anchor):
                anchor = env[node] = graph.node_copy(node, lambda a, env=env: env.get(a, a))
            anchor.meta = _moved_meta(node.meta, prefix, k)
        previous = env[outs[src]]
    for user in readers:
        user.replace_input_with(outs[-1], previous)
    return gm


def _runs(gm: fx.GraphModule, attrs: list[fx.Node]) -> list[list[fx.Node]]:
    """A layer's `get_attr` nodes as runs that follow each other in the graph (its
    parameters among all layers' parameters, its buffers among their buffers)."""
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    runs: list[list[fx.Node]] = []
    for node in attrs:
        if runs and order[node] == order[runs[-1][-1]] + 1:
            runs[-1].append(node)
        else:
            runs.append([node])
    return runs


def _read_from(layer: list[fx.Node], inside: dict, source: int) -> fx.Node | None:
    """The one node of layer `source` that `layer`'s nodes read (None: several)."""
    read = {a for node in layer for a in node.all_input_nodes if inside.get(a) == source}
    read = {a for a in read if a.op != "get_attr"}
    return read.pop() if len(read) == 1 else None


def _read_outside(gm: fx.GraphModule, inside: dict, last: int) -> fx.Node | None:
    """The one node of the layers that nodes outside them read, of the layer `last`: its
    output (None where they read another)."""
    read = {
        a
        for node in gm.graph.nodes
        if node not in inside
        for a in node.all_input_nodes
        if a in inside and a.op != "get_attr"
    }
    if len(read) != 1 or inside[next(iter(read))] != last:
        return None
    return read.pop()


def _same_layer(a: list[fx.Node], b: list[fx.Node], inputs, layers, prefix: str) -> bool:
    """Whether layers `a` and `b` (numbered `layers`, reading `inputs`) compute the same
    thing."""
    if len(a) != len(b):
        return False
    pos_a, pos_b = {x: i for i, x in enumerate(a)}, {x: i for i, x in enumerate(b)}

    def token(x: fx.Node, pos: dict, input_: fx.Node, layer: int):
        if x in pos:
            return ("own", pos[x])
        if x is input_:
            return ("input",)
        k = _layer(x.target, prefix) if x.op == "get_attr" else None
        if k == layer:  # its own layer's tensor, by its name in the layer
            return ("tensor", x.target.split(".", prefix.count(".") + 2)[-1])
        return ("shared", x)  # another layer's tensor differs between the two layers

    for x, y in zip(a, b, strict=True):
        if (x.op, x.target) != (y.op, y.target) or _sig(x.meta.get("val")) != _sig(
            y.meta.get("val")
        ):
            return False
        ta = fx.node.map_arg((x.args, x.kwargs), lambda v: token(v, pos_a, inputs[0], layers[0]))
        tb = fx.node.map_arg((y.args, y.kwargs), lambda v: token(v, pos_b, inputs[1], layers[1]))
        if not _equal(ta, tb):
            return False
    return True


def _equal(x: Any, y: Any) -> bool:
    if isinstance(x, (tuple, list)) and isinstance(y, (tuple, list)):
        return len(x) == len(y) and all(_equal(a, b) for a, b in zip(x, y, strict=True))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_equal(x[k], y[k]) for k in x)
    if type(x) is not type(y):
        return False
    if isinstance(x, float) and x != x:  # NaN
        return y != y
    try:
        return bool(x == y)
    except Exception:  # noqa: BLE001 - values that do not compare are not the same
        return False


def _sig(val: Any) -> Any:
    if isinstance(val, torch.Tensor):
        return (tuple(val.shape), val.dtype)
    if isinstance(val, (tuple, list)):
        return tuple(_sig(v) for v in val)
    return type(val).__name__


def _renamed(name: str, prefix: str, k: int) -> str:
    return re.sub(rf"^{re.escape(prefix)}\.\d+(?=\.|$)", f"{prefix}.{k}", name)


def _moved_meta(meta: dict, prefix: str, k: int) -> dict:
    """A copied node's metadata, its module paths in layer `k`."""
    out = dict(meta)
    stack = meta.get("nn_module_stack")
    if stack:
        key = re.compile(rf"{re.escape(prefix)}\.\d+(?=\.|$)")
        out["nn_module_stack"] = {
            key.sub(f"{prefix}.{k}", name): (_renamed(path, prefix, k), kind)
            for name, (path, kind) in stack.items()
        }
    return out
