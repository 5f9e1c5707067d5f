"""`python -m surgeon ...` is the `surgeon` command (also under torchrun)."""

from .cli import command

command()
