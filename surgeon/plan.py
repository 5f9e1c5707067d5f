"""The plan: what the child should be. `load_plan` accepts a dict, a YAML string or a path.

Short form (keys may be omitted; omitted target sizes keep the parent's):

    target: {num_layers: 10, hidden_size: 384, intermediate_size: 1024, num_heads: 6,
             num_kv_heads: 2}
    depth: middle           # middle | uniform | first | last | influence | [0, 1, 1, 2, ...]
    importance: activation  # activation | weight | uniform | first
    rescale: paper          # paper | none
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import PlanError

__all__ = ["Plan", "load_plan", "TARGETS", "IMPORTANCE", "RESCALE"]

TARGETS = (
    "num_layers",
    "hidden_size",
    "intermediate_size",
    "num_heads",
    "num_kv_heads",
    "head_dim",
)
DEPTH = ("middle", "uniform", "first", "last", "influence")
IMPORTANCE = ("activation", "weight", "uniform", "first")
RESCALE = ("paper", "none")
KEYS = ("target", "depth", "importance", "rescale", "calibration")
CALIBRATION = {"samples": 32, "seq_len": 256, "batch_size": 4}


@dataclass(frozen=True)
class Plan:
    target: Mapping[str, int] = field(default_factory=dict)
    depth: str | tuple[int, ...] = "middle"  # a strategy, or the parent layers to keep
    importance: str = "weight"
    rescale: str = "paper"
    calibration: Mapping[str, int] = field(default_factory=lambda: dict(CALIBRATION))


def load_plan(plan: Any) -> Plan:
    """Read and check a plan; any problem is a one-line `PlanError` naming key and value."""
    if isinstance(plan, Plan):
        return plan
    if isinstance(plan, (str, Path)):
        plan = _read_yaml(plan)
    if plan is None:
        plan = {}
    if not isinstance(plan, Mapping):
        raise PlanError(f"a plan is a mapping of keys ({', '.join(KEYS)}), not {_kind(plan)}")
    for key in plan:
        if key not in KEYS:
            raise PlanError(f"unknown key {key!r} in the plan; allowed: {', '.join(KEYS)}")
    target = plan.get("target") or {}
    if not isinstance(target, Mapping):
        raise PlanError(f"target must be a mapping of sizes, not {_kind(target)}")
    for key, value in target.items():
        if key not in TARGETS:
            raise PlanError(f"unknown target {key!r}; allowed: {', '.join(TARGETS)}")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise PlanError(f"target.{key} must be a positive integer, got {value!r}")
    importance = plan.get("importance", "weight")
    if importance not in IMPORTANCE:
        raise PlanError(
            f"importance {importance!r} is not available; choose one of: {', '.join(IMPORTANCE)}"
        )
    rescale = plan.get("rescale", "paper")
    if rescale not in RESCALE:
        raise PlanError(f"rescale {rescale!r} is not known; choose one of: {', '.join(RESCALE)}")
    depth = _depth(plan.get("depth", "middle"))
    return Plan(dict(target), depth, importance, rescale, _calibration(plan.get("calibration")))


def _calibration(settings: Any) -> dict[str, int]:
    """How much text to read when calibration comes from text: samples x seq_len tokens."""
    if settings is None:
        return dict(CALIBRATION)
    if not isinstance(settings, Mapping):
        raise PlanError(
            f"calibration must be a mapping of {', '.join(CALIBRATION)}, not {_kind(settings)}"
        )
    out = dict(CALIBRATION)
    for key, value in settings.items():
        if key not in CALIBRATION:
            raise PlanError(f"unknown key calibration.{key}; allowed: {', '.join(CALIBRATION)}")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise PlanError(f"calibration.{key} must be a positive integer, got {value!r}")
        out[key] = value
    return out


def _depth(depth: Any) -> str | tuple[int, ...]:
    """A strategy name, or the parent's layers to keep in order (a repeat duplicates)."""
    if isinstance(depth, str):
        if depth not in DEPTH:
            raise PlanError(
                f"depth {depth!r} is not known; choose one of: {', '.join(DEPTH)}, "
                "or a list of the layers to keep"
            )
        return depth
    if (
        isinstance(depth, (list, tuple))
        and depth
        and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in depth)
    ):
        if list(depth) != sorted(depth):
            raise PlanError(
                f"depth {list(depth)}: layers keep the parent's order (list them sorted; "
                "a repeated index duplicates that layer)"
            )
        return tuple(depth)
    raise PlanError(
        f"depth must be one of {', '.join(DEPTH)} or a non-empty list of layer indices, "
        f"not {_kind(depth)}"
    )


def _read_yaml(source: str | Path) -> Any:
    text = str(source)
    path = Path(text) if "\n" not in text and len(text) < 4096 else None
    try:
        if path is not None and (path.suffix in (".yaml", ".yml", ".json") or path.exists()):
            if not path.is_file():
                raise PlanError(f"plan file {text} does not exist")
            text = path.read_text()
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PlanError(f"the plan is not valid YAML: {str(e).splitlines()[0]}") from e
    except OSError as e:
        raise PlanError(f"cannot read plan {text}: {e.strerror}") from e


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:80]
