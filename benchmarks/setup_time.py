"""What the `gguf` extra adds to a fresh machine's set-up: the seconds pip takes to build
llama-cpp-python from source without its cache (`pip wheel --no-cache-dir`, with the
Makefile's `CMAKE_ARGS=-DLLAVA_BUILD=OFF`), and to copy llama.cpp's converter out of the
source distribution (`python -m surgeon.emit.gguf`).

    .venv/bin/python benchmarks/setup_time.py

Writes benchmarks/results/setup_time.json (commit, date, load average before, seconds)."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from common import commit  # benchmarks/common.py: a script's folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "setup_time.json"


def timed(cmd: list[str], env: dict | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, **(env or {})})
    return round(time.perf_counter() - started, 1)


def main() -> int:
    wanted = f"llama-cpp-python=={version('llama-cpp-python')}"
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        pip = [sys.executable, "-m", "pip", "wheel", "--no-cache-dir", "--no-deps", wanted]
        build = timed([*pip, "-w", tmp], {"CMAKE_ARGS": "-DLLAVA_BUILD=OFF"})
    converter = timed([sys.executable, "-m", "surgeon.emit.gguf"])
    out = {
        "commit": commit(),
        "date": datetime.date.today().isoformat(),
        "cpus": os.cpu_count(),
        "load_average_before": load,
        "package": wanted,
        "build_seconds_without_cache": build,
        "converter_copy_seconds": converter,
    }
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
