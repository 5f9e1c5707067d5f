"""The kept analysis (surgeon/io/prepared.py) on every Hugging Face type of the test zoo
saved as a folder: whether `prepare_folder` keeps and reads back its graph and analysis,
and where it does, whether the kept graph is the fresh trace node for node (name, op,
target, arguments, value shapes, strides and offsets, module stack, source line) and
the kept analysis the fresh one group for group; and the seconds of the fresh
preparation against the kept one. tests/test_prepared.py runs a slice of it.

    .venv/bin/python benchmarks/prepared_zoo.py

Writes benchmarks/results/prepared_zoo.json (commit, date, a row per type)."""

from __future__ import annotations

import datetime
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

from common import ROOT, commit  # benchmarks/common.py: a script's folder is on sys.path

sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "prepared_zoo.json"


def row(name: str, folder: Path) -> dict:
    from surgeon.pipeline import prepare_folder
    from tests import zoo
    from tests.helpers import analysis_groups, graph_nodes

    model, _ = zoo.build(name)
    model.save_pretrained(folder)
    try:
        started = time.perf_counter()
        fresh = prepare_folder(folder)
        fresh_s = time.perf_counter() - started
    except Exception as e:  # noqa: BLE001 - recorded: not streamed without inputs
        return {"type": name, "prepared": False, "why": str(e).splitlines()[0][:160]}
    started = time.perf_counter()
    kept = prepare_folder(folder)
    kept_s = time.perf_counter() - started
    out = {"type": name, "prepared": True, "kept": kept.kept}
    if kept.kept:
        out["same_graph"] = graph_nodes(kept.graph) == graph_nodes(fresh.graph)
        out["same_analysis"] = analysis_groups(kept.analysis) == analysis_groups(fresh.analysis)
        out["nodes"] = len(kept.graph.graph.nodes)
    out["seconds_fresh"], out["seconds_kept"] = round(fresh_s, 3), round(kept_s, 3)
    return out


def main() -> None:
    from tests import zoo

    warnings.simplefilter("ignore")
    os.environ["SURGEON_CACHE"] = tempfile.mkdtemp(prefix="prepared-zoo-")
    names = [
        *zoo.NAMES, *zoo.MOE_NAMES, *zoo.MOE_SHAPES, *zoo.HYBRID_NAMES, *zoo.ENC_DEC_NAMES,
        *zoo.STREAM_NAMES, *zoo.LAYOUT_NAMES, *zoo.LOOP_NAMES,
    ]  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            if name == "nanogpt":  # not a Hugging Face folder
                continue
            rows.append(row(name, Path(tmp) / name))
            print(json.dumps(rows[-1]), flush=True)
    prepared = [r for r in rows if r["prepared"]]
    good = [r for r in prepared if r.get("kept") and r["same_graph"] and r["same_analysis"]]
    print(f"{len(good)} of {len(prepared)} prepared folders kept and read back as fresh")
    OUT.write_text(
        json.dumps(
            {
                "commit": commit(),
                "date": datetime.date.today().isoformat(),
                "summary": {"prepared": len(prepared), "kept_as_fresh": len(good)},
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
