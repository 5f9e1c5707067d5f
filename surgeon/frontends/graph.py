"""The IR the passes work on: a torch.fx GraphModule plus a table of its named tensors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from ..errors import TraceError

__all__ = [
    "Graph",
    "Inputs",
    "ParamTable",
    "TensorEntry",
    "as_inputs",
    "bind_placeholders",
    "built_on_meta",
    "output_tensors",
    "tensor_of",
]


def built_on_meta(make) -> nn.Module:
    """`make()` under the meta device, with every tensor its constructor made on another
    device anyway moved there too: a legacy constructor (`nn.Parameter(torch.Tensor(n))`,
    ImageGPT's layer norm weight) ignores the default device, and a trace then mixes a
    CPU weight with meta activations."""
    with torch.device("meta"):
        model = make()
    moved: dict[int, torch.Tensor] = {}  # a tensor held under several names stays one
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, t in table.items():
                if t is None or t.device.type == "meta":
                    continue
                if id(t) not in moved:
                    meta = t.detach().to("meta")
                    if isinstance(t, nn.Parameter):
                        meta = nn.Parameter(meta, requires_grad=t.requires_grad)
                    moved[id(t)] = meta
                table[name] = moved[id(t)]
    return model


@dataclass(frozen=True)
class Inputs:
    """Example inputs of a model, as the positional and keyword arguments of one call."""

    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def to(self, device: str | torch.device) -> Inputs:
        """The same inputs with every tensor moved to `device` (e.g. "meta")."""
        move = lambda x: x.to(device) if isinstance(x, torch.Tensor) else x  # noqa: E731
        return Inputs(
            tuple(move(a) for a in self.args), {k: move(v) for k, v in self.kwargs.items()}
        )

    def call(self, fn):
        """`fn` on these inputs, drawing the same random numbers on every call: a
        forward that draws some where no cut size reaches them (a masked autoencoder's
        patch noise) gives the parent and each child one output to compare."""
        cuda = {
            t.device.index or 0
            for t in (*self.args, *self.kwargs.values())
            if isinstance(t, torch.Tensor) and t.device.type == "cuda"
        }
        with torch.random.fork_rng(devices=sorted(cuda)):
            torch.manual_seed(0)
            return fn(*self.args, **self.kwargs)


def as_inputs(example_inputs: Any) -> Inputs:
    """Accept the forms users write: a tensor, a tuple/list of args, a dict of kwargs, Inputs."""
    if isinstance(example_inputs, Inputs):
        return example_inputs
    if isinstance(example_inputs, torch.Tensor):
        return Inputs((example_inputs,))
    if isinstance(example_inputs, Mapping):
        return Inputs((), dict(example_inputs))
    if isinstance(example_inputs, (tuple, list)):
        return Inputs(tuple(example_inputs))
    raise TraceError(
        "example_inputs must be a tensor, a tuple of positional arguments or a dict of "
        f"keyword arguments, not {type(example_inputs).__name__}"
    )


def bind_placeholders(module: fx.GraphModule, inputs: Inputs) -> list[Any]:
    """Values for a plain fx graph's placeholders from a call's args and kwargs, bound by
    name; a placeholder not given takes its default (None when it has none)."""
    placeholders = [n for n in module.graph.nodes if n.op == "placeholder"]
    values = list(inputs.args)
    for n in placeholders[len(values) :]:
        default = n.args[0] if n.args else None
        values.append(inputs.kwargs.get(n.target, default))
    return values


def output_tensors(output: Any) -> list[torch.Tensor]:
    """The tensors of a model output (tensor, tuple, dict, HF ModelOutput), in order."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, Mapping):  # ModelOutput is an OrderedDict of its non-None fields
        return [t for v in output.values() for t in output_tensors(v)]
    if isinstance(output, (tuple, list)):
        return [t for v in output for t in output_tensors(v)]
    return []


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the model: its canonical name, the other names it has (ties), its kind."""

    name: str
    kind: str  # "parameter" | "buffer" | "constant"
    shape: tuple[int, ...]
    dtype: torch.dtype
    aliases: tuple[str, ...] = ()
    persistent: bool = True  # False for non-persistent buffers and traced-in constants

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class ParamTable:
    """Every named tensor of a traced model, once per tensor, with tied names grouped.

    Ties are found by identity (the same `Parameter` object under several names), so they
    are found on the meta device too, where no data can be compared.
    """

    def __init__(self, entries: list[TensorEntry]):
        self.entries: dict[str, TensorEntry] = {e.name: e for e in entries}
        self._canonical = {n: e.name for e in entries for n in e.names}

    @classmethod
    def from_module(
        cls, model: nn.Module, constants: Mapping[str, torch.Tensor] | None = None
    ) -> ParamTable:
        """Group `model`'s parameters and buffers by tensor identity; add traced-in constants."""
        non_persistent = {
            f"{prefix}{'.' if prefix else ''}{b}"
            for prefix, mod in model.named_modules(remove_duplicate=False)
            for b in getattr(mod, "_non_persistent_buffers_set", ())
        }
        by_id: dict[int, list[str]] = {}
        tensors: dict[int, tuple[str, torch.Tensor]] = {}
        for kind, named in (
            ("parameter", model.named_parameters(remove_duplicate=False)),
            ("buffer", model.named_buffers(remove_duplicate=False)),
        ):
            for name, t in named:
                by_id.setdefault(id(t), []).append(name)
                tensors.setdefault(id(t), (kind, t))
        entries = []
        for key, names in by_id.items():
            kind, t = tensors[key]
            entries.append(
                TensorEntry(
                    names[0],
                    kind,
                    tuple(t.shape),
                    t.dtype,
                    tuple(names[1:]),
                    persistent=not (kind == "buffer" and names[0] in non_persistent),
                )
            )
        known = {n for names in by_id.values() for n in names}
        for name, t in (constants or {}).items():
            if name not in known:
                entries.append(TensorEntry(name, "constant", tuple(t.shape), t.dtype, (), False))
        return cls(entries)

    def canonical(self, name: str) -> str:
        """The canonical name of the tensor called `name` (itself if it has no other name)."""
        try:
            return self._canonical[name]
        except KeyError:
            raise KeyError(f"no tensor named {name!r} in the parameter table") from None

    def __getitem__(self, name: str) -> TensorEntry:
        return self.entries[self.canonical(name)]

    def __contains__(self, name: object) -> bool:
        return name in self._canonical

    def __iter__(self):
        return iter(self.entries.values())

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def tied(self) -> list[tuple[str, ...]]:
        """Groups of names that are one tensor (e.g. input embedding and output head)."""
        return [e.names for e in self.entries.values() if e.aliases]

    def num_parameters(self) -> int:
        """Parameter count, each tied tensor counted once (as `model.parameters()` does)."""
        return sum(e.numel for e in self.entries.values() if e.kind == "parameter")


@dataclass
class Graph:
    """A traced model: the fx GraphModule the passes rewrite, and the names of its tensors.

    `module` is callable with the model's own arguments and returns what the model returns.
    Each `get_attr` node's target is a name in `params` (`params[node.target]`); every node
    carries `meta["val"]` (a fake or meta tensor with its shape and dtype) where it produces
    tensors, and `meta["nn_module_stack"]` where it came from a submodule.
    """

    module: fx.GraphModule
    params: ParamTable
    inputs: Inputs
    frontend: str  # "export" | "fx"

    @property
    def graph(self) -> fx.Graph:
        return self.module.graph

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def tensor_nodes(self) -> list[fx.Node]:
        """The get_attr nodes: where the graph reads a parameter, buffer or constant."""
        return [n for n in self.graph.nodes if n.op == "get_attr"]


def assign(module: nn.Module, name: str, value: Any, persistent: bool | None = True) -> None:
    """Hold `value` (a tensor or a module) under the dotted `name`, submodules made as
    needed: a `Parameter` as a parameter, another tensor as a buffer (`persistent`), or
    with `persistent=None` as a plain attribute (a constant the trace made)."""
    *path, attr = name.split(".")
    for part in path:  # the dicts themselves: nn.Module's checks raise and catch per name
        if part not in module._modules:
            module._modules[part] = nn.Module()
        module = module._modules[part]
    for held in (module._parameters, module._buffers, module._modules, vars(module)):
        held.pop(attr, None)
    module._non_persistent_buffers_set.discard(attr)
    if isinstance(value, nn.Module):
        module._modules[attr] = value
    elif isinstance(value, nn.Parameter):
        module._parameters[attr] = value
    elif persistent is None:
        vars(module)[attr] = value
    else:
        module._buffers[attr] = value
        if not persistent:
            module._non_persistent_buffers_set.add(attr)


def tensor_of(module: nn.Module, name: str) -> torch.Tensor:
    """The tensor a module holds under a dotted name (parameter, buffer or plain attribute)."""
    owner, _, attr = name.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, attr)


def op_name(node: fx.Node) -> str:
    """A readable, stable name of the op a node calls (`aten.linear.default`, `view`, ...)."""
    t = node.target
    if node.op == "call_method":
        return f"Tensor.{t}"
    if isinstance(t, torch._ops.OpOverload):
        return f"{t._schema.name.replace('::', '.')}.{t._overloadname}"
    module = getattr(t, "__module__", None) or ""
    name = getattr(t, "__name__", str(t))
    if module in ("_operator", "operator"):
        return f"operator.{name}"
    return f"{module}.{name}" if module else name
