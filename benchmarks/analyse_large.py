"""Time and peak memory of analysing large Llama-shaped models on the meta device.

For each shape (Llama-3.2-1B's 16 layers, Llama-3.1-8B's 32, Llama-3.1-70B's 80), in a
fresh process per measurement so that the peak resident memory (`ru_maxrss`) belongs to
this work alone: the model is built under `torch.device("meta")` (no weights exist),
then traced and analysed by `surgeon.inspect`, once as surgeon does it (a 3-layer twin
traced and its last layer copied to the full depth: `surgeon.frontends.twin`) and once
tracing the whole model (the twin turned off), for comparison; both must find the same
layers and groups.

    .venv/bin/python benchmarks/analyse_large.py [--shapes 1b 8b 70b] [--rounds 3]

Writes benchmarks/results/analyse_large.json (commit, date, load average before, every
run and the medians); measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import commit  # benchmarks/common.py: a script's folder is on sys.path

OUT = Path(__file__).resolve().parent / "results" / "analyse_large.json"
SHAPES = {  # vocab, hidden, FFN, layers, heads, KV heads, tied
    "1b": (128256, 2048, 8192, 16, 32, 8, True),
    "8b": (128256, 4096, 14336, 32, 32, 8, False),
    "70b": (128256, 8192, 28672, 80, 64, 8, False),
}


def measure(shape: str, whole: bool) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import surgeon
    import surgeon.frontends.twin

    if whole:
        surgeon.frontends.twin.trace_twin = lambda *args: None
    vocab, hidden, ffn, layers, heads, kv, tied = SHAPES[shape]
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        tie_word_embeddings=tied,
    )
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    t1 = time.perf_counter()
    report = surgeon.inspect(model).to_dict()
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "parameters": report["parameters"],
        "layers_found": report["num_layers"],
        "groups": len(report["groups"]),
        "build_s": round(t1 - t0, 3),
        "analyse_s": round(t2 - t1, 3),
        "peak_rss_gib": round(peak / 2**20, 3),
        "rss_before_gib": round(base / 2**20, 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # shape, "twin" | "whole"
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1] == "whole")))
        return
    load = os.getloadavg()[0]
    runs = []
    for round_ in range(args.rounds):
        for shape in args.shapes:
            for how in ("twin", "whole"):
                cmd = [sys.executable, __file__, "--child", shape, how]
                done = subprocess.run(cmd, check=True, capture_output=True, text=True)
                row = json.loads(done.stdout.strip().splitlines()[-1])
                runs.append({"shape": shape, "trace": how, "round": round_, **row})
                print(f"{shape} {how}: {row}", flush=True)
    medians = []
    for shape in args.shapes:
        found = {(r["layers_found"], r["groups"]) for r in runs if r["shape"] == shape}
        if len(found) != 1:
            sys.exit(f"{shape}: the twin and the whole trace found different layers or groups")
        for how in ("twin", "whole"):
            these = [r for r in runs if r["shape"] == shape and r["trace"] == how]
            medians.append(
                {
                    "shape": shape,
                    "trace": how,
                    "parameters": these[0]["parameters"],
                    "layers_found": these[0]["layers_found"],
                    "groups": these[0]["groups"],
                    **{
                        k: statistics.median(r[k] for r in these)
                        for k in ("build_s", "analyse_s", "peak_rss_gib")
                    },
                }
            )
    result = {
        "commit": commit(),
        "date": datetime.date.today().isoformat(),
        "load_average_before": load,
        "medians": medians,
        "runs": runs,
    }
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    for m in medians:
        print(
            f"{m['shape']:>4} {m['trace']:<6} {m['parameters'] / 1e9:6.2f} B  build "
            f"{m['build_s']:5.2f} s  trace+analyse {m['analyse_s']:6.2f} s  peak RSS "
            f"{m['peak_rss_gib']:.2f} GiB"
        )


if __name__ == "__main__":
    main()
