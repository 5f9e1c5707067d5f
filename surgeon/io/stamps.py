"""What a graph traced in an earlier process depended on, told so that two processes can
compare it (`surgeon.io.prepared`'s key): code by its bytecode, the names and constants
it reads, its defaults, the values its closure holds and the function it wraps; values
by a text that no hash seed or memory address changes (sets sorted); an object surgeon
cannot describe by its class, as `surgeon.frontends.memo` does (a kernel object held as
an attribute)."""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "code_stamp",
    "describe",
    "files_stamp",
    "registries_stamp",
    "rules_stamp",
    "surgeon_stamp",
    "transformers_stamp",
]

_PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)
_DEPTH = 4  # functions reached through other functions' defaults and closures


def describe(value: Any, depth: int = 0) -> str:
    """A text of `value` that another process writes alike for the same value."""
    if isinstance(value, _PLAIN):
        return repr(value)
    if depth > 4 * _DEPTH:  # a container that holds itself
        return "..."
    d = depth + 1
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__}({', '.join(describe(x, d) for x in value)})"
    if isinstance(value, (set, frozenset)):
        return f"set({', '.join(sorted(describe(x, d) for x in value))})"
    if isinstance(value, dict):
        items = sorted(f"{describe(k, d)}: {describe(v, d)}" for k, v in value.items())
        return f"dict({', '.join(items)})"
    if isinstance(value, (staticmethod, classmethod)):
        return f"{type(value).__name__}({describe(value.__func__, d)})"
    if isinstance(value, property):
        return f"property({', '.join(describe(f, d) for f in (value.fget, value.fset))})"
    if isinstance(value, (functools.partial, functools.partialmethod)):
        parts = (value.func, value.args, value.keywords)
        return f"partial({', '.join(describe(p, d) for p in parts)})"
    if isinstance(value, types.MethodType):
        return f"method({describe(value.__func__, d)})"
    if isinstance(value, types.FunctionType):
        return _function(value, depth)
    if isinstance(value, type):
        return f"class {value.__module__}.{value.__qualname__}"
    if isinstance(value, types.ModuleType):
        return f"module {value.__name__}"
    kind = type(value)
    name = getattr(value, "__qualname__", None) or getattr(value, "__name__", None)
    return f"{kind.__module__}.{kind.__qualname__} {name or ''}".strip()


def _function(f: types.FunctionType, depth: int) -> str:
    head = f"function {f.__module__}.{f.__qualname__}"
    if depth > _DEPTH:
        return head
    d = depth + 1
    cells = []
    for cell in f.__closure__ or ():
        try:
            cells.append(describe(cell.cell_contents, d))
        except ValueError:  # an empty cell
            cells.append("<empty>")
    parts = [head, _code(f.__code__), describe(f.__defaults__, d)]
    parts += [describe(f.__kwdefaults__, d), *cells]
    wrapped = getattr(f, "__wrapped__", None)
    if wrapped is not None:
        parts.append(describe(wrapped, d))
    return " ".join(parts)


def _code(code: types.CodeType) -> str:
    h = hashlib.sha256(code.co_code)
    h.update(repr(code.co_names).encode())
    for const in code.co_consts:
        is_code = isinstance(const, types.CodeType)
        h.update((_code(const) if is_code else describe(const)).encode())
    return h.hexdigest()[:24]


def code_stamp(model: nn.Module) -> str:
    """The code a module of `model` may run, as `memo.key` reads it (a method or helper
    patched in this process is other code): every attribute of its modules' classes,
    and the functions and classes of the Python modules that define them."""
    h = hashlib.sha256()
    seen: set[str] = set()
    classes = {type(m) for m in model.modules()}
    for cls in sorted(classes, key=lambda c: (c.__module__, c.__qualname__)):
        for klass in cls.__mro__:
            if klass in (nn.Module, object):
                continue
            h.update(f"{klass.__module__}.{klass.__qualname__}".encode())
            for k, v in sorted(vars(klass).items()):
                h.update(f"{k}={describe(v)}".encode())
            name = klass.__module__
            if name not in seen and not name.startswith("torch.") and name in sys.modules:
                seen.add(name)
                for k, v in sorted(vars(sys.modules[name]).items()):
                    if isinstance(v, (types.FunctionType, type)):
                        h.update(f"{k}={describe(v)}".encode())
    return h.hexdigest()


def registries_stamp() -> str:
    """The functions transformers picks by name at run time: attention and mask
    implementations, rotary initialisations (a function registered or replaced in this
    process is other code)."""
    h = hashlib.sha256()
    for module, name in (
        ("transformers.modeling_utils", "ALL_ATTENTION_FUNCTIONS"),
        ("transformers.masking_utils", "ALL_MASK_ATTENTION_FUNCTIONS"),
        ("transformers.modeling_rope_utils", "ROPE_INIT_FUNCTIONS"),
    ):
        table = getattr(sys.modules.get(module), name, None)
        if table is None:
            continue
        mapping = dict(table) if isinstance(table, dict) else dict(table._global_mapping)
        mapping.update(getattr(table, "_local_mapping", None) or {})
        h.update(f"{name}={describe(mapping)}".encode())
    return h.hexdigest()


def rules_stamp() -> str:
    """The op-rule table: each rule's function, signature, aliases and properties."""
    from ..analysis.registry import RULES

    h = hashlib.sha256()
    for key in sorted(RULES):
        rule = RULES[key]
        flags = (rule.mixes_stream, rule.lookup, rule.adds, rule.random, rule.same_values)
        fn = rule.fn
        if getattr(fn, "__module__", "").startswith("surgeon."):  # in surgeon_stamp
            fn = f"{fn.__module__}.{fn.__qualname__}"
        parts = (key, fn, rule.signature, rule.aliases, flags)
        h.update(describe(parts).encode())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def surgeon_stamp() -> str:
    """Every source file of surgeon, by name, size and modification time."""
    return files_stamp(sorted(Path(__file__).resolve().parent.parent.rglob("*.py")))


@functools.lru_cache(maxsize=1)
def transformers_stamp() -> str:
    """transformers' shared modules (its top level and integrations: attention, masks,
    rotary tables), by name, size and time: an editable install keeps its version."""
    import transformers

    root = Path(transformers.__file__).parent
    return files_stamp(sorted([*root.glob("*.py"), *(root / "integrations").glob("*.py")]))


def files_stamp(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()
