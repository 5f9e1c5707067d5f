"""Every causal LM of the dev zoo (tests/zoo.py) through llama.cpp: its shrunk child
(tests/helpers.py's plan, all 3 layers) saved as a Hugging Face folder with the zoo's
letter tokenizer (and its vocabulary as a SentencePiece tokenizer.model, which some of
llama.cpp's converters want), converted as `surgeon export --gguf` converts it (llama.cpp's
own converter) at f32 and f16, and checked as the export checks it: 4 prompts x 32 greedy
tokens in llama.cpp against transformers' `generate` (f16: up to a near-tie). A model
llama.cpp's converter or loader does not take is a row with its one-line reason.

    .venv/bin/python benchmarks/gguf_decoders.py

Writes benchmarks/results/gguf_decoders.json (commit, date, per model and type: ok, the
tokens compared, near-ties, or the error)."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

from common import commit  # benchmarks/common.py: a script's folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.zoo
TYPES = ("f32", "f16")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", help="zoo names (default: every causal LM)")
    p.add_argument("--json", default=str(ROOT / "benchmarks/results/gguf_decoders.json"))
    args = p.parse_args()

    from transformers import AutoTokenizer

    from surgeon.api import subclone
    from surgeon.emit.decoder import is_causal_lm
    from surgeon.emit.gguf import emit_gguf
    from surgeon.errors import SurgeonError
    from tests import zoo
    from tests.helpers import shrink_plan

    rows = []
    for name in args.only or zoo.HF_NAMES:
        model, example = zoo.build(name)
        if not is_causal_lm(model):
            continue
        child = subclone(model, shrink_plan(name), example).model.eval()
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            child.save_pretrained(folder)
            zoo.save_letter_tokenizer(folder, sentencepiece=True)
            tokenizer = AutoTokenizer.from_pretrained(folder)
            for outtype in TYPES:
                started = time.perf_counter()
                try:
                    row = {"ok": True, **emit_gguf(child, folder, tokenizer, outtype)}
                except SurgeonError as e:
                    row = {"ok": False, "error": str(e).replace(str(folder), "FOLDER")}
                row = {"model": name, "type": outtype, **row}
                row["seconds"] = round(time.perf_counter() - started, 1)
                rows.append(row)
                print(json.dumps(row), flush=True)
    passed = {t: sum(r["ok"] for r in rows if r["type"] == t) for t in TYPES}
    total = len(rows) // len(TYPES)
    print(", ".join(f"{t}: {n}/{total}" for t, n in passed.items()), "zoo decoders pass")
    out = {"commit": commit(), "date": datetime.date.today().isoformat(), "rows": rows}
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
