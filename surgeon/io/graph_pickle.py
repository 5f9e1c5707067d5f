"""A traced fx graph and what refers to its nodes, as pickles that another process reads
back (`surgeon.io.prepared`): nodes as their indices, the graph and its module by name,
fake tensors as their shape, stride, storage offset, dtype and device (made again in one
fake mode), other tensors as their bytes, torch ops by their names. Reading admits only
the classes a graph and its analysis hold (surgeon's, a few of torch's and Python's,
modules and model outputs of transformers and torch): no function is called but the
constructors of those classes and `operator.getitem`, a graph node's target."""

from __future__ import annotations

import functools
import io
import operator
import pickle
from collections import Counter, OrderedDict, defaultdict
from typing import Any

import torch
from torch import fx, nn

__all__ = ["Ref", "dumps", "loads", "rebuilt"]

_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "slice", "range", "complex"}
_EXACT = {
    ("collections", "OrderedDict"): OrderedDict,
    ("collections", "Counter"): Counter,
    ("collections", "defaultdict"): defaultdict,
    ("_operator", "getitem"): operator.getitem,
    ("operator", "getitem"): operator.getitem,
    ("torch", "device"): torch.device,
    ("torch", "Size"): torch.Size,
}
_TORCH = {  # (module, class) of torch a graph holds: code generator, tracer, pytree specs
    ("torch.fx.graph", "_PyTreeCodeGen"),
    ("torch.fx.graph", "_PyTreeInfo"),
    ("torch.fx.graph", "CodeGen"),
    ("torch.fx.immutable_collections", "immutable_dict"),
    ("torch.fx.immutable_collections", "immutable_list"),
    ("torch.fx.experimental.proxy_tensor", "_ModuleStackTracer"),
    ("torch.fx._symbolic_trace", "Tracer"),
    ("torch.utils._pytree", "TreeSpec"),
    ("torch.utils._pytree", "LeafSpec"),
}


def dumps(obj: Any, index: dict[fx.Node, int], graph) -> bytes:
    """`obj` pickled with the nodes of `graph` (a `surgeon.frontends.Graph`) as their
    numbers in `index`; a node of another graph raises `KeyError`."""
    buf = io.BytesIO()
    _Dumper(buf, index, graph).dump(obj)
    return buf.getvalue()


def loads(data: bytes, nodes: list[fx.Node] | None = None, graph=None) -> Any:
    """What `dumps` wrote, node numbers as `nodes[i]` (`Ref(i)` without them)."""
    return _Loader(io.BytesIO(data), nodes, graph).load()


class _Dumper(pickle.Pickler):
    def __init__(self, file, index: dict, graph):
        super().__init__(file, protocol=5)
        self.index, self.graph = index, graph

    def persistent_id(self, obj: Any):
        from torch._subclasses.fake_tensor import FakeTensor

        if isinstance(obj, fx.Node):
            return ("node", self.index[obj])
        if self.graph is not None and obj is self.graph:
            return ("graph",)
        if self.graph is not None and obj is self.graph.module:
            return ("module",)
        if isinstance(obj, FakeTensor):
            shape, stride = tuple(map(int, obj.shape)), tuple(map(int, obj.stride()))
            offset = int(obj.storage_offset())
            return ("fake", shape, stride, offset, obj.dtype, str(obj.device), obj.requires_grad)
        if isinstance(obj, torch.Tensor):
            return _tensor_id(obj)
        if isinstance(obj, (torch.dtype, torch.layout, torch.memory_format)):
            return ("torch", str(obj).removeprefix("torch."))
        if isinstance(obj, torch._ops.OperatorBase):
            return ("op", _op_name(obj))
        if isinstance(obj, fx.GraphModule):
            raise TypeError("a graph module other than the graph's own")  # its code runs
        return None


def _tensor_id(t: torch.Tensor) -> tuple:
    head = (tuple(t.shape), t.dtype, t.requires_grad, isinstance(t, nn.Parameter))
    if t.device.type == "meta":
        return ("meta", *head)
    data = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
    return ("tensor", *head, data.numpy().tobytes())


def _op_name(op: Any) -> str:
    if isinstance(op, torch._ops.HigherOrderOperator):
        return f"higher_order.{op.name()}"
    if isinstance(op, torch._ops.OpOverload):
        return f"{op.namespace}.{op._schema.name.split('::')[1]}.{op._overloadname}"
    if isinstance(op, torch._ops.OpOverloadPacket):
        return op._qualified_op_name.replace("::", ".")
    raise TypeError(f"an operator of kind {type(op).__name__}")


class _Loader(pickle.Unpickler):
    def __init__(self, file, nodes, graph):
        super().__init__(file)
        self.nodes, self.graph, self.mode = nodes, graph, None

    def find_class(self, module: str, name: str):
        found = _EXACT.get((module, name))
        if found is not None:
            return found
        if module == "builtins" and name in _BUILTINS:
            return super().find_class(module, name)
        if (module, name) in _TORCH:
            return super().find_class(module, name)
        if module.startswith(("surgeon.", "transformers.", "torch.nn.", "builtins")):
            obj = super().find_class(module, name)
            if isinstance(obj, type) and _admitted(obj, module):
                return obj
        raise pickle.UnpicklingError(f"{module}.{name} is not among a graph's classes")

    def persistent_load(self, pid: tuple):
        kind, rest = pid[0], pid[1:]
        if kind == "node":
            return self.nodes[rest[0]] if self.nodes is not None else Ref(rest[0])
        if kind == "graph":
            return self.graph
        if kind == "module":
            return self.graph.module
        if kind == "fake":
            return self._fake(*rest)
        if kind in ("tensor", "meta"):
            return _tensor(kind, *rest)
        if kind == "torch":
            value = getattr(torch, rest[0])
            if not isinstance(value, (torch.dtype, torch.layout, torch.memory_format)):
                raise pickle.UnpicklingError(f"torch.{rest[0]} is no dtype or layout")
            return value
        if kind == "op":
            op = functools.reduce(getattr, rest[0].split("."), torch.ops)
            if not isinstance(op, torch._ops.OperatorBase):
                raise pickle.UnpicklingError(f"torch.ops.{rest[0]} is no operator")
            return op
        raise pickle.UnpicklingError(f"unknown reference {kind!r}")

    def _fake(self, shape, stride, offset, dtype, device, requires_grad):
        from torch._subclasses.fake_tensor import FakeTensorMode

        if self.mode is None:
            self.mode = FakeTensorMode(allow_non_fake_inputs=True)
        span = offset + 1 + sum((s - 1) * st for s, st in zip(shape, stride, strict=True))
        span = offset if 0 in shape else span
        with self.mode:
            t = torch.empty(span, dtype=dtype, device=device).as_strided(shape, stride, offset)
        return t.requires_grad_(requires_grad) if requires_grad else t


def _admitted(cls: type, module: str) -> bool:
    """A class of surgeon's; a module, a model output or a warning of transformers' or
    torch.nn's; a warning among Python's."""
    if module.startswith("surgeon."):
        return True
    if issubclass(cls, Warning):
        return True
    if module.startswith("builtins"):
        return False
    from transformers.utils import ModelOutput

    return issubclass(cls, (nn.Module, ModelOutput))


def _tensor(kind, shape, dtype, requires_grad, parameter, data=None) -> torch.Tensor:
    if kind == "meta":
        t = torch.empty(shape, dtype=dtype, device="meta")
    elif not data:
        t = torch.empty(shape, dtype=dtype)
    else:
        t = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(shape)
    if parameter:
        return nn.Parameter(t, requires_grad=requires_grad)
    return t.requires_grad_(requires_grad) if requires_grad else t


class Ref:
    """A node's argument that is another node, by its index, until that node is made."""

    __slots__ = ("i",)

    def __init__(self, i: int):
        self.i = i


def rebuilt(nodes: list[tuple], codegen, tracer) -> tuple[fx.Graph, list[fx.Node]]:
    """A graph of `nodes` (name, op, target, args, kwargs, type, metadata; other nodes as
    `Ref`s), made in order under their own names, and its nodes."""
    graph = fx.Graph(tracer_cls=tracer)
    graph._codegen = codegen
    made: list[fx.Node] = []
    resolve = lambda x: made[x.i] if isinstance(x, Ref) else x  # noqa: E731
    for name, op, target, args, kwargs, type_expr, meta in nodes:
        args = fx.node.map_aggregate(args, resolve)
        kwargs = fx.node.map_aggregate(kwargs, resolve)
        node = graph.create_node(op, target, args, kwargs, name=name, type_expr=type_expr)
        if node.name != name:
            raise ValueError(f"node {name} was made as {node.name}")
        node.meta.update(meta)
        made.append(node)
    return graph, made
