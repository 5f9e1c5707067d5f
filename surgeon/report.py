"""What `surgeon inspect` prints: a summary of a traced model, as a dict and as a table."""

from __future__ import annotations

from torch import nn

from .frontends import Graph

__all__ = ["graph_summary", "render_summary"]


def graph_summary(model: nn.Module, graph: Graph) -> dict:
    """The traced graph in numbers: frontend, nodes, tensors, ties, and the op vocabulary."""
    kinds: dict[str, int] = {}
    for entry in graph.params:
        kinds[entry.kind] = kinds.get(entry.kind, 0) + 1
    return {
        "model": type(model).__name__,
        "frontend": graph.frontend,
        "nodes": len(graph.graph.nodes),
        "parameters": graph.params.num_parameters(),
        "tensors": kinds,
        "tied": [list(names) for names in graph.params.tied],
        "ops": graph.op_counts(),
    }


def render_summary(summary: dict) -> str:
    lines = [
        f"model       {summary['model']}  (traced with {summary['frontend']}, "
        f"{summary['nodes']} nodes)",
        f"parameters  {summary['parameters']:,}",
        "tensors     " + ", ".join(f"{n} {kind}s" for kind, n in summary["tensors"].items()),
    ]
    for names in summary["tied"]:
        lines.append("tied        " + " = ".join(names))
    lines.append("ops")
    width = max((len(op) for op in summary["ops"]), default=0)
    lines += [f"  {op:<{width}}  {n:>4}" for op, n in summary["ops"].items()]
    return "\n".join(lines)
