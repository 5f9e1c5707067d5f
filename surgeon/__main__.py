"""`python -m surgeon ...` is the `surgeon` command (also under torchrun)."""

import sys

from .cli import main

sys.exit(main())
