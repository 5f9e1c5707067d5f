"""`surgeon apply`: plan -> child model folder (+ ONNX), atomically, with a summary."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..emit.decoder import is_causal_lm
from ..errors import NotStreamable, PlanError, SurgeonError
from ..execute import process_group, rank, world_size
from ..hints import training_hint
from ..io.output import check_output, staged_folder
from .export import emit_any_onnx

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
    from ..api import subclone
    from ..frontends.load import has_tokenizer, load_model, load_tokenizer
    from ..pipeline import resolve

    data = args.calibration is not None or has_tokenizer(args.model)
    surgery = resolve(plan, data)  # everything that can be checked cheaply, first
    out = Path(args.out)
    check_output(out, args.force, args.model)  # also: not in, at or around the parent
    if args.calibration is not None:
        _check_readable(Path(args.calibration))
    started = time.perf_counter()
    if is_folder(args.model) and surgery.plan.emit != "graph":
        try:
            return _run_streamed(args, surgery, out, started)
        except NotStreamable as e:
            size = sum(f.stat().st_size for f in Path(args.model).glob("*.safetensors"))
            print(f"surgeon: {e}: loading all of it ({size / 2**30:.2f} GiB)", file=sys.stderr)
    tokenizer = load_tokenizer(args.model)
    model, inputs = load_model(args.model)
    parent_params = sum(p.numel() for p in model.parameters())
    child = subclone(model, surgery, inputs, args.calibration, tokenizer, progress=rank() == 0)
    if rank() != 0:
        return 0
    with staged_folder(out, args.force, args.model) as tmp:
        _write_model(child, tokenizer, tmp)
        onnx = None
        if _wants_onnx(args):
            example = child.state.graph.inputs
            onnx = emit_any_onnx(child.model, example, tmp, tokenizer, args.onnx_int8)
        summary = {
            **_summary(args, child.cut, type(child.model).__name__, onnx, started),
            "causal_lm": is_causal_lm(type(child.model).__name__),
            "parent_parameters": parent_params,
            "child_parameters": sum(p.numel() for p in child.model.parameters()),
        }
        (tmp / "surgeon.json").write_text(json.dumps(summary, indent=2))
    _print(summary, out)
    return 0


def is_folder(model: str) -> bool:
    """A Hugging Face folder with safetensors files: streamed, never loaded whole."""
    folder = Path(model)
    return folder.is_dir() and any(folder.glob("*.safetensors"))


def folder_calibration(args, surgery) -> list | None:
    """The calibration batches a plan on a folder needs (None: it needs none), made with
    the folder's tokenizer and the signature of its model, built on the meta device."""
    from ..frontends.load import load_model, load_tokenizer
    from ..io.calibration import resolve_calibration

    if not surgery.needs_data:
        return None
    model, _ = load_model(args.model, weights=False)
    tokenizer = load_tokenizer(args.model)
    return resolve_calibration(model, args.calibration, tokenizer, surgery.plan.calibration, True)


def _run_streamed(args, surgery, out: Path, started: float) -> int:
    """A Hugging Face folder: never load the parent. A plan that measures runs the
    calibration batches one layer at a time, each layer read from the files."""
    from ..emit.shards import emit_shards
    from ..pipeline import decide, prepare_folder

    batches = folder_calibration(args, surgery)
    parent = prepare_folder(args.model, batches[0] if batches else None)
    cut = decide(parent, surgery, batches, progress=rank() == 0)
    if rank() != 0:
        return 0
    with staged_folder(out, args.force, args.model) as tmp:
        written = emit_shards(cut, tmp, progress=True)
        onnx = None
        if _wants_onnx(args):
            import transformers

            from ..frontends import synthetic_inputs
            from ..frontends.load import load_tokenizer

            cls = getattr(transformers, cut.config.architectures[0])
            child = cls.from_pretrained(tmp).eval()
            example = synthetic_inputs(child)  # the parent's are on meta
            onnx = emit_any_onnx(child, example, tmp, load_tokenizer(str(tmp)), args.onnx_int8)
        summary = {
            **_summary(args, cut, _architecture(tmp), onnx, started),
            "streamed": True,
            "causal_lm": is_causal_lm(_architecture(tmp)),
            "parent_parameters": parent.graph.params.num_parameters(),
            "child_parameters": written,
        }
        (tmp / "surgeon.json").write_text(json.dumps(summary, indent=2))
    _print(summary, out)
    return 0


def _wants_onnx(args) -> bool:
    return bool(args.onnx or getattr(args, "onnx_int8", False))


def _architecture(folder: Path) -> str:
    config = json.loads((folder / "config.json").read_text())
    return (config.get("architectures") or ["model"])[0]


def _check_readable(path: Path) -> None:
    try:
        with path.open(encoding="utf-8") as f:
            f.read(4096)
    except FileNotFoundError:
        raise PlanError(f"calibration file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PlanError(f"cannot read calibration file {path}: {e}") from e


def _write_model(child, tokenizer, folder: Path) -> None:
    if child.model is child.graph:
        try:
            torch.save(child.graph, folder / "model.pt")
        except Exception as e:  # noqa: BLE001
            raise SurgeonError(f"cannot save the child graph: {e}") from e
        return
    child.model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def _summary(args, cut, model: str, onnx: dict | None, started: float) -> dict:
    return {
        "parent": args.model,
        "plan": args.plan,
        "child": cut.sizes,
        "layers_kept": cut.state.layers,
        "influence": cut.state.influence,
        "calibration_batches": len(cut.state.calibration or []),
        "ranks": world_size(),
        "model": model,
        "onnx_max_relative_difference": onnx and onnx["max_relative_difference"],
        "onnx": onnx,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _print(summary: dict, out: Path) -> None:
    s = summary
    print(f"wrote {out}/  ({s['model']})")
    print(
        f"  parameters  {s['parent_parameters']:,} -> {s['child_parameters']:,} "
        f"({s['child_parameters'] / s['parent_parameters']:.1%})"
    )
    for key, value in s["child"].items():
        print(f"  {key:<18} {value}")
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
    if onnx and "int8_bytes" in onnx:
        print(f"  onnx: model.int8.onnx (dynamic int8), {onnx['int8_bytes'] / 2**20:.1f} MiB")
    print(f"  took {s['seconds']:.1f} s")
    hint = s.get("causal_lm") and training_hint(
        s["child_parameters"], s["parent_parameters"], str(out), s["parent"]
    )
    if hint:
        print(hint)
