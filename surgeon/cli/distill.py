"""`surgeon distill`: train a child folder on a text file, from a teacher's logits or not,
with the Hugging Face Trainer (runs under torchrun / accelerate launch as it is)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..errors import ModelLoadError, PlanError

__all__ = ["add_parser", "run_distill"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "distill",
        help="train a child on a text file, distilling from a teacher's logits (HF Trainer)",
    )
    p.add_argument("--child", required=True, help="the Hugging Face folder to train")
    p.add_argument(
        "--teacher", help="a Hugging Face folder with the same tokenizer (the parent); "
        "without it, plain next-token training",
    )  # fmt: skip
    p.add_argument("--data", required=True, help="a UTF-8 text file to train on")
    p.add_argument("--out", required=True, help="the folder to write (must not exist)")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=8, help="blocks per step and process")
    p.add_argument("--block-size", type=int, default=256, help="tokens per block")
    p.add_argument(
        "--lr", type=float, help="AdamW's peak learning rate (default: the one measured for the "
        "nearest child size in benchmarks/convergence.py, else 1e-3)",
    )  # fmt: skip
    p.add_argument(
        "--weight-decay", type=float,
        help="AdamW's weight decay (default: as --lr, else 0.1)",
    )  # fmt: skip
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the KL to the teacher")
    p.add_argument("--temperature", type=float, default=1.0, help="of the KL's softmaxes")
    p.add_argument("--seed", type=int, default=0, help="the random seed of the data order and init")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument(
        "--onnx", action="store_true",
        help="also write --out/model.onnx, checked as `surgeon export` checks it",
    )  # fmt: skip
    p.set_defaults(run=run_distill)


def _folder(path: str, flag: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise ModelLoadError(f"{flag} {path}: no such folder (pass a Hugging Face folder)")
    return folder


def _text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanError(f"--data {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PlanError(f"--data {path}: cannot read it as UTF-8 text: {e}") from e


def _record(child_dir: Path) -> dict | None:
    """The child's `surgeon.json` (what `surgeon apply` recorded), if it has one."""
    try:
        return json.loads((child_dir / "surgeon.json").read_text())
    except (OSError, ValueError):
        return None


def _settings(args, record: dict | None, child, distilled: bool) -> tuple[float, float]:
    """--lr and --weight-decay, or the recommendation for this child's size."""
    from ..hints import FALLBACK, recommended

    chosen, source = FALLBACK, "no surgeon.json beside the child: the defaults"
    if record and record.get("parent_parameters"):
        child_parameters = sum(p.numel() for p in child.parameters())
        chosen, source = recommended(child_parameters, record["parent_parameters"], distilled)
    defaulted = [n for n, v in (("lr", args.lr), ("weight decay", args.weight_decay)) if v is None]
    if defaulted and int(os.environ.get("RANK", "0")) == 0:
        print(f"surgeon: {' and '.join(defaulted)}: {source}", file=sys.stderr)
    lr = args.lr if args.lr is not None else chosen["lr"]
    wd = args.weight_decay if args.weight_decay is not None else chosen["wd"]
    return lr, wd


def run_distill(args: argparse.Namespace) -> int:
    from ..distill import check_mix, check_vocab, distill, pack
    from ..frontends.load import load_model, load_tokenizer
    from ..io.output import check_apart, check_output

    check_mix(args.alpha, args.temperature)
    child_dir = _folder(args.child, "--child")
    teacher_dir = _folder(args.teacher, "--teacher") if args.teacher else None
    out = Path(args.out)
    check_output(out, args.force, child_dir)
    if teacher_dir is not None:
        check_apart(out, teacher_dir)
    text = _text(args.data)
    tokenizer = load_tokenizer(str(child_dir)) or (
        load_tokenizer(str(teacher_dir)) if teacher_dir else None
    )
    if tokenizer is None:
        raise ModelLoadError(f"{child_dir} has no tokenizer files: save the tokenizer beside it")
    blocks = pack(tokenizer, text, args.block_size)  # refusals before any weight is read
    if teacher_dir is not None:  # on the meta device first: no weights read for a refusal
        check_vocab(load_model(str(child_dir), False)[0], load_model(str(teacher_dir), False)[0])
    child, _ = load_model(str(child_dir))
    teacher = load_model(str(teacher_dir))[0] if teacher_dir else None
    record = _record(child_dir)
    lr, weight_decay = _settings(args, record, child, teacher is not None)
    metrics = distill(
        child,
        tokenizer,
        blocks,
        out,
        teacher=teacher,
        alpha=args.alpha,
        temperature=args.temperature,
        batch_size=args.batch_size,
        steps=args.steps,
        lr=lr,
        weight_decay=weight_decay,
        force=args.force,
        seed=args.seed,
        record=record,
    )
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one report
        how = f"distilled from {teacher_dir}" if teacher_dir else "trained"
        print(
            f"{how}: {args.steps} steps on {metrics['processes']} process(es) at lr {lr:g}, "
            f"weight decay {weight_decay:g}; mean training loss {metrics['train_loss']:.3f}"
        )
        if "held_out_loss_after" in metrics:
            print(
                f"held-out loss ({metrics['held_out_blocks']} blocks at the end of "
                f"--data, not trained on): {metrics['held_out_loss_before']:.3f} -> "
                f"{metrics['held_out_loss_after']:.3f}"
            )
        print(f"wrote {out}")
        if args.onnx:
            from .export import run_export

            return run_export(
                argparse.Namespace(model=str(out), int8=False, force=False, gguf=False)
            )
    return 0
