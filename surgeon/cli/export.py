"""`surgeon export` and the ONNX step of `surgeon apply --onnx`: a causal LM becomes a
checked decoder with a KV cache (`surgeon.emit.decoder`), any other model today's
single-pass export (`surgeon.emit.onnx`); `surgeon generate` runs the decoder."""

from __future__ import annotations

import argparse
import shutil
from functools import partial
from pathlib import Path

from ..emit.decoder import emit_any_onnx
from ..emit.gguf import TYPES
from ..errors import ModelLoadError, SurgeonError

__all__ = ["add_parsers", "run_export", "run_generate"]


def run_export(args: argparse.Namespace) -> int:
    """Write model.onnx (and model.int8.onnx) into an existing Hugging Face folder, beside
    its config and tokenizer: the layout Optimum's ONNX models load from."""
    from ..api import step
    from ..frontends import synthetic_inputs
    from ..frontends.load import load_model, load_tokenizer

    folder = Path(args.model)
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder} is not a Hugging Face folder (no config.json)")
    if args.gguf:
        return run_export_gguf(folder, args.gguf_type, args.force)
    names = ["model.onnx", "model.onnx.data"] + (["model.int8.onnx"] if args.int8 else [])
    present = [n for n in names if (folder / n).exists()]
    if present and not args.force:
        raise SurgeonError(f"{folder / present[0]} exists: pass --force to replace it")
    model, _ = load_model(str(folder))
    tokenizer = load_tokenizer(str(folder))
    staging = folder / ".surgeon-export.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        with step(True, f"exporting {type(model).__name__} to ONNX and checking it"):
            result = emit_any_onnx(model, synthetic_inputs(model), staging, tokenizer, args.int8)
        for file in staging.iterdir():  # only after the check passed
            file.replace(folder / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _print_onnx(result, folder)
    return 0


def run_export_gguf(folder: Path, outtype: str, force: bool) -> int:
    """Write and check the folder's GGUF for llama.cpp (`surgeon.emit.gguf`)."""
    from ..api import step
    from ..emit.gguf import converter, emit_gguf, gguf_name
    from ..frontends.load import load_model, load_tokenizer

    converter()  # before loading anything: says how to install it
    if (folder / gguf_name(outtype)).exists() and not force:
        raise SurgeonError(f"{folder / gguf_name(outtype)} exists: pass --force to replace it")
    model, _ = load_model(str(folder))
    with step(True, f"converting {type(model).__name__} to GGUF ({outtype}) and checking it"):
        result = emit_gguf(model.eval(), folder, load_tokenizer(str(folder)), outtype)
    print_gguf(result, folder)
    return 0


def print_gguf(result: dict, folder: Path) -> None:
    """The lines on a GGUF and its check in llama.cpp."""
    size = (folder / result["gguf"]).stat().st_size / 2**20
    print(f"wrote {folder / result['gguf']} ({result['gguf_type']}, {size:.1f} MiB)")
    if "gguf_next_token_agreement" in result:
        print(
            f"  llama.cpp: next token as transformers' on "
            f"{result['gguf_next_token_agreement']:.1%} of greedy positions (quantized)"
        )
        return
    ties = result["gguf_near_ties"]
    print(
        f"  llama.cpp: greedy generation token-identical to transformers' generate "
        f"({result['gguf_tokens_compared']} tokens"
        + (f"; {ties} prompt(s) compared up to a near-tie" if ties else "")
        + ")"
    )


def _print_onnx(result: dict, folder: Path) -> None:
    what = "decoder with a KV cache" if result.get("kv_cache") else "single forward pass"
    print(f"wrote {folder / 'model.onnx'} ({what})")
    print(f"  logits match PyTorch within {result['max_relative_difference']:.1e} of their scale")
    if result.get("greedy_tokens_compared"):
        print(
            f"  greedy generation token-identical to transformers' generate "
            f"({result['greedy_tokens_compared']} tokens)"
        )
    if "int8_bytes" in result:
        print(f"  int8: model.int8.onnx, {result['int8_bytes'] / 2**20:.1f} MiB")
    print_genai(result)


def print_genai(result: dict) -> None:
    """The line on onnxruntime-genai's config and check, where the export is a decoder."""
    skipped = result.get("genai_prompts_skipped_for_pad")
    skipped = f"; {skipped} prompt(s) holding the pad token id not compared" if skipped else ""
    if result.get("genai_config") and result.get("genai_tokens_compared") is not None:
        print(
            f"  onnxruntime-genai: genai_config.json, greedy generation token-identical to "
            f"transformers ({result['genai_tokens_compared']} tokens{skipped})"
        )
    elif result.get("genai_error"):
        print(f"  onnxruntime-genai: genai_config.json, not checked: {result['genai_error']}")
    elif result.get("genai_config"):
        print("  onnxruntime-genai: genai_config.json (not checked: onnxruntime-genai is "
              "not installed)")  # fmt: skip
    elif result.get("genai_skipped"):
        print(f"  onnxruntime-genai: {result['genai_skipped']}")


def run_generate(args: argparse.Namespace) -> int:
    from ..generate import generate, generate_gguf

    if args.gguf and args.int8:
        raise SurgeonError("--int8 picks model.int8.onnx: a GGUF's type is in the file")
    run = (
        partial(generate_gguf, args.gguf)
        if args.gguf
        else partial(generate, args.onnx, int8=args.int8)
    )
    text = run(
        prompt=args.prompt,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    print(text)
    return 0


def add_parsers(sub) -> None:
    """The `export` and `generate` subcommands."""
    p = sub.add_parser(
        "export",
        help="write model.onnx (a causal LM's with a KV cache) or model.gguf into a HF folder",
    )
    p.add_argument("--model", required=True, help="a Hugging Face folder (config.json, weights)")
    p.add_argument("--int8", action="store_true", help="also write model.int8.onnx")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.add_argument(
        "--gguf", action="store_true", help="write model.gguf for llama.cpp instead of ONNX"
    )
    p.add_argument("--gguf-type", default="f16", choices=TYPES, help="the GGUF's weights")
    p.set_defaults(run=run_export)

    p = sub.add_parser(
        "generate", help="generate text from an exported folder (onnxruntime or llama.cpp)"
    )
    runtime = p.add_mutually_exclusive_group(required=True)
    runtime.add_argument("--onnx", help="a folder with model.onnx and a tokenizer")
    runtime.add_argument("--gguf", help="a .gguf file, or a folder with model.gguf (llama.cpp)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--int8", action="store_true", help="use model.int8.onnx")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0: no top-k cut")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="the seed of --sample")
    p.set_defaults(run=run_generate)
