"""`surgeon apply`: plan -> child model folder (+ ONNX), atomically, with a summary."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .errors import NotStreamable, PlanError, SurgeonError
from .output import check_output, staged_folder
from .stream import needs_forward_passes

__all__ = ["run_apply"]


def run_apply(args: argparse.Namespace) -> int:
    from .apply import subclone
    from .loading import has_tokenizer, load_model, load_tokenizer
    from .plan import load_plan

    plan = load_plan(args.plan)  # everything that can be checked cheaply, first
    out = Path(args.out)
    check_output(out, args.force)
    if args.calibration is not None:
        _check_readable(Path(args.calibration))
    started = time.perf_counter()
    folder = Path(args.model)
    data = args.calibration is not None or has_tokenizer(args.model)
    if folder.is_dir() and any(folder.glob("*.safetensors")) and plan.emit != "graph":
        size = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**30
        if needs_forward_passes(plan, data):
            print(
                f"surgeon: this plan runs the parent on calibration data: loading all of it "
                f"({size:.2f} GiB of weights, more during the forward passes)",
                file=sys.stderr,
            )
        else:
            try:
                return _run_streamed(args, plan, out, started)
            except NotStreamable as e:
                print(f"surgeon: {e}: loading all of it ({size:.2f} GiB)", file=sys.stderr)
    tokenizer = load_tokenizer(args.model)
    model, inputs = load_model(args.model)
    parent_params = sum(p.numel() for p in model.parameters())
    child = subclone(model, plan, inputs, args.calibration, tokenizer, progress=True)
    with staged_folder(out, args.force) as tmp:
        _write_model(child, tokenizer, tmp)
        diff = _write_onnx(child, tmp) if args.onnx else None
        summary = _summary(args, child, parent_params, time.perf_counter() - started, diff)
        (tmp / "surgeon.json").write_text(json.dumps(summary, indent=2))
    _print(summary, out)
    return 0


def _run_streamed(args, plan, out: Path, started: float) -> int:
    """A Hugging Face folder and a data-free plan: never load the parent."""
    from .emit.hf import child_sizes
    from .stream import stream_into

    with staged_folder(out, args.force) as tmp:
        state, streamed = stream_into(args.model, plan, tmp, progress=True)
        diff = None
        if args.onnx:
            import transformers

            config = transformers.AutoConfig.from_pretrained(tmp)
            child = getattr(transformers, config.architectures[0]).from_pretrained(tmp).eval()
            from .frontends import synthetic_inputs

            diff = _check_onnx_of(child, synthetic_inputs(child), tmp)  # the parent's are meta
        sizes = child_sizes(state)
        sizes["num_layers"] = len(state.layers or state.analysis.layers)
        summary = {
            "parent": args.model,
            "plan": args.plan,
            "streamed": True,
            "parent_parameters": state.graph.params.num_parameters(),
            "child_parameters": streamed["child_parameters"],
            "child": sizes,
            "layers_kept": state.layers,
            "model": _architecture(tmp),
            "onnx_max_relative_difference": diff,
            "seconds": round(time.perf_counter() - started, 2),
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


def _write_onnx(child, folder: Path) -> float:
    return _check_onnx_of(child.model, child.state.graph.inputs, folder)


def _check_onnx_of(model, example, folder: Path) -> float:
    from .emit.onnx import check_onnx, export_onnx, fresh_like, onnx_ready

    model = onnx_ready(model)  # float32: what onnxruntime runs

    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    first = example.args[0] if example.args else next(iter(example.kwargs.values()))
    batch, seq = first.shape[0], first.shape[1] if first.dim() > 1 else 1
    export_onnx(model, example, folder / "model.onnx")
    checks = [
        fresh_like(example, batch + 1, seq + 3, vocab, 1),
        fresh_like(example, 1, max(2, 2 * seq), vocab, 2),
    ]
    return check_onnx(model, folder / "model.onnx", checks)


def _summary(args, child, parent_params: int, seconds: float, diff) -> dict:
    from .emit.hf import child_sizes

    state = child.state
    sizes = child_sizes(state)
    sizes["num_layers"] = (
        len(state.layers) if state.layers is not None else len(state.analysis.layers)
    )
    return {
        "parent": args.model,
        "plan": args.plan,
        "parent_parameters": parent_params,
        "child_parameters": sum(p.numel() for p in child.model.parameters()),
        "child": sizes,
        "layers_kept": state.layers,
        "model": type(child.model).__name__,
        "onnx_max_relative_difference": diff,
        "seconds": round(seconds, 2),
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
    print(
        "hint: train it with AdamW at lr 1e-3 to 3e-3, weight decay 0.1: fastest for a "
        "subclone in benchmarks/convergence.py (see docs/results.md)"
    )
