"""A folder's traced and analysed parent, kept on disk (issue 33): a second `surgeon apply`
on the same parent (another size, another budget), or `surgeon inspect` after `apply`,
skips tracing and analysing it and only builds its class on the meta device.

The key is everything the graph and the analysis depend on besides the code surgeon
runs: the model's config as built (its JSON with every default, and its private settings
such as the attention implementation), the class and the size and time of the file that
defines it, the example inputs (shapes, dtypes, bytes), which tensors the folder stores
(its index: the buffers it lacks are computed), the versions of Python, torch and
transformers, the size and time of every source file of surgeon, and the op-rule table
(a rule registered by the user: its function's code). A plan's own rules
(`prepare_folder(..., rules=)`) are not cached.

What is kept, in one file per key under `cache_folder() / "prepared"`: the graph's nodes
in order (op, target, arguments with nodes as their indices, and the metadata the passes
read: `val` as shape, stride, dtype and device, rebuilt as fake tensors of one fake
mode; `nn_module_stack`; `stack_trace`), its code generator (the pytree specs), the graph
module's attributes but the methods `ep.module()` defines in place (its `train` and
`eval`, which raise), the constants the trace made, the parameter table, the example
inputs, the buffers computed from the config, the warnings the trace gave (given again
on every load), and the analysis with nodes as their indices. Loaded, the graph is bound
to the model built from the folder's config, as a traced graph is. A file that cannot be
read or names a class outside surgeon, torch, transformers, the model's own module and
Python's standard types is no cache; anything that cannot be written is not kept (a
cache only saves time). `surgeon apply --no-cache` neither reads nor writes it."""

from __future__ import annotations

import functools
import hashlib
import io
import os
import pickle
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from .measures import cache_folder

__all__ = ["load_prepared", "prepared_key", "save_prepared"]

FORMAT = 1
_META = ("val", "nn_module_stack", "stack_trace")  # what surgeon reads of a node's metadata
_MODULES = ("surgeon.", "torch.", "transformers.")  # and Python's modules a graph holds:
_STANDARD = {"builtins", "collections", "copyreg", "_codecs", "functools", "operator", "_operator"}
_STANDARD |= {"math", "enum", "types"}


def prepared_key(model: nn.Module, inputs: Any, stored: dict[str, str]) -> str | None:
    """The key of `model`'s (built from a folder's config) trace on `inputs` and its
    analysis, None where it cannot be told (a config that does not serialise)."""
    from ..frontends import memo
    from ..frontends.graph import as_inputs

    try:
        config = model.config
        private = sorted(
            (k, v)
            for k, v in vars(config).items()
            if k.startswith("_") and (v is None or isinstance(v, (bool, int, float, str)))
        )
        told = memo._inputs(as_inputs(inputs)) if inputs is not None else None
        parts = (
            FORMAT,
            config.to_json_string(use_diff=False),
            private,
            f"{type(model).__module__}.{type(model).__qualname__}",
            _file_stamp(sys.modules[type(model).__module__].__file__),
            _code_stamp(model),
            told,
            sorted(stored.items()),
            sys.version,
            torch.__version__,
            _version("transformers"),
            _surgeon_stamp(),
            _rules_stamp(),
        )
    except Exception:  # noqa: BLE001 - what cannot be told is traced every time
        return None
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


def save_prepared(
    key: str | None, model: nn.Module, graph, analysis, buffers: dict, caught: list
) -> None:
    """Keep `graph` (of `model`, whose key `key` is), `analysis` and the computed
    `buffers` under `key`; nothing is written where any of it cannot be."""
    if key is None:
        return
    from ..frontends import memo

    try:
        gm = graph.module
        nodes = list(gm.graph.nodes)
        index = {n: i for i, n in enumerate(nodes)}
        attributes, extras, constants = memo.parts(graph, model)
        attributes = {k: v for k, v in attributes.items() if not callable(v)}
        described = [
            (n.name, n.op, n.target, n.args, n.kwargs, n.type, _kept_meta(n)) for n in nodes
        ]
        head = {
            "nodes": described,
            "codegen": gm.graph._codegen,
            "tracer": getattr(gm.graph, "_tracer_cls", None),
            "name": type(gm).__name__,
            "attributes": attributes,
            "extras": extras,
            "constants": constants,
            "params": graph.params,
            "inputs": graph.inputs,
            "frontend": graph.frontend,
            "warnings": [(str(w.message), w.category, w.filename, w.lineno) for w in caught],
        }
        body = {"analysis": analysis, "buffers": buffers}
        blobs = [_dumps(head, index, graph), _dumps(body, index, graph)]
    except Exception:  # noqa: BLE001 - what cannot be kept is traced next time
        return
    path, tmp = _path(key), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as f:
            tmp = f.name
            pickle.dump(blobs, f, protocol=5)
        os.replace(tmp, path)
    except OSError:  # a cache that cannot be written is skipped
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def load_prepared(key: str | None, model: nn.Module):
    """`(graph, analysis, buffers)` kept under `key`, the graph bound to `model`'s
    tensors; None when nothing usable is kept."""
    if key is None:
        return None
    path = _path(key)
    if not path.is_file():
        return None
    from ..frontends import memo
    from ..frontends.graph import Graph

    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's pytree, unpickled
            blobs = _Loader(f, {}).load()
            head = _Loader(io.BytesIO(blobs[0]), {}).load()
        fx_graph, nodes = _rebuilt(head)
        module = memo.bound(
            fx_graph, head["name"], head["attributes"], head["extras"],
            {k: t.clone() for k, t in head["constants"].items()}, model,
        )  # fmt: skip
        graph = Graph(module, head["params"], head["inputs"], head["frontend"])
        body = _Loader(io.BytesIO(blobs[1]), {"node": nodes, "graph": graph}).load()
    except Exception:  # noqa: BLE001 - a kept file that cannot be used is no cache
        return None
    memo.replay([warnings.WarningMessage(c(m), c, f, n) for m, c, f, n in head["warnings"]])
    return graph, body["analysis"], body["buffers"]


def _kept_meta(node: fx.Node) -> dict:
    return {k: node.meta[k] for k in _META if k in node.meta}


def _dumps(obj: Any, index: dict, graph) -> bytes:
    buf = io.BytesIO()
    _Dumper(buf, index, graph).dump(obj)
    return buf.getvalue()


class _Dumper(pickle.Pickler):
    """Nodes of the graph as their indices, the graph and its module by name, fake
    tensors as their shape, stride, dtype and device, torch ops by name."""

    def __init__(self, file, index: dict, graph):
        super().__init__(file, protocol=5)
        self.index, self.graph = index, graph

    def persistent_id(self, obj: Any):
        from torch._subclasses.fake_tensor import FakeTensor

        if isinstance(obj, fx.Node):
            return ("node", self.index[obj])  # a node of another graph: KeyError, not kept
        if obj is self.graph:
            return ("graph",)
        if obj is self.graph.module:
            return ("module",)
        if isinstance(obj, FakeTensor):
            shape, stride = tuple(map(int, obj.shape)), tuple(map(int, obj.stride()))
            return ("fake", shape, stride, obj.dtype, str(obj.device), obj.requires_grad)
        if isinstance(obj, torch._ops.OperatorBase):
            return ("op", _op_name(obj))
        return None


def _op_name(op: Any) -> str:
    if isinstance(op, torch._ops.HigherOrderOperator):
        return f"higher_order.{op.name()}"
    if isinstance(op, torch._ops.OpOverload):
        return f"{op.namespace}.{op._schema.name.split('::')[1]}.{op._overloadname}"
    if isinstance(op, torch._ops.OpOverloadPacket):
        return f"{op._qualified_op_name.replace('::', '.')}"
    raise TypeError(f"an operator of kind {type(op).__name__}")


class _Loader(pickle.Unpickler):
    def __init__(self, file, known: dict):
        super().__init__(file)
        self.known = known
        self.mode = None

    def find_class(self, module: str, name: str):
        if not (module in _STANDARD or module == "torch" or module.startswith(_MODULES)):
            raise pickle.UnpicklingError(f"{module}.{name} is not among a graph's classes")
        return super().find_class(module, name)

    def persistent_load(self, pid: tuple):
        kind = pid[0]
        if kind == "node":
            nodes = self.known.get("node")
            return nodes[pid[1]] if nodes is not None else _Ref(pid[1])
        if kind in ("graph", "module"):
            graph = self.known["graph"]
            return graph if kind == "graph" else graph.module
        if kind == "fake":
            return self._fake(*pid[1:])
        if kind == "op":
            return functools.reduce(getattr, pid[1].split("."), torch.ops)
        raise pickle.UnpicklingError(f"unknown reference {kind!r}")

    def _fake(self, shape, stride, dtype, device, requires_grad):
        from torch._subclasses.fake_tensor import FakeTensorMode

        if self.mode is None:
            self.mode = FakeTensorMode(allow_non_fake_inputs=True)
        with self.mode:
            t = torch.empty_strided(shape, stride, dtype=dtype, device=device)
        return t.requires_grad_(requires_grad) if requires_grad else t


class _Ref:
    """A node's argument that is another node, by its index, until that node is made."""

    __slots__ = ("i",)

    def __init__(self, i: int):
        self.i = i


def _rebuilt(head: dict) -> tuple[fx.Graph, list[fx.Node]]:
    graph = fx.Graph(tracer_cls=head["tracer"])
    graph._codegen = head["codegen"]
    made: list[fx.Node] = []
    resolve = lambda x: made[x.i] if isinstance(x, _Ref) else x  # noqa: E731
    for name, op, target, args, kwargs, type_expr, meta in head["nodes"]:
        args = fx.node.map_aggregate(args, resolve)
        kwargs = fx.node.map_aggregate(kwargs, resolve)
        node = graph.create_node(op, target, args, kwargs, name=name, type_expr=type_expr)
        if node.name != name:
            raise ValueError(f"node {name} was made as {node.name}")
        node.meta.update(meta)
        made.append(node)
    return graph, made


def _path(key: str) -> Path:
    return cache_folder() / "prepared" / f"{key}.pkl"


def _file_stamp(file: str | None) -> tuple:
    if file is None:
        return ()
    st = os.stat(file)
    return (file, st.st_size, st.st_mtime_ns)


def _code_stamp(model: nn.Module) -> str:
    """The code a module of `model` may run, as `memo.key` reads it (a method or helper
    patched in this process is other code): the functions of every module's classes and
    of the Python modules that define them, by their bytecode and constants."""
    h = hashlib.sha256()
    seen: set[str] = set()
    classes = {type(m) for m in model.modules()}
    for cls in sorted(classes, key=lambda c: (c.__module__, c.__qualname__)):
        for klass in cls.__mro__:
            if klass in (nn.Module, object):
                continue
            h.update(f"{klass.__module__}.{klass.__qualname__}".encode())
            for k, v in sorted(vars(klass).items()):
                _add_code(h, k, v)
            name = klass.__module__
            if name not in seen and not name.startswith("torch.") and name in sys.modules:
                seen.add(name)
                for k, v in sorted(vars(sys.modules[name]).items()):
                    _add_code(h, k, v)
    return h.hexdigest()


def _add_code(h, name: str, value: Any) -> None:
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    if isinstance(value, property):
        for f in (value.fget, value.fset):
            _add_code(h, name, f)
        return
    if isinstance(value, functools.partial):
        value = value.func
    code = getattr(value, "__code__", None)
    if isinstance(value, type):
        h.update(f"{name}={value.__module__}.{value.__qualname__}".encode())
    elif code is not None:
        h.update(name.encode())
        _add_bytecode(h, code)


def _add_bytecode(h, code) -> None:
    h.update(code.co_code)
    for const in code.co_consts:
        if hasattr(const, "co_code"):  # a nested function's
            _add_bytecode(h, const)
        else:
            h.update(_stable(const).encode())


def _stable(value: Any) -> str:
    """`repr`, but of a set in an order no process's string hashing changes."""
    if isinstance(value, (frozenset, set)):
        return f"{{{', '.join(sorted(map(_stable, value)))}}}"
    if isinstance(value, tuple):
        return f"({', '.join(map(_stable, value))})"
    return repr(value)


@functools.lru_cache(maxsize=1)
def _surgeon_stamp() -> str:
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        st = f.stat()
        h.update(f"{f.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _rules_stamp() -> str:
    from ..analysis.registry import RULES

    h = hashlib.sha256()
    for key in sorted(RULES):
        rule = RULES[key]
        fn = rule.fn
        h.update(
            repr((key, getattr(fn, "__module__", None), getattr(fn, "__qualname__", None))).encode()
        )
        flags = (rule.mixes_stream, rule.lookup, rule.adds, rule.random, rule.same_values)
        h.update(repr((flags, sorted(rule.aliases.items()))).encode())
        code = getattr(fn, "__code__", None)
        if not str(getattr(fn, "__module__", "")).startswith("surgeon.") and code is not None:
            h.update(code.co_code)
            h.update(repr(code.co_consts).encode())
    return h.hexdigest()


def _version(package: str) -> str | None:
    module = sys.modules.get(package)
    return getattr(module, "__version__", None)
