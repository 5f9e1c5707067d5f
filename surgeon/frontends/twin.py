"""A deep stack's graph from the trace of a shallow twin (issue 33).

torch.export spends most of a meta-device analysis tracing the same layer again and
again. The twin is the model's own class built from a copy of its config with `TWIN`
layers (per-layer config lists that hold one value for every layer cut to match). Its
trace stands for the model's when, and only when:

- the model has one module list of layers, as long as its config's `num_hidden_layers`,
  and every layer from the twin's last on has the module types, tensor names, shapes
  and dtypes of the twin's last layer (the layers before it and the tensors outside the
  list match the twin's one for one);
- in the twin's graph, the last two layers are the same computation (op for op, each
  argument the same constant, the same shared value, the same tensor of their own layer,
  or the previous layer's output), which catches a forward that reads the layer's index
  (GPT-2's `scale_attn_by_inverse_layer_idx`), and each layer's nodes read no other
  layer's nodes but its predecessor's output, which nodes outside the layers read only
  of the last layer.

The last layer's nodes are then copied once per missing layer, each copy reading the
previous copy's output and its own layer's tensors, and the graph's readers of the last
layer's output read the last copy's. Anything else returns None: the caller traces the
model itself. Tests compare the expanded graph with the full trace, op for op, and run
both on the same weights."""

from __future__ import annotations

import copy
import re
from itertools import chain
from typing import Any

import torch
from torch import fx, nn

from . import trace
from .graph import Graph, Inputs, ParamTable, tensor_of

__all__ = ["TWIN", "trace_twin", "traced"]

TWIN = 3  # the first layer may differ from the others (no attention mask, a dense FFN)


def traced(model: nn.Module, example_inputs: Any = None) -> Graph:
    """`trace(model, example_inputs)`, from a shallow twin's trace for a model on the meta
    device where one stands for it (a model with weights is traced whole: `prepare`
    compares that graph with the model's own forward)."""
    on_meta = any(t.device.type == "meta" for t in model.parameters())
    return (on_meta and trace_twin(model, example_inputs)) or trace(model, example_inputs)


def trace_twin(model: nn.Module, inputs: Inputs | Any) -> Graph | None:
    """`model`'s graph from its twin's trace, or None where the twin cannot stand for it.
    The twin is built on the device of `model`'s weights."""
    stack = _stack(model)
    if stack is None:
        return None
    prefix, n = stack
    twin = _twin(model, n)
    if twin is None or not _same_tensors(model, twin, prefix):
        return None
    try:
        small = trace(twin, inputs)
    except Exception:  # noqa: BLE001 - the model's own trace reports it
        return None
    constants = [e for e in small.params if e.kind == "constant"]
    params = ParamTable([*ParamTable.from_module(model), *constants])
    module = _expanded(small.module, prefix, n, lambda name: tensor_of(model, name))
    if module is None:
        return None
    for node in module.graph.nodes:  # the model's own tensors, ties as in the model
        if node.op == "get_attr" and node.target in params:
            _assign(module, node.target, tensor_of(model, node.target))
    module.recompile()
    return Graph(module, params, small.inputs, small.frontend)


def _stack(model: nn.Module) -> tuple[str, int] | None:
    """The one module list as long as the config's layer count, and that count."""
    try:
        n = int(model.config.num_hidden_layers)
    except (AttributeError, TypeError, ValueError):
        return None
    if n <= TWIN + 1:
        return None
    found = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) == n and name
    ]
    return (found[0], n) if len(found) == 1 else None


def _twin(model: nn.Module, n: int) -> nn.Module | None:
    """The model's class on the meta device from its config with `TWIN` layers; None
    where a per-layer list of the config holds different values."""
    config = copy.deepcopy(model.config)
    lists = {
        k: v for k, v in config.to_dict().items() if isinstance(v, (list, tuple)) and len(v) == n
    }
    if any(len({repr(x) for x in v}) > 1 for v in lists.values()):
        return None
    try:
        config.num_hidden_layers = TWIN
        for key, value in lists.items():
            setattr(config, key, type(value)(value[:TWIN]))
        device = next(chain(model.parameters(), [torch.empty(0, device="meta")])).device
        with torch.device(device):
            return type(model)(config).eval()
    except Exception:  # noqa: BLE001 - a config that cannot be shortened has no twin
        return None


def _same_tensors(model: nn.Module, twin: nn.Module, prefix: str) -> bool:
    """Whether the model is the twin with its last layer repeated: the same tensors
    (names, shapes, dtypes) and module types outside the list and in its first layers,
    and the twin's last layer's in every later one."""

    def entries(m: nn.Module, rename) -> set:
        named = chain(
            m.named_parameters(remove_duplicate=False), m.named_buffers(remove_duplicate=False)
        )
        out = {(rename(n), tuple(t.shape), t.dtype) for n, t in named}
        return out | {(rename(n), type(x)) for n, x in m.named_modules(remove_duplicate=False)}

    def as_twin(name: str) -> str:
        k = _layer(name, prefix)
        return name if k is None or k < TWIN else _renamed(name, prefix, TWIN - 1)

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


def _expanded(gm: fx.GraphModule, prefix: str, n: int, tensor) -> fx.GraphModule | None:
    """The twin's graph with its last layer copied up to `n` layers, each copy's tensors
    `tensor(name)`; None where the last two layers are not the same computation (see the
    module's docstring)."""
    nodes: dict[int, list[fx.Node]] = {}
    attrs: dict[int, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        k = _node_layer(node, prefix)
        if k == -1:  # a node in two layers' modules
            return None
        if k is not None:
            (attrs if node.op == "get_attr" else nodes).setdefault(k, []).append(node)
    if sorted(nodes) != list(range(TWIN)):
        return None
    last = nodes[TWIN - 1]
    inside = {x: k for k, group in (*nodes.items(), *attrs.items()) for x in group}
    carried = [_read_from(nodes[k], inside, k - 1) for k in range(1, TWIN)]
    if any(c is None for c in carried):
        return None
    out = _read_outside(gm, inside)
    if out is None or not _same_layer(nodes[TWIN - 2], last, carried, prefix):
        return None
    if nodes[TWIN - 2].index(carried[-1]) != last.index(out):
        return None
    graph, previous, anchor = gm.graph, out, last[-1]
    attr_anchor = attrs.get(TWIN - 1, [None])[-1]
    readers = [u for u in out.users if inside.get(u) != TWIN - 1]
    for k in range(TWIN, n):
        env: dict[fx.Node, fx.Node] = {carried[-1]: previous}
        for node in attrs.get(TWIN - 1, []):
            name = _renamed(node.target, prefix, k)
            _assign(gm, name, tensor(name))
            with graph.inserting_after(attr_anchor):
                attr_anchor = env[node] = graph.get_attr(name)
            attr_anchor.meta = dict(node.meta)
        for node in last:
            with graph.inserting_after(anchor):
                anchor = env[node] = graph.node_copy(node, lambda a, env=env: env.get(a, a))
            anchor.meta = _moved_meta(node.meta, prefix, k)
        previous = env[out]
    for user in readers:
        user.replace_input_with(out, previous)
    try:
        graph.lint()
    except Exception:  # noqa: BLE001 - a reader placed before the layer's last node
        return None
    return gm


def _read_from(layer: list[fx.Node], inside: dict, source: int) -> fx.Node | None:
    """The one node of layer `source` that `layer`'s nodes read (None: several)."""
    read = {a for node in layer for a in node.all_input_nodes if inside.get(a) == source}
    read = {a for a in read if a.op != "get_attr"}
    return read.pop() if len(read) == 1 else None


def _read_outside(gm: fx.GraphModule, inside: dict) -> fx.Node | None:
    """The one node of the layers that nodes outside them read: the last layer's output
    (None where they read another)."""
    read = {
        a
        for node in gm.graph.nodes
        if node not in inside
        for a in node.all_input_nodes
        if a in inside and a.op != "get_attr"
    }
    if len(read) != 1 or inside[next(iter(read))] != TWIN - 1:
        return None
    return read.pop()


def _same_layer(a: list[fx.Node], b: list[fx.Node], carried: list, prefix: str) -> bool:
    """Whether layers `a` and `b` (the twin's last two) compute the same thing."""
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
        ta = fx.node.map_arg((x.args, x.kwargs), lambda v: token(v, pos_a, carried[-2], TWIN - 2))
        tb = fx.node.map_arg((y.args, y.kwargs), lambda v: token(v, pos_b, carried[-1], TWIN - 1))
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


def _assign(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Hold `tensor` under the dotted `name` (submodules made as needed)."""
    *path, attr = name.split(".")
    for part in path:
        if not hasattr(module, part):
            module.add_module(part, nn.Module())
        module = getattr(module, part)
    if attr in module._parameters or attr in module._buffers or hasattr(module, attr):
        delattr(module, attr)
    if isinstance(tensor, nn.Parameter):
        module.register_parameter(attr, tensor)
    else:
        module.register_buffer(attr, tensor)
