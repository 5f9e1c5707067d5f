"""onnxruntime-genai's `genai_config.json` beside a decoder's `model.onnx`, so that
`onnxruntime_genai.Model(folder)` runs the folder as it is, checked where
onnxruntime-genai is installed: its greedy tokens against transformers' `generate`.

The config uses genai's generic `decoder` model type with the tensor names the export
writes (Optimum's: `past_key_values.%d.key`, `present.%d.key`, ...). Its decoder section
takes one key/value head count and one head size for all layers, so a child whose layers
differ gets no config (the result says why)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import InvariantError, SurgeonError, first_line

__all__ = ["genai_config", "write_genai"]


def genai_config(model: nn.Module, layout: Any) -> dict | str:
    """The config for `model`'s decoder with the cache `layout`, or why there is none."""
    sizes = set(layout.layers)
    if len(sizes) != 1:
        return "its layers have different key/value head counts or head sizes"
    kv_heads, key_size, value_size = sizes.pop()
    if key_size != value_size:
        return "its keys and values have different head sizes"
    config = model.config.get_text_config()
    eos = config.eos_token_id if config.eos_token_id is not None else 0
    first = eos[0] if isinstance(eos, list) else eos
    inputs = {"input_ids": "input_ids", "attention_mask": "attention_mask"}
    if layout.position_ids:
        inputs["position_ids"] = "position_ids"
    inputs |= {"past_key_names": "past_key_values.%d.key"}
    inputs |= {"past_value_names": "past_key_values.%d.value"}
    outputs = {"logits": "logits", "present_key_names": "present.%d.key"}
    outputs |= {"present_value_names": "present.%d.value"}
    decoder = {
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
        "filename": "model.onnx",
        "head_size": key_size,
        "hidden_size": config.hidden_size,
        "num_attention_heads": getattr(config, "num_attention_heads", kv_heads),
        "num_hidden_layers": len(layout.layers),
        "num_key_value_heads": kv_heads,
        "inputs": inputs,
        "outputs": outputs,
    }
    pad = config.pad_token_id if config.pad_token_id is not None else first
    context = getattr(config, "max_position_embeddings", None) or 2048
    return {
        "model": {
            "type": "decoder",
            "bos_token_id": config.bos_token_id if config.bos_token_id is not None else first,
            "eos_token_id": eos,
            "pad_token_id": pad if not isinstance(pad, list) else pad[0],
            "vocab_size": config.vocab_size,
            "context_length": context,
            "decoder": decoder,
        },
        "search": {
            "do_sample": False,
            "num_beams": 1,
            "num_return_sequences": 1,
            "max_length": context,
            "min_length": 0,
            "past_present_share_buffer": False,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }


def write_genai(
    model: nn.Module, layout: Any, folder: Path, prompts: list[list[int]], new_tokens: int
) -> dict:
    """Write `folder`/genai_config.json and, where onnxruntime-genai is installed, run
    greedy generation of `new_tokens` after each prompt and compare it with transformers'
    `generate` (a run that stops at the end-of-sequence token is compared up to it).
    `InvariantError` naming the first difference."""
    config = genai_config(model, layout)
    if isinstance(config, str):
        return {"genai_config": None, "genai_skipped": f"no genai_config.json: {config}"}
    (Path(folder) / "genai_config.json").write_text(json.dumps(config, indent=2) + "\n")
    try:
        import onnxruntime_genai as og
    except ImportError:
        return {"genai_config": "genai_config.json", "genai_tokens_compared": None}
    try:
        return _check_genai(og, model, folder, config, prompts, new_tokens)
    except SurgeonError:
        raise
    except Exception as e:  # noqa: BLE001 - onnxruntime-genai's own errors (an op, a field)
        error = f"onnxruntime-genai cannot run it: {first_line(e, 200)}"
        return {
            "genai_config": "genai_config.json",
            "genai_tokens_compared": None,
            "genai_error": error,
        }


def _check_genai(og, model, folder, config, prompts, new_tokens) -> dict:
    from .decoder import greedy_reference

    runtime = og.Model(str(folder))
    eos, pad = config["model"]["eos_token_id"], config["model"]["pad_token_id"]
    eos = set(eos) if isinstance(eos, list) else {eos}
    # onnxruntime-genai masks every input token equal to the pad token id (a real
    # tokenizer's is a special token no prompt holds): such a prompt is not compared
    usable = [p for p in prompts if pad not in p]
    compared = 0
    for i, (prompt, want) in enumerate(
        zip(usable, greedy_reference(model, usable, new_tokens) if usable else [], strict=True)
    ):
        params = og.GeneratorParams(runtime)
        params.set_search_options(max_length=len(prompt) + new_tokens, do_sample=False)
        generator = og.Generator(runtime, params)
        generator.append_tokens(prompt)
        got: list[int] = []
        while not generator.is_done():
            generator.generate_next_token()
            got.append(int(generator.get_next_tokens()[0]))
        stopped = len(got) < new_tokens and got and got[-1] in eos
        if got != (want[: len(got)] if stopped else want):
            at = next((j for j, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
            raise InvariantError(
                f"greedy generation in onnxruntime-genai differs from transformers' generate "
                f"at new token {at if at is not None else len(got)} of prompt {i}"
            )
        compared += len(got)
    skipped = len(prompts) - len(usable)
    return {
        "genai_config": "genai_config.json",
        "genai_tokens_compared": compared,
        **({"genai_prompts_skipped_for_pad": skipped} if skipped else {}),
    }
