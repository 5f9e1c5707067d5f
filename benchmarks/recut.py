"""A re-cut of SmolLM2-135M to another budget, from the measures the first cut kept.

Each round, with an empty cache folder (`SURGEON_CACHE`): `surgeon apply` of the parent's
folder to `target: {parameters: 60_000_000}` (the default recipe: the folder has a
tokenizer, so activation importance and influence depth on the bundled calibration text),
then `surgeon apply` of the same folder to `target: {parameters: 50_000_000}`, which reads
the first cut's scores and influence from the cache; and that second plan again with
`--no-cache`, for reference. Each command is a fresh process, timed from start to exit.

    .venv/bin/python benchmarks/recut.py [--rounds 3]

Writes benchmarks/results/recut.json (commit, date, load average before, every run and
the medians); measure on a quiet machine.
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
STEPS = {
    "first cut (60 M, measures and keeps)": (60_000_000, []),
    "re-cut (50 M, from the cache)": (50_000_000, []),
    "the same re-cut without the cache": (50_000_000, ["--no-cache"]),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    folder = smollm2_folder()
    load = os.getloadavg()[0]
    runs = []
    for round_ in range(args.rounds):
        with tempfile.TemporaryDirectory(dir=ROOT / ".cache") as tmp:
            env = {**os.environ, "SURGEON_CACHE": str(Path(tmp) / "cache")}
            for step, (budget, extra) in STEPS.items():
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
        step: statistics.median(r["seconds"] for r in runs if r["step"] == step) for step in STEPS
    }
    result = {
        "commit": commit(),
        "date": datetime.date.today().isoformat(),
        "load_average_before": load,
        "parent": str(folder.name),
        "medians": medians,
        "runs": runs,
    }
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(medians, indent=1))


if __name__ == "__main__":
    main()
