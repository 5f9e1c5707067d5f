"""Shared by the SmolLM2 benchmarks: the destination the issues measure, and its loss."""

import torch

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
