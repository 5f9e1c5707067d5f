"""The default frontend: torch.export (non-strict) in eval mode, then unlifted to a GraphModule."""

from __future__ import annotations

import torch
from torch import nn

from .graph import Graph, Inputs, ParamTable

__all__ = ["trace_export"]


def trace_export(model: nn.Module, inputs: Inputs) -> Graph:
    """Export `model` on `inputs` and return its graph with parameters as `get_attr` nodes.

    `ep.module()` keeps the model's calling convention (pytree in/out specs), so the graph
    is called exactly like the model. Its nodes keep `val`, `nn_module_stack` and
    `stack_trace` metadata from export.
    """
    ep = torch.export.export(model, inputs.args, dict(inputs.kwargs), strict=False)
    module = ep.module()
    params = ParamTable.from_module(model, constants=_lifted_constants(ep))
    return Graph(module, params, inputs, "export")


def _lifted_constants(ep: torch.export.ExportedProgram) -> dict[str, torch.Tensor]:
    """Tensors created inside `forward` that export lifted out as constants, by attribute name."""
    out = {}
    for spec in ep.graph_signature.input_specs:
        if spec.kind == torch.export.graph_signature.InputKind.CONSTANT_TENSOR:
            out[spec.target] = ep.constants[spec.target]
    return out
