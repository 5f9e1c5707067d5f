"""`surgeon apply`: plan -> child model folder (+ ONNX, GGUF), atomically, with a summary."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from ..errors import PlanError
from ..execute import process_group
from ..hints import training_hint
from ..io.output import check_output

__all__ = ["run_apply"]


def run_apply(args: argparse.Namespace) -> int:
    """Under torchrun, every rank measures its share of the calibration batches and only
    rank 0 writes."""
    from ..plan import load_plan

    plan = load_plan(args.plan)
    if args.device:
        plan = replace(plan, device=args.device)
    with process_group(plan.device):
        return _apply(args, plan)


def _apply(args: argparse.Namespace, plan) -> int:
    from ..api import save_child
    from ..frontends.load import has_tokenizer
    from ..pipeline import resolve

    out = Path(args.out)
    resolve(plan, args.calibration is not None or has_tokenizer(args.model))  # cheap, first
    check_output(out, args.force, args.model)  # also: not in, at or around the parent
    if args.calibration is not None:
        _check_readable(Path(args.calibration))
    if getattr(args, "gguf", False):
        _check_gguf(args.model)
    onnx = "int8" if getattr(args, "onnx_int8", False) else "fp32" if args.onnx else None
    summary = save_child(
        args.model, args.plan if not args.device else plan, out,
        calibration=args.calibration, force=args.force, onnx=onnx, progress=True,
        notice=lambda line: print(f"surgeon: {line}", file=sys.stderr),
        cache=not getattr(args, "no_cache", False), nas=getattr(args, "nas", False),
    )  # fmt: skip
    if summary is not None:  # rank 0 writes and reports
        _print(summary, out)
        if getattr(args, "gguf", False):
            from .export import run_export_gguf

            run_export_gguf(out, args.gguf_type, force=True)
    return 0


def _check_gguf(model: str) -> None:
    """Before any surgery: the converter is there and the parent has a tokenizer."""
    from ..emit.gguf import converter
    from ..frontends.load import has_tokenizer

    converter()
    if not has_tokenizer(model):
        raise PlanError(f"{model} has no tokenizer: llama.cpp's GGUF (--gguf) carries one")


def _check_readable(path: Path) -> None:
    try:
        with path.open(encoding="utf-8") as f:
            f.read(4096)
    except FileNotFoundError:
        raise PlanError(f"calibration file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PlanError(f"cannot read calibration file {path}: {e}") from e


def _ranges(values: list[int]) -> str:
    """`0-3, 7, 9-10`: a list of layer numbers, runs joined."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def _print(summary: dict, out: Path) -> None:
    s = summary
    print(f"wrote {out}/  ({s['model']})")
    print(
        f"  parameters  {s['parent_parameters']:,} -> {s['child_parameters']:,} "
        f"({s['child_parameters'] / s['parent_parameters']:.1%})"
    )
    from ..api import budget_line, from_to

    if s.get("budget"):
        by = {"importance": ", by importance kept", "size": ", by size"}
        how = by.get(s["budget"].get("chosen_by"), "")
        print(f"  {budget_line(s['budget'], '')} (sizes chosen to fit it{how})")
    for key, value in from_to(s["parent_sizes"], s["child"]).items():
        print(f"  {key:<18} {value}")
    for key in ("intermediate_size", "num_heads", "num_kv_heads"):  # layout: per_layer(_heads)
        widths = [len(k.get(key, [])) for k in s["kept"]["per_layer"]]
        if len(set(widths)) > 1:
            print(f"  {key:<18} per layer {', '.join(map(str, widths))}")
    print(f"  layers kept       {_ranges(s['layers_kept'])} (of the parent's)")
    dropped = [
        (i, kinds)
        for i, k in zip(s["layers_kept"], s["kept"]["per_layer"], strict=True)
        if (kinds := k.get("dropped"))
    ]
    if dropped:  # target.drop_blocks
        blocks = ", ".join(f"{i} {'+'.join(kinds)}" for i, kinds in dropped)
        print(f"  blocks dropped    {blocks} (parent layer, block)")
    print("  kept positions    surgeon.json 'kept' (residual, FFN neurons, heads per layer)")
    onnx = s.get("onnx")
    if onnx and onnx.get("kv_cache"):
        print(
            f"  onnx: model.onnx, a decoder with a KV cache: logits within "
            f"{onnx['max_relative_difference']:.1e} of the output scale (prefill and 3 cached "
            f"steps), greedy generation token-identical to transformers "
            f"({onnx['greedy_tokens_compared']} tokens)"
        )
    elif onnx:
        print(
            f"  onnx: model.onnx matches PyTorch within "
            f"{onnx['max_relative_difference']:.1e} of the output scale (2 fresh shapes)"
        )
    if onnx:
        from .export import print_genai

        print_genai(onnx)
    if onnx and "int8_bytes" in onnx:
        print(f"  onnx: model.int8.onnx (dynamic int8), {onnx['int8_bytes'] / 2**20:.1f} MiB")
    nas = s.get("nas")
    if nas:
        print(
            f"  nemotron-nas: config.json (DeciLMForCausalLM, block_configs) and "
            f"model.safetensors; llama.cpp ({nas['gguf']}, its own converter) gives the "
            f"child's logits within {nas['max_relative_difference']:.1e} of the largest"
        )
    print(f"  took {s['seconds']:.1f} s")
    hint = s.get("causal_lm") and training_hint(
        s["child_parameters"], s["parent_parameters"], str(out), s["parent"]
    )
    if hint:
        print(hint)
