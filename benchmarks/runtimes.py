"""The runtimes people ship small models with, token for token against transformers:
SmolLM2-135M and the demo's child (`examples/smollm2/plan.yaml`, untrained), each
exported by `surgeon export` (model.onnx and genai_config.json) and `surgeon export
--gguf` (f16 and q8_0), then greedy generation of 128 new tokens after 3 prompts in
onnxruntime-genai and llama.cpp, compared with transformers' `generate` (never stopping
at the end-of-sequence token in any). For q8_0 also the share of positions where
llama.cpp, fed transformers' tokens, picks transformers' next token.

    python benchmarks/runtimes.py            # needs `make demo`'s SmolLM2 cache

Writes benchmarks/results/runtimes.json (commit, date, per model and runtime: tokens
compared, tokens that agree position by position, the first difference)."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import commit  # benchmarks/common.py: a script's folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "runtimes.json"
PROMPTS = ("The capital of France is", "def fibonacci(n):", "Once upon a time, there was a")
NEW_TOKENS = 128
GGUF_TYPES = ("f16", "q8_0")


def _genai(folder: Path, prompt: list[int]) -> list[int]:
    import onnxruntime_genai as og

    config_path = folder / "genai_config.json"
    config = json.loads(config_path.read_text())
    # the reference never stops early: genai's end-of-sequence id is set to the last id
    # of the vocabulary (genai takes none outside it); a run that stops shows as shorter
    config["model"]["eos_token_id"] = config["model"]["vocab_size"] - 1
    config_path.write_text(json.dumps(config))
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + NEW_TOKENS, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    out = []
    while not generator.is_done():
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out


def check(folder: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from surgeon.cli import main
    from surgeon.emit.decoder import greedy_reference
    from surgeon.emit.gguf import gguf_name, llama_greedy, next_token_agreement

    started = time.perf_counter()
    assert main(["export", "--model", str(folder), "--force"]) == 0
    exported = time.perf_counter() - started
    for outtype in GGUF_TYPES:
        assert main(["export", "--model", str(folder), "--gguf", "--gguf-type", outtype]) == 0
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompts = [tokenizer(text)["input_ids"] for text in PROMPTS]
    with torch.no_grad():
        wants = [greedy_reference(model, [prompt], NEW_TOKENS)[0] for prompt in prompts]
    out = {"export_seconds": round(exported, 1)}
    runs = {"onnxruntime_genai": lambda p: _genai(folder, p)}
    for outtype in GGUF_TYPES:
        path = folder / gguf_name(outtype)
        runs[f"llama.cpp {outtype}"] = lambda p, path=path: llama_greedy(path, p, NEW_TOKENS)
    for name, run in runs.items():
        out[name] = [
            _row(text, run(p), want) for text, p, want in zip(PROMPTS, prompts, wants, strict=True)
        ]
    context = max(map(len, prompts)) + NEW_TOKENS
    agreement = next_token_agreement(folder / gguf_name("q8_0"), prompts, wants, context)
    out["llama.cpp q8_0 next-token agreement, fed transformers' tokens"] = agreement
    return out


def _row(text: str, got: list[int], want: list[int]) -> dict:
    same = sum(a == b for a, b in zip(got, want, strict=False))
    first = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
    return {"prompt": text, "tokens": len(want), "agree": same, "first_difference": first}


def main() -> int:
    from surgeon.demo.smollm2 import DEFAULT_CACHE, smollm2

    smollm2()  # converts the offline package once
    parent = ROOT / DEFAULT_CACHE
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        child = Path(tmp) / "child"
        plan = ROOT / "examples" / "smollm2" / "plan.yaml"
        from surgeon.cli import main as cli

        assert cli(["apply", "--model", str(parent), "--plan", str(plan), "--out", str(child)]) == 0
        parent_copy = Path(tmp) / "parent"
        subprocess.run(["cp", "-r", str(parent), str(parent_copy)], check=True)
        for name, folder in (("SmolLM2-135M", parent_copy), ("demo child", child)):
            results[name] = check(folder)
            print(name, json.dumps(results[name]), flush=True)
    out = {"commit": commit(), "date": datetime.date.today().isoformat(), "models": results}
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
