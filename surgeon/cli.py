"""The `surgeon` command line. Every expected failure is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import SurgeonError, first_line

__all__ = ["main"]


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .loading import load_model
    from .report import inspect

    model, inputs = load_model(args.model)
    report = inspect(model, inputs, frontend=args.frontend)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.render())
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="surgeon",
        description="Initialize a small transformer from a larger pretrained one.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "inspect", help="trace a model and print its layers, widths, heads and groups"
    )
    p.add_argument(
        "--model",
        required=True,
        help="a Hugging Face folder, or 'module:factory' / 'file.py:factory'",
    )
    p.add_argument("--frontend", default="auto", choices=["auto", "export", "fx"])
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_cmd_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except SurgeonError as e:
        print(f"surgeon: error: {first_line(e, 1000)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("surgeon: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug in surgeon: still one line, traceback on request
        if os.environ.get("SURGEON_DEBUG"):
            raise
        print(
            f"surgeon: internal error: {type(e).__name__}: {first_line(e)} "
            "(set SURGEON_DEBUG=1 for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
