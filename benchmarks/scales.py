"""Why inits built from the parent want strong weight decay: the child's activation and
logit scales against the parent's, layer by layer, before any training.

For each child size of `benchmarks/convergence.py` and each of its parent-derived inits
(surgeon's default, surgeon with `rescale: none`, Weight Selection), built on the
protocol's calibration windows, both models read the validation windows: per child
layer, the RMS of the residual stream it leaves against the RMS of the stream the parent
leaves after the same parent layer (each over every position and channel; the child's
channels are a subset of the parent's); and of the outputs, the logits' RMS and standard
deviation over the vocabulary, the softmax entropy, and the loss.

    .venv/bin/python benchmarks/scales.py [--sizes paper,demo,extreme] [--threads 1]

Writes benchmarks/results/scales.json (commit, date, rows).
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch
from common import commit  # benchmarks/common.py: a script's folder is on sys.path
from convergence import BATCH, SIZES, TARGET_KEYS, calibration_batches, splits

OUT = Path(__file__).resolve().parent / "results" / "scales.json"
INITS = {
    "surgeon": {"recipe": "surgeon"},
    "surgeon with rescale none": {"recipe": "surgeon", "rescale": "none"},
    "weight selection": {"recipe": "weight-selection"},
}


def measure(model, windows) -> dict:
    """Per hidden state (embeddings, then each layer's output) its RMS; of the logits
    their RMS, mean standard deviation over the vocabulary and softmax entropy; the
    loss. Means over the windows."""
    sums: dict[str, list] = {"hidden": [], "logits_rms": [], "logits_std": [], "entropy": []}
    losses = []
    with torch.no_grad():
        for x in windows.split(BATCH):
            out = model(input_ids=x, labels=x, output_hidden_states=True)
            sums["hidden"].append([h.pow(2).mean().sqrt().item() for h in out.hidden_states])
            logits = out.logits.float()
            sums["logits_rms"].append(logits.pow(2).mean().sqrt().item())
            sums["logits_std"].append(logits.std(-1).mean().item())
            p = logits.log_softmax(-1)
            sums["entropy"].append(-(p.exp() * p).sum(-1).mean().item())
            losses.append(out.loss.item())
    n = len(losses)
    hidden = [sum(col) / n for col in zip(*sums["hidden"], strict=True)]
    return {
        "hidden_rms": hidden,
        **{k: sum(v) / n for k, v in sums.items() if k != "hidden"},
        "loss": sum(losses) / n,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="paper,demo,extreme")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from surgeon.api import subclone
    from surgeon.demo.smollm2 import smollm2

    parent, tokenizer = smollm2()
    split = splits(tokenizer)
    batches = calibration_batches(split)
    windows = split["validation"]
    whole = measure(parent, windows)
    rows = [{"model": "parent", **whole}]
    for size in args.sizes.split(","):
        target = dict(zip(TARGET_KEYS, SIZES[size], strict=True))
        for init, plan in INITS.items():
            child = subclone(parent, {"target": target, **plan}, calibration=batches)
            mine = measure(child.model, windows)
            kept = child.cut.state.kept_layers()
            # hidden_states[0] is the embedding; child layer j leaves what parent layer
            # kept[j] leaves (hidden_states[kept[j] + 1])
            ratios = [mine["hidden_rms"][0] / whole["hidden_rms"][0]]
            ratios += [
                mine["hidden_rms"][j + 1] / whole["hidden_rms"][i + 1] for j, i in enumerate(kept)
            ]
            row = {
                "size": size,
                "init": init,
                "layers_kept": kept,
                **mine,
                "hidden_rms_ratio": ratios,
                "logits_rms_ratio": mine["logits_rms"] / whole["logits_rms"],
                "logits_std_ratio": mine["logits_std"] / whole["logits_std"],
            }
            rows.append(row)
            print(
                f"{size} {init}: stream RMS ratio first {ratios[0]:.2f} mid "
                f"{ratios[len(ratios) // 2]:.2f} last {ratios[-1]:.2f}; logits RMS ratio "
                f"{row['logits_rms_ratio']:.2f}, std ratio {row['logits_std_ratio']:.2f}, "
                f"entropy {mine['entropy']:.2f} (parent {whole['entropy']:.2f}), loss "
                f"{mine['loss']:.2f}",
                flush=True,
            )
    result = {"commit": commit(), "date": datetime.date.today().isoformat(), "rows": rows}
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
