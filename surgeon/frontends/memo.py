"""Traces kept for the life of the process: a model traced again on the same inputs gets
a copy of the first graph, bound to its own tensors, instead of another torch.export.

Tracing is most of the fixed cost of a small model's surgery (an export of a tiny Llama
takes about a second), and one process often traces the same model again: a prepared
parent and a re-cut, the CLI's `apply` then `export`, the shallow twin of each parent
of one config, a test suite. A graph depends on the code that ran and on what it read
besides the tensors' values, so the key holds all of that:

- the model's class, and every module's class, each with the functions of its classes
  and of the modules that define them (a patched method or helper is another key);
- the config (its JSON, its private settings such as the attention implementation), but
  for the folder it was read from, as the model's `name_or_path`, unless the model's
  code names them (`reads_path`): a copy of a folder traces as the folder;
- every module's path, train flag and plain attributes (numbers, strings, tuples of
  them, functions; a tensor attribute by its bytes), and no hooks on any module;
- every parameter's and buffer's name, shape, dtype, device and ties;
- the inputs' structure, shapes, dtypes and bytes (a forward that branches on its inputs'
  values is traced for the branch they take); grad and inference mode; the frontend.

A model the key cannot describe (hooks, an input of an unknown type, a config that does
not serialise) is traced every time. The copy shares nothing the passes change: a fresh
fx graph (node metadata copied, the fake values in it shared, as node copies share them),
the model's own tensors, copies of the constants the trace made. Warnings the trace gave
are given again. Failed traces are not kept."""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import sys
import types
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.utils import _pytree

from .graph import Graph, Inputs, ParamTable, assign, tensor_of

__all__ = [
    "bound", "clear", "key", "parts", "reads_path", "recall", "remember", "replay", "without_path"
]  # fmt: skip

NODES = 200_000  # nodes kept in all (a tiny model's graph has a few hundred, an 8 B
# model's a few thousand), the least recently used graphs dropped first
_KEPT: OrderedDict[tuple, _Entry] = OrderedDict()
_INTERNAL = {"_parameters", "_buffers", "_modules", "training"}
# where a model's weights were read from (a folder's path): no part of what it computes
_WHERE = {"name_or_path", "_name_or_path"}


@dataclass
class _Entry:
    graph: fx.Graph  # the traced graph, never handed out itself
    name: str  # its module's class name
    attributes: dict[str, Any]  # the module's own attributes (pytree specs, meta, ...)
    extras: dict[str, Any]  # what the graph reads that the model does not hold
    constants: dict[str, torch.Tensor]
    frontend: str
    caught: list[warnings.WarningMessage]


def clear() -> None:
    _KEPT.clear()


def key(model: nn.Module, inputs: Inputs, frontend: str) -> tuple | None:
    """What decides `model`'s trace on `inputs`, or None where it cannot be told."""
    try:
        modules = list(model.named_modules(remove_duplicate=False))
        if any(_hooked(m) for _, m in modules):
            return None
        classes = {type(m) for _, m in modules}
        where = reads_path(model)
        return (
            frontend,
            type(model),
            _config(getattr(model, "config", None), where=where),
            tuple((name, type(m), m.training, _attributes(m, where)) for name, m in modules),
            tuple(_code(c) for c in sorted(classes, key=lambda c: (c.__module__, c.__qualname__))),
            _tensors(model),
            _inputs(inputs),
            torch.is_grad_enabled(),
            torch.is_inference_mode_enabled(),
        )
    except _Untold:
        return None


def recall(key: tuple | None, model: nn.Module, inputs: Inputs) -> Graph | None:
    """A copy of the graph kept under `key`, bound to `model`'s tensors; None if none."""
    entry = _KEPT.get(key) if key is not None else None
    if entry is None:
        return None
    _KEPT.move_to_end(key)
    replay(entry.caught)
    constants = {name: t.clone() for name, t in entry.constants.items()}
    params = ParamTable.from_module(model, constants)
    return Graph(_module(entry, model, constants), params, inputs, entry.frontend)


def remember(key: tuple | None, graph: Graph, model: nn.Module, caught: list) -> None:
    """Keep `graph` (just traced from `model`, under `key`) for later `recall`s."""
    if key is None:
        return
    gm = graph.module
    attributes, extras, constants = parts(graph, model)
    entry = _Entry(
        _copied(gm.graph), type(gm).__name__, attributes, extras, constants, graph.frontend,
        list(caught),
    )  # fmt: skip
    _KEPT[key] = entry
    while sum(len(e.graph.nodes) for e in _KEPT.values()) > NODES:
        _KEPT.popitem(last=False)


def parts(graph: Graph, model: nn.Module) -> tuple[dict, dict, dict]:
    """What a graph module of `model`'s trace holds besides its graph and `model`'s
    tensors: its own attributes (pytree specs, meta, ...), what it reads that `model`
    does not hold, and copies of the constants the trace made."""
    gm = graph.module
    constants = {
        e.name: tensor_of(gm, e.name).clone() for e in graph.params if e.kind == "constant"
    }
    extras = {}
    for node in gm.graph.nodes:
        if node.op in ("get_attr", "call_module") and node.target not in constants:
            if not _held(model, node.target):
                extras[node.target] = _get(gm, node.target)
    attributes = {k: v for k, v in vars(gm).items() if not k.startswith("_") and k not in _INTERNAL}
    attributes.update({k: getattr(gm, k) for k in ("_in_spec", "_out_spec") if k in vars(gm)})
    return attributes, extras, constants


def replay(caught: list[warnings.WarningMessage]) -> None:
    """Give the warnings `caught` (recorded with every filter off) as `warnings.warn` gave
    them: through the filters, once per place where they say so."""
    for w in caught:
        module = _module_name(w.filename)
        globals_ = vars(sys.modules[module]) if module in sys.modules else {}
        warnings.warn_explicit(
            w.message, w.category, w.filename, w.lineno, module=module,
            registry=globals_.setdefault("__warningregistry__", {}) if globals_ else None,
        )  # fmt: skip


@functools.lru_cache(maxsize=256)
def _module_name(filename: str) -> str:
    for name, module in list(sys.modules.items()):
        if getattr(module, "__file__", None) == filename:
            return name
    return filename.removesuffix(".py")


class _Untold(Exception):
    """Something the key cannot describe."""


def _copied(source: fx.Graph) -> fx.Graph:
    """A new graph of copies of `source`'s nodes (their metadata dicts copied)."""
    graph = fx.Graph()
    graph._codegen = source._codegen
    out = graph.graph_copy(source, {})
    last = next(n for n in reversed(source.nodes) if n.op == "output")
    graph.output(out, type_expr=last.type).meta = dict(last.meta)
    return graph


def _module(entry: _Entry, model: nn.Module, constants: dict) -> fx.GraphModule:
    return bound(_copied(entry.graph), entry.name, entry.attributes, entry.extras, constants, model)


def bound(
    graph: fx.Graph, name: str, attributes: dict, extras: dict, constants: dict, model: nn.Module
) -> fx.GraphModule:
    """A graph module of `graph` (taken as it is) reading `model`'s tensors, `constants`
    and `extras` by its nodes' targets, with `attributes` (`parts`) set on it."""
    root = nn.Module()
    for node in graph.nodes:
        if node.op not in ("get_attr", "call_module") or _held(root, node.target):
            continue
        if node.target in constants:
            assign(root, node.target, constants[node.target], persistent=None)
        elif node.target in extras:
            assign(root, node.target, extras[node.target], persistent=None)
        else:
            assign(root, node.target, _get(model, node.target))
    module = fx.GraphModule(root, graph, name)
    for k, v in attributes.items():
        if isinstance(v, types.MethodType):  # ep.module()'s train and eval, bound anew
            v = types.MethodType(v.__func__, module)
        elif isinstance(v, dict):
            v = dict(v)
        setattr(module, k, v)
    return module


def _held(module: nn.Module, name: str) -> bool:
    try:
        _get(module, name)
        return True
    except AttributeError:
        return False


def _get(module: nn.Module, name: str) -> Any:
    for part in name.split("."):
        module = getattr(module, part)
    return module


def _hooked(m: nn.Module) -> bool:
    hooks = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return any(getattr(m, k, None) for k in hooks) or any(
        getattr(torch.nn.modules.module, f"_global{k}", None) for k in hooks
    )


def _plain(v: Any, depth: int = 0) -> Any:
    """A hashable stand-in for an attribute's value that tells values apart."""
    if v is None or isinstance(v, (bool, int, float, str, torch.dtype, torch.device)):
        return v
    if isinstance(v, (tuple, list)) and depth < 3:
        return (type(v), tuple(_plain(x, depth + 1) for x in v))
    if isinstance(v, dict) and depth < 3:
        return (dict, tuple((repr(k), _plain(x, depth + 1)) for k, x in v.items()))
    if isinstance(v, torch.Tensor):
        return _tensor_value(v)
    if isinstance(v, (types.FunctionType, types.BuiltinFunctionType, type, types.ModuleType)):
        return v
    if isinstance(v, (types.MethodType, staticmethod, classmethod, property)):
        return v
    return type(v)  # a module held outside `_modules` (a kernel): by its class


def _attributes(m: nn.Module, where: bool = False) -> tuple:
    return tuple(
        (k, _plain(v))
        for k, v in vars(m).items()
        if k not in _INTERNAL and (where or k not in _WHERE) and not _hook_slot(k)
    )


def _hook_slot(k: str) -> bool:
    return k.endswith("_hooks") or k.endswith("_hook") or k == "_non_persistent_buffers_set"


def _config(config: Any, depth: int = 0, where: bool = False) -> Any:
    """The config's JSON and private settings; where it was read from only if `where`."""
    if config is None or depth > 3:
        return None
    if not hasattr(config, "to_json_string"):  # a plain config object (nanoGPT's)
        return _plain(vars(config) if hasattr(config, "__dict__") else config)
    try:
        text = config.to_json_string(use_diff=False)
        text = text if where else json.dumps(without_path(json.loads(text)))
    except Exception as e:  # noqa: BLE001 - a config that does not serialise
        raise _Untold from e
    private = tuple(
        (k, _plain(v))
        for k, v in sorted(vars(config).items())
        if k.startswith("_") and (where or k not in _WHERE) and not hasattr(v, "to_json_string")
    )
    nested = tuple(
        (k, _config(v, depth + 1, where))
        for k, v in sorted(vars(config).items())
        if hasattr(v, "to_json_string")
    )
    return text, private, nested


def reads_path(model: nn.Module) -> bool:
    """Whether code `model`'s modules may run names where it was read from (a config's
    `_name_or_path`, a model's `name_or_path`; remote code may branch on it): the
    functions of its modules' classes and of the Python modules that define them, but
    torch's and transformers' shared modules (loading and generation read it to find
    files; no forward there does)."""
    seen: set[str] = set()
    for cls in {type(m) for m in model.modules()}:
        for klass in cls.__mro__:
            name = klass.__module__
            if _shared(name):
                continue
            found = list(vars(klass).values())
            if name not in seen and name in sys.modules:
                seen.add(name)
                found += [v for v in vars(sys.modules[name]).values() if _defined_in(v, name)]
            if any(_names_path(code) for v in found for code in _codes(v)):
                return True
    return False


def _shared(module: str) -> bool:
    return module in ("builtins", "abc", "typing") or (
        module.split(".")[0] in ("torch", "transformers")
        and not module.startswith("transformers.models.")
    )


def _defined_in(value: Any, module: str) -> bool:
    return isinstance(value, (types.FunctionType, type)) and value.__module__ == module


def _codes(value: Any) -> list[types.CodeType]:
    """The code objects of a function, method, property or class (its own attributes)."""
    if isinstance(value, type):
        return [c for v in vars(value).values() if not isinstance(v, type) for c in _codes(v)]
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    if isinstance(value, property):
        return [c for f in (value.fget, value.fset, value.fdel) if f for c in _codes(f)]
    value = inspect.unwrap(value) if callable(value) else value
    code = getattr(value, "__code__", None)
    return [code] if isinstance(code, types.CodeType) else []


def _names_path(code: types.CodeType) -> bool:
    if _WHERE & set(code.co_names) or _WHERE & {c for c in code.co_consts if isinstance(c, str)}:
        return True
    return any(_names_path(c) for c in code.co_consts if isinstance(c, types.CodeType))


def without_path(data: Any) -> Any:
    """A config's JSON data without the folder it was read from, at any depth."""
    if isinstance(data, dict):
        return {k: without_path(v) for k, v in data.items() if k not in _WHERE}
    if isinstance(data, list):
        return [without_path(v) for v in data]
    return data


def _code(cls: type) -> tuple:
    """The functions that a module of class `cls` may run: its classes' and those of the
    modules that define them."""
    out = []
    for klass in cls.__mro__:
        if klass in (nn.Module, object):
            continue
        out.append(
            tuple(
                (k, _plain(v))
                for k, v in vars(klass).items()
                if callable(v) or isinstance(v, (staticmethod, classmethod, property))
            )
        )
        module = sys.modules.get(klass.__module__)
        if module is not None and not klass.__module__.startswith("torch."):
            out.append(
                tuple(
                    (k, v)
                    for k, v in vars(module).items()
                    if isinstance(v, (types.FunctionType, type))
                )
            )
    return cls, tuple(out)


def _tensors(model: nn.Module) -> tuple:
    first: dict[int, str] = {}
    out = []
    for kind, named in (
        ("parameter", model.named_parameters(remove_duplicate=False)),
        ("buffer", model.named_buffers(remove_duplicate=False)),
    ):
        for name, t in named:
            tie = first.setdefault(id(t), name)
            out.append((kind, name, tuple(t.shape), t.dtype, t.device.type, t.requires_grad, tie))
    return tuple(out)


def _inputs(inputs: Inputs) -> tuple:
    leaves, spec = _pytree.tree_flatten((tuple(inputs.args), dict(inputs.kwargs)))
    out = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            out.append(_tensor_value(leaf))
        elif leaf is None or isinstance(leaf, (bool, int, float, str)):
            out.append(leaf)
        else:
            raise _Untold(type(leaf).__name__)
    return str(spec), tuple(out)


def _tensor_value(t: torch.Tensor) -> tuple:
    """A tensor's shape, dtype and device, and its bytes where it has them."""
    head = (tuple(t.shape), t.dtype, t.device.type, t.requires_grad)
    if t.device.type == "meta":
        return head
    if t.numel() > 1 << 20:
        raise _Untold("a large tensor among the attributes or inputs")
    data = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
    return (*head, hashlib.sha1(data.numpy().tobytes()).hexdigest())
