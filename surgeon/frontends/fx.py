"""The torch.fx frontend: symbolic tracing through every submodule, for plain nn.Modules."""

from __future__ import annotations

from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from .graph import Graph, Inputs, ParamTable, bind_placeholders

__all__ = ["trace_fx"]


class _ThroughTracer(fx.Tracer):
    """Traces into `nn.Linear`, `nn.LayerNorm`, ...: parameters become `get_attr` nodes and
    layers become calls of `torch.nn.functional`, so the passes see one kind of node for
    every parameterised op instead of opaque `call_module`s."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return False


def trace_fx(model: nn.Module, inputs: Inputs) -> Graph:
    """Symbolically trace `model`, then propagate fake tensors so every node has `meta["val"]`."""
    tracer = _ThroughTracer()
    graph = tracer.trace(model)
    module = fx.GraphModule(tracer.root, graph, type(model).__name__)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    inputs.call(_propagate(module, mode))
    constants = {
        n.target: getattr(module, n.target)
        for n in graph.nodes
        if n.op == "get_attr" and n.target.startswith("_tensor_constant")
    }
    return Graph(module, ParamTable.from_module(model, constants), inputs, "fx")


def _propagate(module: fx.GraphModule, mode: FakeTensorMode):
    """A function called like the model that fills `meta["val"]` of every node."""

    def run(*args, **kwargs):
        values = bind_placeholders(module, Inputs(args, kwargs))
        return FakeTensorProp(module, mode).propagate(*values)

    return run
