"""The `surgeon` command line. Every expected failure is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

from ..errors import SurgeonError, first_line

__all__ = ["command", "main"]

DEVICE_HELP = "where calibration runs the layers: cpu (default), cuda, cuda:1, ..."


def _cmd_inspect(args: argparse.Namespace) -> int:
    from ..api import inspect_source

    report = inspect_source(
        args.model, calibration=args.calibration, frontend=args.frontend, device=args.device,
        notice=lambda line: print(f"surgeon: {line}", file=sys.stderr), cache=not args.no_cache,
    )  # fmt: skip
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.render(args.groups))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from ..plan import load_plan

    plan = load_plan(args.plan)
    if not args.model:
        print(f"{args.plan}: valid plan ({plan.describe()})")
        return 0
    from ..api import dry_run
    from ..frontends.load import has_tokenizer, load_model

    model, inputs = load_model(args.model, weights=False)  # structure only: on meta
    child = dry_run(model, plan, inputs, data=has_tokenizer(args.model))
    print(f"{args.plan}: valid for {type(model).__name__}: child {child}")
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from ..plan import SCHEMA

    print(json.dumps(SCHEMA, indent=2))
    return 0


def _cmd_apply(args: argparse.Namespace) -> int:
    from .apply import run_apply

    return run_apply(args)


class _WithDefaults(argparse.HelpFormatter):
    """Help that ends each option's line with its default, where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if action.option_strings and not (
            default is None or default is False or default == argparse.SUPPRESS
        ):
            text += " (default: %(default)s)"
        return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="surgeon",
        description="Initialize a small transformer from a larger pretrained one.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"surgeon {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "inspect", help="trace a model and print its layers, widths, heads and groups"
    )
    model_help = "a Hugging Face folder, or 'module:factory' / 'file.py:factory'"
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("--frontend", default="auto", choices=["auto", "export", "fx"])
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--groups", action="store_true", help="list every group of axes by its id")
    p.add_argument(
        "--calibration",
        help="a text file: also measure residual ratios and "
        "neuron importance (needs the model folder's tokenizer)",
    )
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="with --calibration: neither reuse nor keep the folder's analysis (kept under "
        "$SURGEON_CACHE or ~/.cache/surgeon)",
    )
    p.set_defaults(run=_cmd_inspect)

    p = sub.add_parser("apply", help="build a smaller model from a plan and write it")
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("--plan", required=True, help="a plan file (YAML), see docs/plan.md")
    p.add_argument("--out", required=True, help="the folder to write (must not exist)")
    p.add_argument("--calibration", help="a text file for activation importance / influence")
    p.add_argument("--device", help=DEVICE_HELP + " (overrides the plan's device:)")
    p.add_argument(
        "--onnx",
        action="store_true",
        help="also write model.onnx, checked (a causal LM: a decoder with a KV cache)",
    )
    p.add_argument(
        "--onnx-int8", action="store_true", help="--onnx, and a dynamic int8 model.int8.onnx"
    )
    p.add_argument(
        "--gguf", action="store_true", help="also write model.gguf for llama.cpp, checked"
    )
    from ..emit.gguf import TYPES

    p.add_argument("--gguf-type", default="f16", choices=TYPES, help="the GGUF's weights")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument(
        "--nas",
        action="store_true",
        help="write the child as a Nemotron-NAS folder (DeciLM block_configs; layout: "
        "per_layer's widths, drop_blocks' no-op blocks), run in llama.cpp and compared "
        "with the child",
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="neither reuse nor keep the folder's analysis and what earlier plans measured "
        "on it (scores, influence; kept under $SURGEON_CACHE or ~/.cache/surgeon)",
    )
    p.set_defaults(run=_cmd_apply)

    from .distill import add_parser as add_distill
    from .export import add_parsers

    add_parsers(sub)
    add_distill(sub)

    p = sub.add_parser("validate", help="check a plan (and, with --model, its targets)")
    p.add_argument("plan", help="a plan file (YAML)")
    p.add_argument("--model", help=model_help + " (checks the targets; cuts nothing)")
    p.set_defaults(run=_cmd_validate)

    p = sub.add_parser("schema", help="print the JSON Schema of plans")
    p.set_defaults(run=_cmd_schema)
    for command in sub.choices.values():  # `--help` shows each option's default
        command.formatter_class = _WithDefaults
    return parser


def _close_bars() -> None:
    """Close the progress bars an error interrupted, so its line starts a line."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except SurgeonError as e:
        _close_bars()
        print(f"surgeon: error: {first_line(e, 1000)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("surgeon: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # SIGTERM / SIGHUP while writing (surgeon.io.output)
        if isinstance(e.code, int) and e.code > 128:
            _close_bars()
            print(f"surgeon: stopped by signal {e.code - 128}: nothing written", file=sys.stderr)
        raise
    except Exception as e:  # a bug in surgeon: still one line, traceback on request
        if os.environ.get("SURGEON_DEBUG"):
            raise
        _close_bars()
        print(
            f"surgeon: internal error: {type(e).__name__}: {first_line(e)} "
            "(set SURGEON_DEBUG=1 for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 3


def command() -> None:
    """The `surgeon` executable (and `python -m surgeon`): `main`, then the exit."""
    _exit(main())


def _exit(code: int | None) -> None:
    """Exit with `code` without the interpreter's teardown: the exit handlers run and the
    output is flushed (Python's streams and C's, which native libraries print to), but
    the thousands of modules torch and transformers load are not taken apart one by one
    (a noticeable share of a short command's time, for nothing); a file left open is
    not flushed by it (surgeon's writers close theirs). A failed flush other
    than a reader gone (a full disk) exits 120, as Python's own exit does. A normal exit
    where something may still need the teardown: a thread that is not a daemon, a
    process group of torch.distributed, a profiler, tracer or monitoring tool
    (`python -m cProfile` writes its file after the command returns)."""
    import atexit
    import threading

    distributed = sys.modules.get("torch.distributed")
    grouped = (
        distributed is not None and distributed.is_available() and distributed.is_initialized()
    )
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    monitoring = getattr(sys, "monitoring", None)  # Python 3.12 and later
    watched = monitoring is not None and any(monitoring.get_tool(i) for i in range(6))
    if grouped or others or watched or sys.getprofile() or sys.gettrace():
        sys.exit(code)
    atexit._run_exitfuncs()  # noqa: SLF001 - what the teardown would run first
    code = code or 0
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:  # the reader is gone: nothing more to say
            pass
        except OSError:
            code = code or 120
        except (AttributeError, ValueError):  # no stream, or a closed one
            pass
    with contextlib.suppress(Exception):  # C's buffers (no C library: nothing buffered)
        import ctypes

        ctypes.CDLL(None).fflush(None)
    os._exit(code)


if __name__ == "__main__":
    command()
