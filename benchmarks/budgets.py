"""Children of SmolLM2-135M cut to a parameter budget: the sizes the solver chose, the
count reached, and the held-out loss before training, against children of the same
budget whose shape the plan fixes in part (the solver choosing the rest).

Parent, text splits and calibration windows are those of `benchmarks/convergence.py`
(its protocol: calibration read only to build the children, validation and test held
out). Every child is built by `surgeon.subclone` with the `surgeon` recipe (activation
importance, influence depth) on the calibration windows; its parameter count is
`sum(p.numel())` of the child as built, compared with the budget.

    .venv/bin/python benchmarks/budgets.py [--budget 60000000 ...] [--threads 1]
        [--shapes NAME ...] [--json FILE]
    .venv/bin/python benchmarks/budgets.py --train "all 30 layers fixed" --lr 0.01 --wd 1

Writes benchmarks/results/budgets.json (commit, date, rows, each with its budget;
`--shapes`: those shapes only, `--json`: another file). "solver's choice, by size" is a
control: the solver ranks its candidates by the shares of their sizes (the even cut, what
it did before it ranked by importance kept), its `_importance` replaced for that row.
`--train SHAPE` builds only that shape (at the first budget) and trains it as
`benchmarks/convergence.py` trains a run (its steps, batch, schedule and test checks; seed
0) at the stated lr and weight decay, not searched: one point of the grid, the same for
every shape it is run for; the row goes to benchmarks/results/budgets_trained.jsonl.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import time
from pathlib import Path

import torch
from common import commit  # benchmarks/common.py: a script's folder is on sys.path
from convergence import BATCH, calibration_batches, splits, train

OUT = Path(__file__).resolve().parent / "results" / "budgets.json"
TRAINED = OUT.with_name("budgets_trained.jsonl")
SHAPES = {  # the plan's keys beside the budget (the solver chooses the sizes not fixed)
    "solver's choice": {},
    "solver's choice, by size": {"by": "size"},
    "hidden 480 fixed": {"hidden_size": 480},
    "hidden 384 fixed": {"hidden_size": 384},
    "all 30 layers fixed": {"num_layers": 30},
    "10 layers fixed": {"num_layers": 10},
    # the same budgets, the dense FFN neurons dealt to the layers by importance; with no
    # size fixed, per_layer keeps every layer and meets the budget by the widths
    "solver's choice, per_layer": {"layout": "per_layer"},
    "hidden 480 fixed, per_layer": {"hidden_size": 480, "layout": "per_layer"},
    "all 30 layers fixed, per_layer": {"num_layers": 30, "layout": "per_layer"},
    "10 layers fixed, per_layer": {"num_layers": 10, "layout": "per_layer"},
    # the uniform child as a graph, as per_layer children are (a control for training)
    "all 30 layers fixed, graph": {"num_layers": 30, "emit": "graph"},
    # the key/value groups dealt to the layers too
    "solver's choice, per_layer_heads": {"layout": "per_layer_heads"},
    "hidden 480 fixed, per_layer_heads": {"hidden_size": 480, "layout": "per_layer_heads"},
}


@contextlib.contextmanager
def by_size(on: bool):
    """The solver ranking its candidates by the shares of their sizes (`on`), as it did
    before it ranked them by importance kept."""
    import surgeon.budget

    kept = surgeon.budget._importance
    if on:
        surgeon.budget._importance = lambda *args: {}
    try:
        yield
    finally:
        surgeon.budget._importance = kept


def held_out_loss(model, windows) -> float:
    """Mean next-token cross-entropy over `windows`, from the logits (a graph child takes
    no labels)."""
    losses = []
    with torch.no_grad():
        for x in windows.split(BATCH):  # a graph child is traced at the calibration batch
            out = model(input_ids=x, attention_mask=torch.ones_like(x))
            logits = out["logits"] if isinstance(out, dict) or hasattr(out, "keys") else out[0]
            losses.append(
                torch.nn.functional.cross_entropy(
                    logits[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten()
                ).item()
            )
    return sum(losses) / len(losses)


class WithLoss(torch.nn.Module):
    """A child called as the convergence protocol calls a model (`input_ids`, `labels`;
    `.loss`, `.logits`), in chunks of the batch a graph child was traced at."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, labels=None):
        logits = []
        for x in input_ids.split(BATCH):
            out = self.model(input_ids=x, attention_mask=torch.ones_like(x))
            logits.append(out["logits"] if hasattr(out, "keys") else out[0])
        logits = torch.cat(logits)
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten()
            )
        return type("Out", (), {"loss": loss, "logits": logits})()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=int, nargs="+", default=[60_000_000])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), help="these shapes only")
    p.add_argument("--json", type=Path, default=OUT, help="where the rows go")
    p.add_argument("--train", choices=list(SHAPES), help="build and train this shape only")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--wd", type=float, default=1.0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from surgeon.api import subclone
    from surgeon.demo.smollm2 import smollm2

    parent, tokenizer = smollm2()
    split = splits(tokenizer)
    batches = calibration_batches(split)
    rows = [
        {
            "shape": "parent",
            "parameters": sum(t.numel() for t in parent.parameters()),
            "validation": held_out_loss(parent, split["validation"]),
            "test": held_out_loss(parent, split["test"]),
        }
    ]
    chosen = [n for n in SHAPES if (not args.train or n == args.train)]
    chosen = [n for n in chosen if not args.shapes or n in args.shapes]
    for budget, name in ((b, n) for b in args.budget for n in chosen):
        fixed = SHAPES[name]
        sizes = {k: v for k, v in fixed.items() if k not in ("layout", "emit", "by")}
        plan = {"target": {"parameters": budget, **sizes}, "recipe": "surgeon"}
        plan.update({k: v for k, v in fixed.items() if k in ("layout", "emit")})
        t0 = time.perf_counter()
        with by_size(fixed.get("by") == "size"):
            child = subclone(parent, plan, calibration=batches)
        seconds = time.perf_counter() - t0
        count = sum(t.numel() for t in child.model.parameters())
        row = {
            "shape": name,
            "budget": budget,
            "plan": plan,
            "sizes": child.cut.sizes,
            "layers_kept": child.cut.state.kept_layers(),
            "parameters": count,
            "share_of_budget": count / budget,
            "chosen_by": child.cut.surgery.budget.get("chosen_by"),
            "solver_count": child.cut.surgery.budget["child_parameters"],
            "ffn_per_layer": [len(x["intermediate_size"]) for x in child.kept["per_layer"]],
            "kv_per_layer": [len(x.get("num_kv_heads", [])) for x in child.kept["per_layer"]],
            "validation": held_out_loss(child.model, split["validation"]),
            "test": held_out_loss(child.model, split["test"]),
            "seconds": round(seconds, 1),
        }
        if args.train:
            t0 = time.perf_counter()
            row["trained"] = train(WithLoss(child.model), split, 0, args.lr, args.wd, "cpu")
            row.update(lr=args.lr, wd=args.wd, train_seconds=round(time.perf_counter() - t0))
            row.update(commit=commit(), date=datetime.date.today().isoformat())
            with TRAINED.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{name}: trained, test {row['trained']['test'][-1][1]:.3f}", flush=True)
            return
        rows.append(row)
        print(
            f"{name}: {count:,} ({row['share_of_budget']:.1%}) {row['sizes']} validation "
            f"{row['validation']:.3f} test {row['test']:.3f}",
            flush=True,
        )
    result = {
        "commit": commit(),
        "date": datetime.date.today().isoformat(),
        "budgets": args.budget,
        "threads": args.threads,
        "rows": rows,
    }
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
