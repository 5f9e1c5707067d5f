"""The `surgeon` command line: `main` parses the arguments and runs a command; each
expected failure is one line on stderr and exit code 2. `command` is the executable:
`main`, then an exit without the interpreter's teardown."""

from .main import command, main

__all__ = ["command", "main"]
