"""Time and peak memory of analysing a large Llama-shaped model on the meta device.

Builds the model under `torch.device("meta")` (no weights exist), traces it and runs the
whole analysis (`surgeon.inspect`), in a fresh process per measurement so that the peak
resident memory (`ru_maxrss`) belongs to this work alone. Prints a table; `--json FILE`
writes the figures.

    .venv/bin/python benchmarks/analyse_large.py              # 1.2 B (Llama-3.2-1B shape)
    .venv/bin/python benchmarks/analyse_large.py --layers 32 --hidden 4096 --ffn 14336
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(args) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import surgeon

    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.ffn,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        tie_word_embeddings=True,
        use_cache=False,
    )
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    t1 = time.perf_counter()
    report = surgeon.inspect(model).to_dict()
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "parameters": report["parameters"],
        "layers_found": report["num_layers"],
        "hidden_found": report["hidden_size"],
        "groups": len(report["groups"]),
        "build_s": t1 - t0,
        "analyse_s": t2 - t1,
        "peak_rss_gib": peak / 2**20,
        "rss_before_gib": base / 2**20,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--ffn", type=int, default=8192)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--json", help="write the figures to this file")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return
    cmd = [sys.executable, __file__, "--child"] + [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("json", "child")
    ]
    result = json.loads(
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    print(f"{'parameters':<22}{result['parameters'] / 1e9:.3f} B")
    print(f"{'layers / hidden found':<22}{result['layers_found']} / {result['hidden_found']}")
    print(f"{'groups':<22}{result['groups']}")
    print(f"{'build on meta':<22}{result['build_s']:.2f} s")
    print(f"{'trace + analyse':<22}{result['analyse_s']:.2f} s")
    print(
        f"{'peak RSS (process)':<22}{result['peak_rss_gib']:.2f} GiB "
        f"(of which {result['rss_before_gib']:.2f} GiB after imports)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
