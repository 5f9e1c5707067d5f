"""The default frontend: torch.export (non-strict) in eval mode, then unlifted to a GraphModule."""

from __future__ import annotations

import operator
import re
import warnings

import torch
from torch import fx, nn

from .graph import Graph, Inputs, ParamTable

__all__ = ["trace_export"]


def trace_export(model: nn.Module, inputs: Inputs) -> Graph:
    """Export `model` on `inputs` and return its graph with parameters as `get_attr` nodes.

    `ep.module()` keeps the model's calling convention (pytree in/out specs), so the graph
    is called exactly like the model. Its nodes keep `val`, `nn_module_stack` and
    `stack_trace` metadata from export.
    """
    try:
        ep = torch.export.export(model, inputs.args, dict(inputs.kwargs), strict=False)
    except Exception as e:
        if "data-dependent expression" not in str(e) or _on_meta(model):
            raise
        ep = _specialised(model, inputs, e)
    module = ep.module()
    _inline_grad_regions(module)
    params = ParamTable.from_module(model, constants=_lifted_constants(ep))
    return Graph(module, params, inputs, "export")


def _specialised(model: nn.Module, inputs: Inputs, error: Exception):
    """The export of a forward that branches on its input values (Longformer's `if
    is_global_attn:`, LED's, FSMT's): `draft_export` takes the branch the example takes
    and asserts it at run time, so an input that would take another fails the graph
    loudly (calibration on such data is refused, never measured on the wrong branch)."""
    where = re.search(r"Caused by: \((.*?)\)", str(error))
    warnings.warn(
        f"{type(model).__name__} branches on its input values"
        f"{f' ({where.group(1)})' if where else ''}: its graph is traced for inputs that "
        "take the example's branch, and fails on others",
        stacklevel=4,
    )
    return torch.export.draft_export(model, inputs.args, dict(inputs.kwargs), strict=False)


def _on_meta(model: nn.Module) -> bool:
    return any(t.device.type == "meta" for t in model.parameters())


def _lifted_constants(ep: torch.export.ExportedProgram) -> dict[str, torch.Tensor]:
    """Tensors created inside `forward` that export lifted out as constants, by attribute name."""
    out = {}
    for spec in ep.graph_signature.input_specs:
        if spec.kind == torch.export.graph_signature.InputKind.CONSTANT_TENSOR:
            out[spec.target] = ep.constants[spec.target]
    return out


def _inline_grad_regions(gm: fx.GraphModule) -> None:
    """Inline the bodies of `wrap_with_set_grad_enabled` (a `torch.no_grad()` region in
    the forward, kept by export as a higher-order op), so the analysis sees their ops.
    The surgery reads them as plain ops; a graph child trains through them (a Hugging Face
    child runs its own class, regions and all)."""
    hop = getattr(torch.ops.higher_order, "wrap_with_set_grad_enabled", None)
    while hop is not None:
        node = next((n for n in gm.graph.nodes if n.target is hop), None)
        if node is None:
            break
        _, sub, *operands = node.args
        body = getattr(gm, sub.target)
        env: dict[fx.Node, fx.Node] = {}
        placeholders = [n for n in body.graph.nodes if n.op == "placeholder"]
        env.update(zip(placeholders, operands, strict=True))
        with gm.graph.inserting_before(node):
            for n in body.graph.nodes:
                if n.op == "output":
                    results = [env.get(o, o) for o in n.args[0]]
                elif n.op != "placeholder":
                    env[n] = gm.graph.node_copy(n, env.__getitem__)
                    if n.op == "get_attr":  # a nested region's body or a constant
                        env[n].target = _free_name(gm, n.target)
                        setattr(gm, env[n].target, getattr(body, n.target))
        for user in list(node.users):
            if user.target is not operator.getitem:
                raise AssertionError(f"{node.name} is used whole by {user.name}")
            user.replace_all_uses_with(results[user.args[1]])
            gm.graph.erase_node(user)
        gm.graph.erase_node(node)
        if not sub.users:
            gm.graph.erase_node(sub)
    gm.graph.lint()
    gm.recompile()


def _free_name(gm: fx.GraphModule, name: str) -> str:
    base, i = name.replace(".", "_"), 0
    while hasattr(gm, f"{base}_{i}"):
        i += 1
    return f"{base}_{i}"
