"""The training hint `surgeon apply` prints for a causal LM: what
`benchmarks/convergence.py` chose on validation at the measured child size nearest to
this one (by the child's share of its parent's parameters), or nothing where no size
has been measured to the end (its search and every seed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["HINTS", "training_hint"]

HINTS = Path(__file__).with_name("training_hints.json")  # written by convergence.py --report


def training_hint(
    child_parameters: int, parent_parameters: int, out: str, parent: str, path: Path | None = None
) -> str | None:
    """The hint's text, or None when nothing measured backs one."""
    try:
        sizes = json.loads((path or HINTS).read_text())["sizes"]
    except (OSError, ValueError, KeyError):
        return None
    if not sizes or parent_parameters <= 0 or child_parameters <= 0:
        return None
    share = child_parameters / parent_parameters
    near = min(sizes, key=lambda s: abs(math.log(s["share"] / share)))
    plain, distilled = near["surgeon"], near["surgeon + distillation"]
    return (
        f"hint: train it with AdamW at lr {plain['lr']:g}, weight decay {plain['wd']:g}; "
        f"distilled from the parent at lr {distilled['lr']:g}, weight decay "
        f"{distilled['wd']:g}: surgeon distill --child {out} --teacher {parent} --data FILE "
        f"(chosen on validation in benchmarks/convergence.py for {near['parent']} -> "
        f"{near['parameters'] / 1e6:.1f} M parameters, {near['share']:.0%} of it; this child "
        f"is {share:.0%} of its parent; docs/results.md)"
    )
