"""The shallow twin (surgeon/frontends/twin.py) on every Hugging Face type of the test
zoo, built 8 layers deep: whether a twin stands for it, and where one does, whether its
expanded graph is the full trace op for op, analyses group for group as the full trace,
and computes the model's own output on its weights (the largest difference).
tests/test_twin.py runs a slice of it.

    .venv/bin/python benchmarks/twin_zoo.py

Writes benchmarks/results/twin_zoo.json (commit, date, a row per type)."""

from __future__ import annotations

import datetime
import json
import sys
import warnings

import torch
from common import ROOT, commit  # benchmarks/common.py: a script's folder is on sys.path

sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "twin_zoo.json"
LAYERS = 8


def _ops(graph) -> list:
    from surgeon.frontends.graph import op_name

    return [
        (n.op, op_name(n) if n.op == "call_function" else str(n.target)) for n in graph.graph.nodes
    ]


def _groups(analysis) -> tuple:
    layers = [(x.name, x.heads, x.kv, x.ffn, x.experts) for x in analysis.layers]
    groups = sorted((g.id, g.size, g.role, sorted(g.members)) for g in analysis.groups.values())
    return layers, groups


def row(name: str) -> dict:
    from surgeon.analysis import analyse
    from surgeon.frontends import trace, twin
    from surgeon.frontends.graph import output_tensors
    from tests import zoo

    model, inputs = zoo.build(name, num_hidden_layers=LAYERS)
    graph = twin.trace_twin(model, inputs)
    if graph is None:
        return {"type": name, "twin": False}
    full = trace(model, inputs)
    with torch.no_grad():
        want = output_tensors(model(**inputs))[0]
        got = output_tensors(graph.module(**inputs))[0]
    return {
        "type": name,
        "twin": True,
        "same_ops": _ops(graph) == _ops(full),
        "same_analysis": _groups(analyse(graph)) == _groups(analyse(full)),
        "max_difference": (want - got).abs().max().item(),
    }


def main() -> None:
    from tests import zoo

    warnings.filterwarnings("ignore")
    names = zoo.HF_NAMES + zoo.MOE_NAMES + zoo.MOE_SHAPES + zoo.HYBRID_NAMES
    rows = []
    for name in names:
        rows.append(row(name))
        print(rows[-1], flush=True)
    result = {"commit": commit(), "date": datetime.date.today().isoformat(), "rows": rows}
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    wrong = [r["type"] for r in rows if r["twin"] and not (r["same_ops"] and r["same_analysis"])]
    print(f"{sum(r['twin'] for r in rows)} of {len(rows)} types have a twin; wrong: {wrong}")


if __name__ == "__main__":
    main()
