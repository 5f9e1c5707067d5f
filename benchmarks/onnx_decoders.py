"""Every causal LM of the dev zoo (tests/zoo.py): its shrunk child (tests/helpers.py's
plan, all 3 layers) exported as an ONNX decoder with a KV cache and checked as
`surgeon apply --onnx` checks it: logits of a prefill and 3 cached steps against PyTorch,
and 4 prompts x 32 greedy tokens in onnxruntime against transformers' `generate`.
Prints a table; writes JSON (`--json`). About 15 s a model on this 2-core machine.

    .venv/bin/python benchmarks/onnx_decoders.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.zoo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", help="zoo names (default: every causal LM)")
    p.add_argument("--json", default=str(ROOT / "benchmarks/results/onnx_decoders.json"))
    args = p.parse_args()

    from surgeon.api import subclone
    from surgeon.emit.decoder import emit_decoder, is_causal_lm
    from surgeon.errors import SurgeonError
    from tests import zoo
    from tests.helpers import shrink_plan

    rows = []
    print(f"{'model':<10} {'cache (kv heads, dk, dv) per layer':<38} {'logits':>9} {'greedy':>9}")
    for name in args.only or zoo.HF_NAMES:
        model, example = zoo.build(name)
        if not is_causal_lm(model):
            continue
        child = subclone(model, shrink_plan(name), example).model.eval()
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            try:
                check = emit_decoder(child, folder)
                row = {"model": name, "ok": True, **check}
            except SurgeonError as e:
                row = {"model": name, "ok": False, "error": str(e)}
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        if row["ok"]:
            layers = ", ".join(str(tuple(s)) for s in row["cache_layers"])
            print(
                f"{name:<10} {layers:<38} {row['max_relative_difference']:>9.1e} "
                f"{row['greedy_tokens_compared']:>4} same"
            )
        else:
            print(f"{name:<10} FAILED: {row['error']}")
    passed = sum(r["ok"] for r in rows)
    print(f"{passed}/{len(rows)} zoo decoders token-identical (4 prompts x 32 greedy tokens)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    if passed < len(rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
