"""The default frontend: torch.export (non-strict) in eval mode, then unlifted to a GraphModule."""

from __future__ import annotations

import contextlib
import math
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
    with _lazy_graph_modules():
        try:
            ep = torch.export.export(model, inputs.args, dict(inputs.kwargs), strict=False)
        except Exception as e:
            if "data-dependent expression" not in str(e) or _on_meta(model):
                raise
            ep = _specialised(model, inputs, e)
        module = ep.module(check_guards=False)  # its `_guards_fn` would not pickle
        _inline_grad_regions(module)
        _out_of_place(module)
        _windows_not_strides(module)
    params = ParamTable.from_module(model, constants=_lifted_constants(ep))
    return Graph(module, params, inputs, "export")


def _lazy_graph_modules():
    """Within: the graph modules torch.export makes on its way generate their code when
    first run, not at each of their rewrites (torch's `_LazyGraphModule`, which
    `torch.compile` uses): a quarter of a small model's export is otherwise spent writing
    and compiling code that is never run. The program it returns is the same."""
    try:
        from torch.fx._lazy_graph_module import _use_lazy_graph_module
    except ImportError:  # another torch: exported as it does by default
        return contextlib.nullcontext()
    return _use_lazy_graph_module(True)


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
        stacklevel=5,
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


def _out_of_place(gm: fx.GraphModule) -> None:
    """In-place ops on values the forward computes (`hidden_states *= self.layer_scalar`
    at the end of a layer) become their out-of-place form, later reads of the value
    reading the result instead. Surgery rewires values (a dropped layer's output becomes
    its input): an in-place op would then write into another layer's value. Left as they
    are: writes into inputs, weights and buffers, and into views or viewed values."""
    graph = gm.graph
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        functional = _functional(node)
        base = node.args[0] if functional is not None else None
        if not isinstance(base, fx.Node) or base.op != "call_function" or _aliases(base):
            continue
        if any(_aliases(u) for u in base.users):
            continue
        with graph.inserting_after(node):
            new = graph.call_function(functional, node.args, node.kwargs)
        new.meta = dict(node.meta)
        for user in [u for u in base.users if u not in (node, new) and order[u] > order[node]]:
            user.replace_input_with(base, new)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    graph.lint()
    gm.recompile()


def _windows_not_strides(gm: fx.GraphModule) -> None:
    """`as_strided` that reads x as it is, or reads overlapping windows along some of its
    axes (Longformer's chunks: `(B*H, n, 2w, D)` read as `(B*H, 2n-1, 2w, D)` with half
    the stride), becomes x, or `flatten`, `unfold`, `movedim`: the same values, and no
    strides written in the graph, which cutting heads or head_dim would change."""
    graph = gm.graph
    for node in list(graph.nodes):
        if node.target is not torch.ops.aten.as_strided.default:
            continue
        plan = _window_plan(node)
        if plan is None:
            continue
        x = node.args[0]
        with graph.inserting_before(node):
            ones = [i for i, n in enumerate(x.meta["val"].shape) if n == 1]
            if ones and plan != "same":
                x = graph.call_function(torch.ops.aten.squeeze.dims, (x, ones))
            if plan != "same":
                first, last, count, window, step = plan
                if last > first:
                    x = graph.call_function(torch.ops.aten.flatten.using_ints, (x, first, last))
                x = graph.call_function(torch.ops.aten.unfold.default, (x, first, window, step))
                if count is not None:
                    x = graph.call_function(torch.ops.aten.slice.Tensor, (x, first, 0, count))
                x = graph.call_function(torch.ops.aten.movedim.int, (x, -1, first + 1))
            x = graph.call_function(torch.ops.aten.view.default, (x, list(node.args[1])))
        x.meta = dict(node.meta)
        node.replace_all_uses_with(x)
        graph.erase_node(node)
    graph.lint()
    gm.recompile()
    _fill_meta(gm)


def _window_plan(node: fx.Node):
    """For `as_strided(x, size, stride)` at x's own offset: "same" when it reads x as it
    is; (first, last, count to keep or None, window, step) when it keeps x's leading and
    trailing axes and reads the axes between (contiguous among themselves, stride s at
    the last) as windows: two axes, a count with stride step*s and a window with stride s.
    None for any other layout. Axes of size 1 are left out (the axis numbers are those
    of x without them)."""
    x = node.args[0]
    val = x.meta.get("val") if isinstance(x, fx.Node) else None
    if not isinstance(val, torch.Tensor) or len(node.args) < 3:
        return None
    size, stride = list(node.args[1]), list(node.args[2])
    offset = node.args[3] if len(node.args) > 3 else node.kwargs.get("storage_offset")
    if not all(type(v) is int for v in (*size, *stride, *val.shape, *val.stride())):
        return None
    if offset is not None and offset != val.storage_offset():
        return None
    keep = [i for i, n in enumerate(val.shape) if n != 1]
    shape, strides = [val.shape[i] for i in keep], [val.stride()[i] for i in keep]
    out = [(n, st) for n, st in zip(size, stride, strict=True) if n != 1]
    axes = list(zip(shape, strides, strict=True))
    if out == axes:
        return "same"
    p = 0
    while p < min(len(axes), len(out)) and axes[p] == out[p]:
        p += 1
    q = 0  # trailing axes kept, leaving two output axes and one input axis between
    while q < min(len(axes) - p - 1, len(out) - p - 2) and axes[-1 - q] == out[-1 - q]:
        q += 1
    last = len(axes) - q - 1
    if len(out) - q - p != 2 or last < p:
        return None
    if any(strides[k] != strides[k + 1] * shape[k + 1] for k in range(p, last)):
        return None
    s, length = strides[last], math.prod(shape[p : last + 1])
    (count, big), (window, small) = out[p], out[p + 1]
    if small != s or big % s or window + (count - 1) * (big // s) > length:
        return None
    step = big // s
    full = (length - window) // step + 1
    return p, last, (count if count < full else None), window, step


def _fill_meta(gm: fx.GraphModule) -> None:
    """`val` for nodes a rewrite added: their op run on their inputs' fake tensors."""
    for n in gm.graph.nodes:
        if n.op == "call_function" and "val" not in n.meta:
            args = fx.node.map_arg(n.args, lambda a: a.meta["val"])
            kwargs = fx.node.map_arg(n.kwargs, lambda a: a.meta["val"])
            n.meta["val"] = n.target(*args, **kwargs)


def _functional(node: fx.Node):
    """The out-of-place overload of an in-place ATen op (`mul_.Tensor` -> `mul.Tensor`)."""
    op = node.target
    if node.op != "call_function" or not isinstance(op, torch._ops.OpOverload):
        return None
    first = op._schema.arguments[0] if op._schema.arguments else None
    if first is None or first.alias_info is None or not first.alias_info.is_write:
        return None
    name = op._schema.name.split("::")[-1]
    if not name.endswith("_") or name.startswith("_"):
        return None
    packet = getattr(torch.ops.aten, name[:-1], None)
    return getattr(packet, op._overloadname, None) if packet is not None else None


def _aliases(node: fx.Node) -> bool:
    """Whether a node's value is a view of another (`slice`, `view`, `transpose`, ...)."""
    op = node.target
    if node.op != "call_function" or not isinstance(op, torch._ops.OpOverload):
        return False
    return any(r.alias_info is not None and not r.alias_info.is_write for r in op._schema.returns)


def _free_name(gm: fx.GraphModule, name: str) -> str:
    base, i = name.replace(".", "_"), 0
    while hasattr(gm, f"{base}_{i}"):
        i += 1
    return f"{base}_{i}"
