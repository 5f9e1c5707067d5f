"""A re-cut of SmolLM2-135M to another budget, from the measures the first cut kept.

Each round, with an empty cache folder (`SURGEON_CACHE`): `surgeon apply` of the parent's
folder to `target: {parameters: FIRST}` (the default recipe: the folder has a tokenizer,
so activation importance and influence depth on the bundled calibration text), then
`surgeon apply` of the same folder to `target: {parameters: SECOND}`, which reads the
first cut's scores and influence from the cache; and that second plan again with
`--no-cache`, for reference. Each command is a fresh process, timed from start to exit.
A first cut that keeps every layer measures no influence, so a second that drops layers
measures it then.

    .venv/bin/python benchmarks/recut.py [--rounds 3] [--budgets 50000000 40000000]
        [--json FILE]

Writes benchmarks/results/recut.json (commit, date, load average before, the budgets,
every run and the medians; `--json`: another file); measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import commit, smollm2_folder  # benchmarks/common.py: a script's folder is on sys.path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "recut.json"


def steps(first: int, second: int) -> dict[str, tuple[int, list[str]]]:
    return {
        f"first cut ({first / 1e6:g} M, measures and keeps)": (first, []),
        f"re-cut ({second / 1e6:g} M, from the cache)": (second, []),
        "the same re-cut without the cache": (second, ["--no-cache"]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--budgets", type=int, nargs=2, default=[50_000_000, 40_000_000])
    p.add_argument("--json", type=Path, default=OUT, help="where the result goes")
    args = p.parse_args()
    todo = steps(*args.budgets)
    folder = smollm2_folder()
    load = os.getloadavg()[0]
    runs = []
    for round_ in range(args.rounds):
        with tempfile.TemporaryDirectory(dir=ROOT / ".cache") as tmp:
            env = {**os.environ, "SURGEON_CACHE": str(Path(tmp) / "cache")}
            for step, (budget, extra) in todo.items():
                plan = Path(tmp) / f"{budget}.yaml"
                plan.write_text(json.dumps({"target": {"parameters": budget}}))
                out = Path(tmp) / f"child-{len(runs)}"
                cmd = [sys.executable, "-m", "surgeon", "apply", "--model", str(folder)]
                cmd += ["--plan", str(plan), "--out", str(out), *extra]
                t0 = time.perf_counter()
                done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
                seconds = time.perf_counter() - t0
                if done.returncode:
                    sys.exit(f"{step}: {done.stderr.strip().splitlines()[-1]}")
                runs.append({"step": step, "round": round_, "seconds": round(seconds, 2)})
                print(f"round {round_} {step}: {seconds:.1f} s", flush=True)
    medians = {
        step: statistics.median(r["seconds"] for r in runs if r["step"] == step) for step in todo
    }
    result = {
        "commit": commit(),
        "date": datetime.date.today().isoformat(),
        "load_average_before": load,
        "parent": str(folder.name),
        "budgets": args.budgets,
        "medians": medians,
        "runs": runs,
    }
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(medians, indent=1))


if __name__ == "__main__":
    main()
