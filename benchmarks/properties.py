"""The long run of the property tests (tests/test_properties.py): random plans against
shared zoo parents, and random tiny decoders cut by random plans. Every example must
give a child that runs (and trains, for the decoders) or a one-line error.

    python benchmarks/properties.py --plans 10000 --decoders 500 --validated 200

`--plans` is split evenly over the test's parents; `--validated` is per zoo causal LM
(plans `surgeon validate --model` accepts must apply). Writes
benchmarks/results/properties.json: commit, date, per test its examples, outcomes (the
hypothesis events) and failures, and seconds."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from common import commit  # benchmarks/common.py: a script's folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "properties.json"
PARENTS = 3  # test_any_plan_gives_a_child_or_one_line's parametrisation


def _statistics(text: str) -> list[dict]:
    """Per test in pytest's `--hypothesis-show-statistics` output: examples and events."""
    out = []
    for block in re.split(r"\n(?=tests/\S+::)", text):
        name = re.match(r"(tests/\S+::\S+):", block)
        if not name:
            continue
        counts = re.search(r"(\d+) passing, (\d+) failing, and (\d+) invalid", block)
        events = dict(
            (what.strip(), float(pct)) for pct, what in re.findall(r"\* ([\d.]+)%, (.+)", block)
        )
        out.append(
            {
                "test": name.group(1),
                **dict(
                    zip(("passing", "failing", "invalid"), map(int, counts.groups()), strict=True)
                ),
                "events_percent": events,
            }
        )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plans", type=int, default=10_000, help="examples over all parents")
    ap.add_argument("--decoders", type=int, default=500, help="random tiny decoders")
    ap.add_argument("--validated", type=int, default=200, help="plans per zoo causal LM")
    args = ap.parse_args(argv)
    env = {
        **os.environ,
        "SURGEON_PROPERTY_EXAMPLES": str(-(-args.plans // PARENTS)),
        "SURGEON_DECODER_EXAMPLES": str(args.decoders),
        "SURGEON_VALIDATE_EXAMPLES": str(args.validated),
    }
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--hypothesis-show-statistics",
            "tests/test_properties.py",
        ],  # fmt: skip
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    result = {
        "commit": commit(),
        "date": datetime.date.today().isoformat(),
        "plans_per_parent": int(env["SURGEON_PROPERTY_EXAMPLES"]),
        "decoders": args.decoders,
        "validated_per_causal_lm": args.validated,
        "passed": done.returncode == 0,
        "failures": re.findall(r"^FAILED (\S+)", done.stdout, re.M),
        "errors": re.findall(r"^E +(.+)$", done.stdout, re.M)[:40],
        "tests": _statistics(done.stdout),
        "seconds": round(time.perf_counter() - start, 1),
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
