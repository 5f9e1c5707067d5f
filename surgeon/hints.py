"""The training hint `surgeon apply` prints for a causal LM: what
`benchmarks/convergence.py` chose on validation at the measured child size nearest to
this one (by the child's share of its parent's parameters), for plain training and for
distillation each from the nearest size that measured it to the end (its search and
every seed); nothing for either where no such size is within a factor of `NEAR` of this
child's share."""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["FALLBACK", "HINTS", "recommended", "training_hint"]

FALLBACK = {"lr": 1e-3, "wd": 0.1}  # `distill`'s settings where nothing is measured

HINTS = Path(__file__).with_name("training_hints.json")  # written by convergence.py --report
NEAR = 2.0  # a measured size stands for children whose share is within this factor of its


PLAIN, DISTILLED = "surgeon", "surgeon + distillation"  # the inits measured


def _nearest(child_parameters: int, parent_parameters: int, init: str, path: Path | None = None):
    """The measured size nearest this child's share of its parent among those that
    measured `init` to the end (None: none within a factor of `NEAR`)."""
    try:
        sizes = [s for s in json.loads((path or HINTS).read_text())["sizes"] if init in s]
    except (OSError, ValueError, KeyError, TypeError):
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
    init = DISTILLED if distilled else PLAIN
    near = _nearest(child_parameters, parent_parameters, init, path)
    if near is None:
        return FALLBACK, "no measured recommendation for this size yet (docs/results.md)"
    return near[init], f"chosen on validation in benchmarks/convergence.py for {_size(near)}"


def training_hint(
    child_parameters: int, parent_parameters: int, out: str, parent: str, path: Path | None = None
) -> str | None:
    """The hint's text, or None when nothing measured backs one: plain and distilled
    training, each from the nearest size that measured it."""
    plain = _nearest(child_parameters, parent_parameters, PLAIN, path)
    distilled = _nearest(child_parameters, parent_parameters, DISTILLED, path)
    if plain is None and distilled is None:
        return None
    parts, sources = [], []
    if plain is not None:
        parts.append(f"train it with AdamW at lr {plain[PLAIN]['lr']:g}, weight decay "
                     f"{plain[PLAIN]['wd']:g}")  # fmt: skip
        sources.append(_size(plain))
    if distilled is not None:
        chosen = distilled[DISTILLED]
        parts.append(
            f"distilled from the parent at lr {chosen['lr']:g}, weight decay {chosen['wd']:g}: "
            f"surgeon distill --child {out} --teacher {parent} --data FILE"
        )
        if plain is None or distilled.get("size") != plain.get("size"):
            sources.append(_size(distilled))
    missing = "plain" if plain is None else "distilled" if distilled is None else None
    share = child_parameters / parent_parameters
    return (
        f"hint: {'; '.join(parts)} (chosen on validation in benchmarks/convergence.py for "
        f"{' and '.join(sources)}; this child is {share:.0%} of its parent"
        f"{f'; {missing}: not measured near this size yet' if missing else ''}; "
        "docs/results.md)"
    )


def _size(near: dict) -> str:
    share = f"{near['share']:.0%}"
    return f"{near['parent']} -> {near['parameters'] / 1e6:.1f} M parameters, {share} of it"
