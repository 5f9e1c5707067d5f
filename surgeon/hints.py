"""The training hint `surgeon apply` prints for a causal LM: what
`benchmarks/convergence.py` chose on validation at the measured child size nearest to
this one (by the child's share of its parent's parameters), or nothing where no size
has been measured to the end (its search and every seed) or none is within a factor of
`NEAR` of this child's share."""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["FALLBACK", "HINTS", "recommended", "training_hint"]

FALLBACK = {"lr": 1e-3, "wd": 0.1}  # `distill`'s settings where nothing is measured

HINTS = Path(__file__).with_name("training_hints.json")  # written by convergence.py --report
NEAR = 2.0  # a measured size stands for children whose share is within this factor of its


def _nearest(child_parameters: int, parent_parameters: int, path: Path | None = None):
    """The measured size nearest this child's share of its parent (None: none)."""
    try:
        sizes = json.loads((path or HINTS).read_text())["sizes"]
    except (OSError, ValueError, KeyError):
        return None
    if not sizes or parent_parameters <= 0 or child_parameters <= 0:
        return None
    share = child_parameters / parent_parameters
    near = min(sizes, key=lambda s: abs(math.log(s["share"] / share)))
    return near if abs(math.log(near["share"] / share)) <= math.log(NEAR) else None


def recommended(
    child_parameters: int, parent_parameters: int, distilled: bool, path: Path | None = None
) -> tuple[dict, str]:
    """`distill`'s lr and weight decay (`{"lr", "wd"}`) and where they come from: the
    hint's measurement at the nearest size, or `FALLBACK` where none is measured."""
    near = _nearest(child_parameters, parent_parameters, path)
    if near is None:
        return FALLBACK, "no measured recommendation for this size yet (docs/results.md)"
    chosen = near["surgeon + distillation" if distilled else "surgeon"]
    return chosen, (
        f"chosen on validation in benchmarks/convergence.py for {near['parameters'] / 1e6:.1f} M "
        f"parameters, {near['share']:.0%} of {near['parent']}"
    )


def training_hint(
    child_parameters: int, parent_parameters: int, out: str, parent: str, path: Path | None = None
) -> str | None:
    """The hint's text, or None when nothing measured backs one."""
    near = _nearest(child_parameters, parent_parameters, path)
    if near is None:
        return None
    share = child_parameters / parent_parameters
    plain, distilled = near["surgeon"], near["surgeon + distillation"]
    return (
        f"hint: train it with AdamW at lr {plain['lr']:g}, weight decay {plain['wd']:g}; "
        f"distilled from the parent at lr {distilled['lr']:g}, weight decay "
        f"{distilled['wd']:g}: surgeon distill --child {out} --teacher {parent} --data FILE "
        f"(chosen on validation in benchmarks/convergence.py for {near['parent']} -> "
        f"{near['parameters'] / 1e6:.1f} M parameters, {near['share']:.0%} of it; this child "
        f"is {share:.0%} of its parent; docs/results.md)"
    )
