"""Hand-made mutants of surgeon, each run against the test suite: every one must fail it.

Each mutant is one textual change to one file of the package (a bug a plausible edit
could bring in). The package is copied with the tests into a temporary folder, the
change applied there, and pytest run on the copy; a mutant is *killed* when a test fails,
*survived* when the suite passes. The repository itself is never changed.

    python benchmarks/mutants.py                      # all mutants, the whole suite
    python benchmarks/mutants.py --only slice-off-by-one --tests tests/test_reference.py

Writes benchmarks/results/mutants.json (commit, date, per mutant: killed or not, the
first failing test, seconds).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import commit  # benchmarks/common.py: a script's folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "mutants.json"

# name: (file, the text replaced, its replacement, what the bug is)
MUTANTS = {
    "1-d-not-permuted": (
        "surgeon/emit/graph.py",
        "    return value.index_select(axis, how)",
        "    if value.dim() == 1 and len(how) == value.shape[0]:\n"
        "        return value\n"
        "    return value.index_select(axis, how)",
        "biases and norm weights are never permuted",
    ),
    "slice-off-by-one": (
        "surgeon/passes/slice.py",
        "                state.select[group] = order[:k]",
        "                state.select[group] = order[1 : k + 1] if k < len(order) else order[:k]",
        "the kept positions start one after the first",
    ),
    "rescale-inverted": (
        "surgeon/passes/rescale.py",
        "state.scale[name] = math.sqrt(old / new)",
        "state.scale[name] = math.sqrt(new / old)",
        "the rescale factor is inverted",
    ),
    "importance-reversed": (
        "surgeon/passes/permute.py",
        "torch.argsort(scores, descending=True, stable=True)",
        "torch.argsort(scores, descending=False, stable=True)",
        "the least important positions come first, so the slice keeps them",
    ),
    "importance-reversed-ordered": (
        "surgeon/passes/slice.py",
        "torch.argsort(scores, descending=True, stable=True)",
        "torch.argsort(scores, descending=False, stable=True)",
        "an ordered group (cut, never reordered) keeps its least important positions",
    ),
    "depth-wrong-layer": (
        "surgeon/passes/depth.py",
        "        state.layers = self._choose(state, influence)",
        "        state.layers = self._choose(state, influence)\n"
        "        n_ = len(state.analysis.layers)\n"
        "        if len(state.layers) < n_:\n"
        "            state.layers = [min(i + 1, n_ - 1) for i in state.layers]",
        "depth keeps the layer after the chosen one",
    ),
    "kv-groups-split": (
        "surgeon/analysis/atoms.py",
        "            index = index.unsqueeze(-1) * self.size[self.find(p)] + m",
        "            index = index.unsqueeze(-1) * len(m) + m",
        "a product axis strides by the kept count, not the parent's: the query heads kept "
        "straddle the key/value groups",
    ),
    "tied-cut-twice": (
        "surgeon/emit/graph.py",
        "        _assign(root, name, done[canonical])",
        "        if name != canonical and canonical in done:  # the tied name: cut once more\n"
        "            done[canonical] = _child_tensor(\n"
        "                state, root, canonical, dims.tensors.get(canonical), None\n"
        "            )\n"
        "        _assign(root, name, done[canonical])",
        "a tensor tied to another name is cut again, from the child's copy",
    ),
    "config-field-left": (
        "surgeon/fit.py",
        "        for field in exact:  # the fields that state the parent's size\n"
        "            setattr(config, field, value)",
        "        for field in exact:  # the fields that state the parent's size\n"
        "            if key != FFN_ROLES[0]:\n"
        "                setattr(config, field, value)",
        "the child's config keeps the parent's intermediate_size",
    ),
}


def run(name: str, tests: list[str], jobs: str) -> dict:
    path, old, new, what = MUTANTS[name]
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "repo"
        for part in ("surgeon", "tests", "examples", "docs", "benchmarks"):
            shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("results"))
        for f in ("pyproject.toml", "README.md", "Makefile"):
            shutil.copy(ROOT / f, copy / f)
        target = copy / path
        text = target.read_text()
        if text.count(old) != 1:
            return {"mutant": name, "what": what, "error": f"its text is not once in {path}"}
        target.write_text(text.replace(old, new))
        start = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-x",
                "-p",
                "no:cacheprovider",
                "-n",
                jobs,
                "--dist",
                "loadgroup",
                *tests,
            ],  # fmt: skip
            cwd=copy,
            env={**os.environ, "PYTHONPATH": str(copy)},
            capture_output=True,
            text=True,
        )
        failed = re.findall(r"^FAILED (\S+)", done.stdout, re.M)
    return {
        "mutant": name,
        "what": what,
        "killed": done.returncode != 0,
        "first_failure": failed[0] if failed else None,
        "seconds": round(time.perf_counter() - start, 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated mutant names")
    ap.add_argument("--tests", nargs="*", default=["tests"], help="what pytest runs")
    ap.add_argument("--jobs", default="2", help="pytest-xdist workers")
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else list(MUTANTS)
    rows = []
    for name in names:
        row = run(name, args.tests, args.jobs)
        print(json.dumps(row), flush=True)
        rows.append(row)
    RESULTS.write_text(
        json.dumps(
            {
                "commit": commit(),
                "date": datetime.date.today().isoformat(),
                "tests": args.tests,
                "mutants": rows,
                "killed": sum(bool(r.get("killed")) for r in rows),
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
