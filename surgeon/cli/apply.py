"""`surgeon apply`: plan -> child model folder (+ ONNX), atomically, with a summary."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ..emit.onnx import emit_onnx
from ..errors import NotStreamable, PlanError, SurgeonError
from ..io.output import check_output, staged_folder

__all__ = ["run_apply"]


def run_apply(args: argparse.Namespace) -> int:
    from ..api import subclone
    from ..frontends.load import has_tokenizer, load_model, load_tokenizer
    from ..pipeline import resolve

    data = args.calibration is not None or has_tokenizer(args.model)
    surgery = resolve(args.plan, data)  # everything that can be checked cheaply, first
    out = Path(args.out)
    check_output(out, args.force, args.model)  # also: not in, at or around the parent
    if args.calibration is not None:
        _check_readable(Path(args.calibration))
    started = time.perf_counter()
    folder = Path(args.model)
    if folder.is_dir() and any(folder.glob("*.safetensors")) and surgery.plan.emit != "graph":
        size = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**30
        if surgery.needs_data:
            print(
                f"surgeon: this plan runs the parent on calibration data: loading all of it "
                f"({size:.2f} GiB of weights, more during the forward passes)",
                file=sys.stderr,
            )
        else:
            try:
                return _run_streamed(args, surgery, out, started)
            except NotStreamable as e:
                print(f"surgeon: {e}: loading all of it ({size:.2f} GiB)", file=sys.stderr)
    tokenizer = load_tokenizer(args.model)
    model, inputs = load_model(args.model)
    parent_params = sum(p.numel() for p in model.parameters())
    child = subclone(model, surgery, inputs, args.calibration, tokenizer, progress=True)
    with staged_folder(out, args.force, args.model) as tmp:
        _write_model(child, tokenizer, tmp)
        diff = emit_onnx(child.model, child.state.graph.inputs, tmp) if args.onnx else None
        summary = {
            **_summary(args, child.cut, type(child.model).__name__, diff, started),
            "causal_lm": _is_causal_lm(type(child.model).__name__),
            "parent_parameters": parent_params,
            "child_parameters": sum(p.numel() for p in child.model.parameters()),
        }
        (tmp / "surgeon.json").write_text(json.dumps(summary, indent=2))
    _print(summary, out)
    return 0


def _run_streamed(args, surgery, out: Path, started: float) -> int:
    """A Hugging Face folder and a data-free plan: never load the parent."""
    from ..emit.shards import emit_shards
    from ..pipeline import decide, prepare_folder

    parent = prepare_folder(args.model)  # NotStreamable: the caller loads it instead
    cut = decide(parent, surgery, progress=True)
    with staged_folder(out, args.force, args.model) as tmp:
        written = emit_shards(cut, tmp, progress=True)
        diff = None
        if args.onnx:
            import transformers

            from ..frontends import synthetic_inputs

            cls = getattr(transformers, cut.config.architectures[0])
            child = cls.from_pretrained(tmp).eval()
            diff = emit_onnx(child, synthetic_inputs(child), tmp)  # the parent's are meta
        summary = {
            **_summary(args, cut, _architecture(tmp), diff, started),
            "streamed": True,
            "causal_lm": _is_causal_lm(_architecture(tmp)),
            "parent_parameters": parent.graph.params.num_parameters(),
            "child_parameters": written,
        }
        (tmp / "surgeon.json").write_text(json.dumps(summary, indent=2))
    _print(summary, out)
    return 0


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


def _summary(args, cut, model: str, diff: float | None, started: float) -> dict:
    return {
        "parent": args.model,
        "plan": args.plan,
        "child": cut.sizes,
        "layers_kept": cut.state.layers,
        "model": model,
        "onnx_max_relative_difference": diff,
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
    if s["onnx_max_relative_difference"] is not None:
        print(
            f"  onnx: model.onnx matches PyTorch within "
            f"{s['onnx_max_relative_difference']:.1e} of the output scale (2 fresh shapes)"
        )
    print(f"  took {s['seconds']:.1f} s")
    if s.get("causal_lm"):  # what benchmarks/convergence.py measured (a Llama)
        print(
            "hint: train it with AdamW at lr 1e-3 to 3e-3, weight decay 0.1: fastest for a "
            "subclone in benchmarks/convergence.py (see docs/results.md)"
        )


def _is_causal_lm(name: str) -> bool:
    """Whether the class `name` is a Hugging Face causal language model (not a graph
    child, not an encoder): what the lr hint was measured on."""
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:
        return False
    names = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
    return any(name == n or (not isinstance(n, str) and name in n) for n in names)
