"""How long `make test` takes on a fresh clone: the README's promise is under 5 minutes
on 2 cores. Clones this repository's HEAD into a temporary folder (no `.venv`, nothing
built), runs `make test` there, and splits its wall time into the set-up (creating
`.venv`: pip installs from its cache where it holds the packages) and the tests (the
seconds pytest reports). With `--with-venv`, a second `make test` in the same clone
times the suite alone with `.venv` present.

    .venv/bin/python benchmarks/make_test_time.py [--with-venv]

Measure on a quiet machine. Appends a row (commit, date, cores, load average before,
seconds) to benchmarks/results/make_test_time.jsonl."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import commit  # benchmarks/common.py: a script's folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "make_test_time.jsonl"


def make_test(clone: Path) -> dict:
    """Wall seconds of `make test` in `clone`, pytest's own seconds and its summary line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "SURGEON_"))}
    started = time.perf_counter()
    done = subprocess.run(["make", "test"], cwd=clone, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    found = re.search(r" in ([\d.]+)s", summary)
    if done.returncode != 0 or found is None:
        sys.exit(f"make test failed ({done.returncode}): {(done.stdout + done.stderr)[-2000:]}")
    tests = float(found.group(1))
    return {"seconds": round(wall, 1), "test_seconds": tests, "summary": summary}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--with-venv", action="store_true", help="time a second run too")
    args = p.parse_args()
    load = os.getloadavg()[0]
    row = {"commit": commit(), "date": datetime.date.today().isoformat()}
    row |= {"cpus": os.cpu_count(), "load_average_before": load}
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "surgeon"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        fresh = make_test(clone)
        row["fresh_clone"] = fresh | {
            "setup_seconds": round(fresh["seconds"] - fresh["test_seconds"], 1)
        }
        if args.with_venv:
            row["with_venv"] = make_test(clone)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
