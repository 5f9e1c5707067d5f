"""A latency budget on SmolLM2-135M: the child `target: {latency: {ms_per_token: T}}`
chooses, every child the search measured, and the parent's own time, all timed as
`surgeon/latency.py` times them (the ONNX decoder with a KV cache in onnxruntime on this
machine, the median of 16 cached one-token steps after a prefill of `--context` tokens,
batch 1). T is half the parent's measured time unless `--ms` says. The plan is data-free
(`recipe: data-free`): latency depends on the sizes, not on which neurons are kept. The
chosen child, built, is timed again on its own: the spread of the clock.

    .venv/bin/python benchmarks/latency_budget.py [--ms 5] [--context 128] [--threads 2]

Writes benchmarks/results/latency_budget.json (commit, date, machine threads)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

import torch
from common import commit  # benchmarks/common.py: a script's folder is on sys.path

OUT = Path(__file__).resolve().parent / "results" / "latency_budget.json"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ms", type=float, help="the budget (default: half the parent's time)")
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    import surgeon
    from surgeon.api import subclone
    from surgeon.demo.smollm2 import smollm2
    from surgeon.latency import ms_per_token

    parent, _ = smollm2()
    parent = parent.float().eval()
    spec = {"context": args.context, "batch": 1}
    parent_ms = ms_per_token(parent, spec)
    budget = args.ms or round(parent_ms / 2, 2)
    print(f"parent {parent_ms:.2f} ms per token; budget {budget} ms", flush=True)
    plan = {"target": {"latency": {**spec, "ms_per_token": budget}}, "recipe": "data-free"}
    start = time.perf_counter()
    made = subclone(surgeon.prepare(parent), plan)
    seconds = time.perf_counter() - start
    child, record = made, dict(made.cut.surgery.budget)
    again = ms_per_token(child.model.float().eval(), spec)
    c = child.model.config
    result = {
        "commit": commit(),
        "date": datetime.date.today().isoformat(),
        "threads": args.threads,
        "parent": "SmolLM2-135M-Instruct",
        "parent_parameters": sum(t.numel() for t in parent.parameters()),
        "parent_ms_per_token": parent_ms,
        "budget_ms_per_token": budget,
        "context": args.context,
        "record": record,
        "child_sizes": {
            "num_layers": c.num_hidden_layers,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "num_heads": c.num_attention_heads,
            "num_kv_heads": c.num_key_value_heads,
        },
        "child_parameters": sum(t.numel() for t in child.model.parameters()),
        "child_ms_per_token_timed_again": again,
        "search_seconds": seconds,
    }
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
