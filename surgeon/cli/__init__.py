"""The `surgeon` command line: `main` parses the arguments and runs a command; each
expected failure is one line on stderr and exit code 2."""

from .main import command, main

__all__ = ["command", "main"]
