"""Text that ships with Python, and token batches cut from text, for calibration and loss."""

from __future__ import annotations

import torch

__all__ = ["python_docs_text", "token_batches"]


def python_docs_text() -> str:
    """About 465 KB of English: the topic help of Python's `pydoc_data` (always installed)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def token_batches(tokenizer, text: str, batch: int, seq_len: int, count: int, skip: int = 0):
    """`count` batches of `batch` x `seq_len` token ids, consecutive windows of `text`,
    after skipping the first `skip` windows (so calibration and held-out data differ)."""
    ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    windows = ids[: ids.numel() // seq_len * seq_len].view(-1, seq_len)
    needed = (skip + count) * batch
    if windows.shape[0] < needed:
        raise ValueError(f"the text gives {windows.shape[0]} windows of {seq_len}; {needed} needed")
    chosen = windows[skip * batch : needed]
    return [chosen[i * batch : (i + 1) * batch] for i in range(count)]
