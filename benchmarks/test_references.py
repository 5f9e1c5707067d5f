"""How many tests compare surgeon with an independent reference: counts the hand-made
classification in benchmarks/results/test_references.json (one entry per test function:
`reference`, `behaviour` or `self`, and why) over the tests pytest collects now, per
function and per collected test (parametrised cases apart), and writes the counts back.
Fails, naming them, where a test function has no entry (classify it first) or an entry
names a test that is gone.

    python benchmarks/test_references.py"""

from __future__ import annotations

import collections
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "test_references.json"


def main() -> int:
    listed = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True,
    ).stdout  # fmt: skip
    items = [line.strip() for line in listed.splitlines() if "::" in line]
    data = json.loads(RESULTS.read_text())
    kinds = {t["test"]: t["kind"] for t in data["tests"]}
    functions = {re.sub(r"\[.*$", "", item) for item in items}
    missing, gone = sorted(functions - set(kinds)), sorted(set(kinds) - functions)
    if missing or gone:
        print(f"unclassified: {missing}; gone: {gone}")
        return 1
    by_function = collections.Counter(kinds[f] for f in functions)
    by_item = collections.Counter(kinds[re.sub(r"\[.*$", "", item)] for item in items)
    data["counts"] = {**by_function, "total": sum(by_function.values())}
    data["counts_by_collected_item"] = {**by_item, "total": sum(by_item.values())}
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    for name, counts in (("functions", by_function), ("collected tests", by_item)):
        total = sum(counts.values())
        share = counts["reference"] / total
        print(
            f"{name}: {counts['reference']} of {total} ({share:.1%}) with an independent "
            f"reference; {counts['behaviour']} behaviour, {counts['self']} self"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
