"""The op-rule table, and how a node's arguments reach its rule by name.

`RULES` maps an op key to an `OpRule`: the rule function, the signature that names the
op's arguments, and what the op is (`mixes_stream`, `lookup`, `adds`, `random`,
`same_values`) for the code that reads the graph besides the rules. `register_rule`
fills it: the package `rules/` with the built-in rules (one module per family of ops,
each registering its rules on import), a user with rules for their own ops. `overlay`
puts rules in it for the length of a `with` block (`surgeon.prepare(..., rules=...)`).

Keys. An op is looked up by its name without overload: `view` for `aten.view.default`,
`Tensor.view` and `torch.Tensor.view`; `linear` for `aten.linear.default` and
`F.linear`. Ops outside the `aten` namespace keep theirs (`mylib.myop` for
`torch.ops.mylib.myop.default`), so a custom op never takes a built-in rule by accident.

Arguments. Before a rule runs, the node's `args` and `kwargs` are bound once to names
(`Args`): by the op's schema for torch ops (ATen and `torch.library` ops, in either
frontend), by the rule's Python `signature` for the functions and methods torch.fx
records. `aliases` renames what a frontend calls differently (`self` is always `input`),
so a rule reads `a.input`, `a.weight`, `a.dim` whatever the spelling of the call.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch
from torch import fx

from ..errors import UnsupportedOpError
from .context import Context

__all__ = [
    "RULES",
    "Args",
    "OpRule",
    "bind",
    "op_key",
    "overlay",
    "register_rule",
    "rule_for",
    "rule_key",
    "unregister_rule",
]

_ALIASES = {"self": "input"}  # what every ATen schema calls differently
_RESERVED = ("node", "out")  # attributes of Args that no argument may shadow


class Args:
    """The arguments of one call, by the names of its rule's signature.

    `a.input`, `a.weight`, `a.dim`, ...: the value given (a node for a tensor, a Python
    value otherwise) or the signature's default; a variadic parameter (`*size`) holds a
    tuple, whether the call spread it (`x.view(2, 8)`) or passed a list (`x.view([2, 8])`).
    `a.get(name, default)` for arguments the signature may lack; `a.path(name, i)` where
    the value (or its item `i`) is written in the node, for `ctx.literal`; `a.node` the
    node; `a.out` the atoms of its output.
    """

    __slots__ = ("node", "out", "_values", "_paths")

    def __init__(self, node: fx.Node, values: dict[str, Any], paths: dict, out: Any = None):
        self.node = node
        self.out = out
        self._values = values
        self._paths = paths  # name -> (path, spread): spread when items are separate args

    def __getattr__(self, name: str) -> Any:
        values = object.__getattribute__(self, "_values")
        if name in values:
            return values[name]
        raise AttributeError(f"{self.node.name} has no argument {name!r}; it has {sorted(values)}")

    def get(self, name: str, default: Any = None) -> Any:
        return self._values.get(name, default)

    def names(self) -> list[str]:
        return list(self._values)

    def path(self, name: str, i: int | None = None) -> tuple | None:
        """Where argument `name` (its item `i` for a list) is written: a path into
        `node.args`, `(index,)` or `(index, item)`, or into `node.kwargs`, `(key,)` or
        `(key, item)`. For an argument left to its default: the position it would take,
        or None for a keyword-only one."""
        where = self._paths.get(name)
        if where is None:
            return None
        base, spread = where
        if i is None:
            return base
        return (base[0] + i,) if spread else (*base, i)

    def __repr__(self) -> str:
        return f"Args({self.node.name}: {self._values})"


RuleFn = Callable[[Context, Args], None]


@dataclass(frozen=True)
class OpRule:
    """One entry of the table. See `register_rule` for the meaning of the fields."""

    key: str
    fn: RuleFn
    signature: Callable | None = None
    aliases: Mapping[str, str] = field(default_factory=dict)
    mixes_stream: bool = False
    lookup: tuple[str, str] | None = None
    adds: bool = False
    random: bool = False
    same_values: bool = False


RULES: dict[str, OpRule] = {}


def op_key(op: Any) -> str:
    """The table key of an op: a torch op (`torch.ops.mylib.myop`, any overload of it, or a
    `torch.library.custom_op`), a function (its `__name__`), or a string: `mylib::myop` or
    `mylib.myop` for a namespaced op, a bare name (`view`) for ATen ops, functions and
    methods."""
    if isinstance(op, str):
        return op.replace("::", ".").removeprefix("aten.")
    op = getattr(op, "_opoverload", op)  # torch.library.custom_op returns a wrapper
    if isinstance(op, torch._ops.OpOverload):
        op = op.overloadpacket
    if isinstance(op, torch._ops.OpOverloadPacket):
        namespace, name = op._qualified_op_name.split("::")
        return name if namespace == "aten" else f"{namespace}.{name}"
    return getattr(op, "__name__", str(op))


def rule_key(node: fx.Node) -> str:
    """The key a node's rule is looked up by: `view` for aten.view.default, Tensor.view, ..."""
    if node.op == "call_method":
        return node.target
    return op_key(node.target)


def rule_for(node: fx.Node) -> OpRule | None:
    """The table entry of a call node, or None (not a call, or an op without a rule)."""
    if node.op not in ("call_function", "call_method"):
        return None
    return RULES.get(rule_key(node))


def register_rule(
    *ops: Any,
    signature: Callable | None = None,
    aliases: Mapping[str, str] | None = None,
    mixes_stream: bool = False,
    lookup: tuple[str, str] | None = None,
    adds: bool = False,
    random: bool = False,
    same_values: bool = False,
    replace: bool = False,
) -> Callable[[RuleFn], RuleFn]:
    """Decorator: make `fn(ctx, a)` the rule of each op in `ops`.

    ops: torch ops (`torch.ops.mylib.myop`, a `torch.library.custom_op`), functions, or
      keys (`"mylib::myop"`, `"view"`; see `op_key`).
    signature: a Python function whose parameters name the arguments, in the order the
      functions and methods of torch.fx pass them (`def sig(input, weight, bias=None)`);
      only its signature is used. Torch ops are bound by their schema, which it may leave
      out; it then supplies the defaults and the positions of missing arguments.
    aliases: other names of an argument -> its name in `signature` (schema names,
      keywords of some spelling of the op: `{"indices": "input", "axis0": "dim0"}`).
    mixes_stream: the op combines the features of an activation with weights (`linear`,
      `conv2d`): a path through it is a block's computation f(x), not its skip x.
    lookup: (table, ids): the op reads rows of argument `table` at positions given by
      argument `ids` (`embedding`); a table read by the model's input ids is a vocabulary.
    adds: the op returns `input + other` (a residual addition may be one).
    random: the op's output is drawn at random (`rand`, `bernoulli`, `native_dropout`):
      `surgeon.prepare` refuses a forward that calls one, whose output is not one function
      of its inputs to preserve.
    same_values: the op's output holds the values of its (first) input, in a new shape or
      dtype (`view`, `clone`, `to`): integers that are positions along an axis (the
      indices of a router's `topk`) stay positions through it.
    replace: replace the rules of ops that have one; without it that is a `ValueError`.

    `fn(ctx, a)` receives the `Context` and the node's `Args`; it relates the atoms of
    `a.out` to those of its inputs (`ctx.axes(a.input)`) and returns nothing.
    """
    keys = [op_key(op) for op in ops]
    if not keys:
        raise TypeError("register_rule needs at least one op")
    aliases = dict(aliases or {})
    _check_names(signature, aliases)
    taken = [k for k in keys if k in RULES]
    if taken and not replace:
        raise ValueError(
            f"ops {taken} already have a rule ({_describe(RULES[taken[0]].fn)}); "
            "pass replace=True to replace it"
        )

    def register(fn: RuleFn) -> RuleFn:
        for key in keys:
            RULES[key] = OpRule(
                key,
                fn,
                signature,
                aliases,
                mixes_stream=mixes_stream,
                lookup=lookup,
                adds=adds,
                random=random,
                same_values=same_values,
            )
        return fn

    return register


def unregister_rule(*ops: Any) -> None:
    """Remove the rules of `ops` (a `KeyError` if one has none)."""
    for op in ops:
        del RULES[op_key(op)]


@contextmanager
def overlay(rules: Mapping[Any, OpRule | RuleFn] | None) -> Iterator[dict[str, OpRule]]:
    """Within the block, `rules` are the rules of their ops, over any rule the table holds
    for them; on leaving it, an exception included, the table is as it was before.

    rules: op -> an `OpRule` (its `key` is replaced by the op's) or a rule function
      `fn(ctx, a)` (an `OpRule` without signature or properties, enough for a torch op);
      ops as `register_rule` takes them. None: nothing changes.
    Yields the entries it put in the table, by key. Used by `surgeon.prepare(model,
    inputs, rules=...)` for rules that serve one model, without registering them.
    """
    entries: dict[str, OpRule] = {}
    for op, value in (rules or {}).items():
        key = op_key(op)
        if isinstance(value, OpRule):
            entries[key] = dataclasses.replace(value, key=key)
        elif callable(value):
            entries[key] = OpRule(key, value)
        else:
            raise TypeError(f"the rule for {key} is {value!r}: give an OpRule or a function")
        _check_names(entries[key].signature, entries[key].aliases)
    before = {key: RULES.get(key) for key in entries}
    RULES.update(entries)
    try:
        yield entries
    finally:
        for key, rule in before.items():
            if rule is None:
                RULES.pop(key, None)
            else:
                RULES[key] = rule


def _check_names(signature: Callable | None, aliases: Mapping[str, str]) -> None:
    """A `ValueError` for argument names that would shadow an attribute of `Args`."""
    if signature is None:
        return
    params = inspect.signature(signature).parameters
    clash = [p for p in (*params, *aliases.values()) if p in _RESERVED]
    if clash:
        raise ValueError(f"argument names {clash} are reserved (Args.{clash[0]})")


def _describe(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"


# -- binding --------------------------------------------------------------------------------
def bind(rule: OpRule, node: fx.Node, out: Any = None) -> Args:
    """Name the arguments of `node` for `rule` (see the module docstring)."""
    schema = _schema(node.target)
    if schema is not None:
        values, paths, given = _bind_schema(schema, node, {**_ALIASES, **rule.aliases})
        if rule.signature is not None:  # its defaults are the rule's, not the schema's
            for name, (default, path) in _defaults(rule.signature).items():
                if name not in given:
                    values[name] = default
                    paths.setdefault(name, path)
    elif rule.signature is not None:
        values, paths = _bind_python(rule, node)
    else:
        raise UnsupportedOpError(
            f"the rule of {rule.key} at node {node.name} has no signature to read a "
            f"{node.op} call: pass signature= to surgeon.register_rule"
        )
    return Args(node, values, paths, out)


def _schema(target: Any) -> Any:
    if isinstance(target, torch._ops.OpOverloadPacket):
        names = target.overloads()
        name = "default" if "default" in names else names[0] if len(names) == 1 else None
        target = getattr(target, name) if name else None
    return target._schema if isinstance(target, torch._ops.OpOverload) else None


def _bind_schema(schema: Any, node: fx.Node, aliases: Mapping[str, str]):
    """values, paths, and the names given by the call, bound by the op's schema."""
    values: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    given: set[str] = set()
    for i, arg in enumerate(schema.arguments):
        name = aliases.get(arg.name, arg.name)
        if i < len(node.args) and not arg.kwarg_only:
            values[name], paths[name] = node.args[i], ((i,), False)
            given.add(name)
        elif arg.name in node.kwargs:
            values[name], paths[name] = node.kwargs[arg.name], ((arg.name,), False)
            given.add(name)
        elif arg.has_default_value():
            values[name] = arg.default_value
            if not arg.kwarg_only:
                paths[name] = ((i,), False)
    return values, paths, given


@cache
def _parameters(signature: Callable) -> tuple[inspect.Signature, tuple[inspect.Parameter, ...]]:
    sig = inspect.signature(signature)
    return sig, tuple(sig.parameters.values())


def _defaults(signature: Callable) -> dict[str, tuple[Any, Any]]:
    """name -> (default, path it would take) for the parameters that have a default."""
    out = {}
    for i, p in enumerate(_parameters(signature)[1]):
        if p.kind is p.VAR_POSITIONAL:
            out[p.name] = ((), ((i,), True))
        elif p.default is not p.empty:
            positional = p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            out[p.name] = (p.default, ((i,), False) if positional else None)
    return out


def _bind_python(rule: OpRule, node: fx.Node) -> tuple[dict, dict]:
    """Bind a function or method call (torch.fx) to the rule's Python signature."""
    sig, params = _parameters(rule.signature)
    spelled: dict[str, str] = {}  # name -> the keyword the call used
    kwargs: dict[str, Any] = {}
    for key, value in node.kwargs.items():
        name = rule.aliases.get(key, key)
        kwargs[name], spelled[name] = value, key
    variadic = next((p.name for p in params if p.kind is p.VAR_POSITIONAL), None)
    listed = kwargs.pop(variadic) if variadic in kwargs else None  # permute(dims=(0, 2, 1))
    try:
        bound = sig.bind(*node.args, **kwargs)
    except TypeError as e:
        raise UnsupportedOpError(
            f"the arguments of {rule.key} at node {node.name} do not fit its rule's "
            f"signature {sig}: {e}"
        ) from None
    bound.apply_defaults()
    values: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for i, p in enumerate(params):
        value = bound.arguments.get(p.name)
        if p.kind is p.VAR_POSITIONAL:
            if listed is not None:
                values[p.name], paths[p.name] = tuple(listed), ((spelled[p.name],), False)
            elif len(value) == 1 and isinstance(value[0], (list, tuple)):
                values[p.name], paths[p.name] = tuple(value[0]), ((i,), False)
            else:
                values[p.name], paths[p.name] = value, ((i,), True)
        elif p.kind is p.VAR_KEYWORD:
            for key, v in value.items():
                values[key], paths[key] = v, ((spelled[key],), False)
        else:
            values[p.name] = value
            if p.name in spelled:
                paths[p.name] = ((spelled[p.name],), False)
            elif p.kind is not p.KEYWORD_ONLY:
                paths[p.name] = ((i,), False)
    return values, paths
