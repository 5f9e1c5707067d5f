"""The plan: what the child should be. `load_plan` accepts a dict, a YAML string or a path.

Short form (every key may be omitted; omitted target sizes keep the parent's):

    target: {num_layers: 10, hidden_size: 384, intermediate_size: 1024, num_heads: 6,
             num_kv_heads: 2}
    recipe: auto            # auto | surgeon | paper | weight-selection | data-free
    depth: influence        # middle | uniform | first | last | influence | [0, 1, 1, 2, ...]
    importance: activation  # activation | weight | uniform | first
    rescale: paper          # paper | none
    calibration: {samples: 32, seq_len: 256, batch_size: 4}
    emit: auto              # auto | hf | graph
    device: cpu             # where calibration runs the layers: cpu | cuda | cuda:1 ...

Long form: the same surgery as an explicit list of passes, in pipeline order:

    passes:
      - score: {method: activation}
      - depth: {strategy: middle, num_layers: 10}
      - permute: {}
      - slice: {hidden_size: 384, intermediate_size: 1024, num_heads: 6, num_kv_heads: 2}
      - rescale: {method: paper}

The plan is checked against `SCHEMA` (a JSON Schema, written to docs/plan.schema.json by
`surgeon schema`); every problem is one `PlanError` line naming the key, the value
and what is allowed.
"""

from __future__ import annotations

import decimal
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .errors import PlanError
from .passes import PASSES
from .passes.blocks import COUNTS as BLOCK_COUNTS
from .passes.depth import STRATEGIES
from .passes.rescale import METHODS as RESCALE_METHODS
from .passes.score import EXPERTS
from .passes.score import METHODS as SCORE_METHODS
from .passes.slice import SIZES

__all__ = ["Plan", "load_plan", "SCHEMA", "PASS_ORDER", "RECIPES"]

# target keys that state what must fit (surgeon/budget.py)
BUDGETS = ("parameters", "active_parameters", "memory", "latency")
# The vocabulary is the passes' own: each pass names what it accepts.
WIDTH = SIZES
TARGETS = ("num_layers", *WIDTH)
DEPTH = STRATEGIES
IMPORTANCE = SCORE_METHODS
EXPERT_CRITERIA = EXPERTS
RESCALE = RESCALE_METHODS
EMIT = ("auto", "hf", "graph")
LAYOUT = ("uniform", "per_layer", "per_layer_heads")
CALIBRATION = {"samples": 32, "seq_len": 256, "batch_size": 4}
PASS_ORDER = ("score", "depth", "permute", "slice", "rescale")
# Named defaults for importance, depth and rescale; keys the plan states win. What each
# is worth in training is measured by benchmarks/convergence.py (docs/results.md).
RECIPES = {
    "surgeon": {"importance": "activation", "depth": "influence", "rescale": "paper"},
    "paper": {"importance": "activation", "depth": "middle", "rescale": "paper"},
    "weight-selection": {"importance": "uniform", "depth": "last", "rescale": "none"},
    "data-free": {"importance": "weight", "depth": "middle", "rescale": "paper"},
}

# Hugging Face config names a plan may use for its sizes (read as the plan's own names).
ALIASES = {
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "num_key_value_heads": "num_kv_heads",
    "num_local_experts": "num_experts",
    "n_routed_experts": "num_experts",
}

_SIZE = {"type": "integer", "minimum": 1}
_DEPTH = PASSES["depth"].schema["strategy"]


def _object(properties: dict, description: str = "") -> dict:
    out = {"type": "object", "additionalProperties": False, "properties": properties}
    return {**out, "description": description} if description else out


SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "surgeon plan",
    **_object(
        {
            "target": _object(
                {
                    **{k: _SIZE for k in TARGETS},
                    "parameters": {
                        **_SIZE,
                        "description": "a budget: the child's parameter count at most (each "
                        "tied tensor once); the sizes not stated are chosen to fit",
                    },
                    "active_parameters": {
                        **_SIZE,
                        "description": "a budget for mixture-of-experts models: the "
                        "parameters one token uses at most (each routed expert's FFN weights "
                        "counted at top-k / the experts kept); the sizes not stated are "
                        "chosen to fit",
                    },
                    "drop_blocks": _object(
                        BLOCK_COUNTS,
                        "residual blocks removed (x + f(x) becomes x) in the layers the child "
                        "keeps: how many attention and MLP blocks (those that matter least: "
                        "the smallest ||f(x)|| / ||x + f(x)|| on calibration data where the "
                        "importance reads data, else nearest the middle of the stack), or "
                        "the parent layers whose block goes; a graph child",
                    ),
                    "memory": {
                        **_object(
                            {
                                "bytes": _SIZE,
                                "context": _SIZE,
                                "batch": _SIZE,
                                "dtype": {"enum": ["bfloat16", "float16", "float32"]},
                            },
                            "a budget: bytes of the weights plus a KV cache of `context` "
                            "tokens for `batch` sequences, all in `dtype` (bfloat16 unless "
                            "stated); the sizes not stated are chosen to fit",
                        ),
                        "required": ["bytes", "context"],
                    },
                    "latency": {
                        **_object(
                            {
                                "ms_per_token": {"type": "number", "exclusiveMinimum": 0},
                                "context": _SIZE,
                                "batch": _SIZE,
                            },
                            "a budget: milliseconds per generated token of the child's ONNX "
                            "decoder in onnxruntime on this machine, after `context` tokens "
                            "(128 unless stated) for `batch` sequences (1), measured on "
                            "candidate children; a causal language model's",
                        ),
                        "required": ["ms_per_token"],
                    },
                },
                "sizes of the child",
            ),
            "stacks": {
                "type": "object",
                "additionalProperties": _object({k: _SIZE for k in TARGETS}),
                "description": "sizes for one stack of layers (an encoder-decoder's "
                "model.decoder.layers, a vision tower), by module path, over target's",
            },
            "depth": {
                **_DEPTH,
                "description": "which layers to keep (a list: in order; a repeat duplicates)",
            },
            "importance": {"enum": list(IMPORTANCE)},
            "expert_importance": {
                "enum": list(EXPERT_CRITERIA),
                "description": "routed experts under activation importance: reap (router-"
                "weighted output norm) or frequency",
            },
            "rescale": {"enum": list(RESCALE)},
            "calibration": _object({k: _SIZE for k in CALIBRATION}, "text read for calibration"),
            "emit": {"enum": list(EMIT)},
            "layout": {
                "enum": list(LAYOUT),
                "description": "uniform: every layer one FFN width; per_layer: the dense FFN "
                "neurons dealt to the layers by importance (a graph child); per_layer_heads: "
                "the key/value groups too",
            },
            "device": {
                "type": "string",
                "description": "where calibration runs the parent's layers: cpu, cuda, ...",
            },
            "recipe": {
                "enum": ["auto", *RECIPES],
                "description": "defaults for importance, depth and rescale; auto: surgeon "
                "with calibration data, else data-free",
            },
            "passes": {
                "type": "array",
                "description": "long form: the passes in pipeline order",
                "items": {
                    "type": "object",
                    "minProperties": 1,
                    "maxProperties": 1,
                    "additionalProperties": False,
                    "properties": {name: _object(p.schema) for name, p in PASSES.items()},
                },
            },
        }
    ),
}


@dataclass(frozen=True)
class Plan:
    """A checked plan. `importance`, `depth` and `rescale` are None where the plan leaves
    them to its recipe; `resolved()` fills them in. A long-form plan lists its `passes`
    (name, parameters) and leaves the short-form fields empty; `steps()` gives the passes
    of either form."""

    target: Mapping[str, int] = field(default_factory=dict)
    stacks: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # per stack's
    depth: str | tuple[int, ...] | None = None  # a strategy, or the parent layers to keep
    importance: str | None = None
    expert_importance: str = "reap"
    rescale: str | None = None
    calibration: Mapping[str, int] = field(default_factory=lambda: dict(CALIBRATION))
    emit: str = "auto"
    device: str = "cpu"  # where calibration runs the parent's layers
    recipe: str = "auto"
    passes: tuple[tuple[str, Mapping[str, Any]], ...] = ()  # the long form, as written
    budget: Mapping[str, int] = field(default_factory=dict)  # target.parameters, unsolved
    layout: str = "uniform"  # per_layer: dense FFN widths dealt by importance
    # target.drop_blocks: kind ("attention", "mlp") -> how many, or the parent layers
    drop_blocks: Mapping[str, int | tuple[int, ...]] = field(default_factory=dict)

    def resolved(self, data: bool) -> Plan:
        """The plan with its recipe's defaults; `data`: whether calibration data can be
        had (a calibration argument, or a tokenizer for text), which `auto` needs for the
        `surgeon` recipe (else it is `data-free`). A long-form plan has nothing to fill."""
        if self.passes:
            return self
        name = self.recipe if self.recipe != "auto" else ("surgeon" if data else "data-free")
        recipe = RECIPES[name]
        return replace(
            self,
            importance=self.importance or recipe["importance"],
            depth=self.depth or recipe["depth"],
            rescale=self.rescale or recipe["rescale"],
            recipe=name,
        )

    @property
    def needs_resolving(self) -> bool:
        return not self.passes and None in (self.importance, self.depth, self.rescale)

    def steps(self) -> list[tuple[str, dict[str, Any]]]:
        """The passes of the (resolved) plan in pipeline order, each with its parameters.
        The short form runs all five; a long-form plan runs the passes it lists. Slicing
        keeps evenly spaced positions when the scores are `uniform`."""
        if self.needs_resolving:
            raise ValueError("resolve the plan first: plan.resolved(data)")
        if self.passes:
            steps = [(name, dict(params)) for name, params in self.passes]
        else:
            depth: dict[str, Any] = {"strategy": self.depth}
            if "num_layers" in self.target:
                depth["num_layers"] = self.target["num_layers"]
            width: dict[str, Any] = {k: v for k, v in self.target.items() if k != "num_layers"}
            deep = {k: v["num_layers"] for k, v in self.stacks.items() if "num_layers" in v}
            if deep:
                depth["stacks"] = deep
            wide = {
                k: {s: n for s, n in v.items() if s != "num_layers"} for k, v in self.stacks.items()
            }
            if any(wide.values()):
                width["stacks"] = {k: v for k, v in wide.items() if v}
            if self.drop_blocks:
                depth["blocks"] = dict(self.drop_blocks)
                depth["block_measure"] = "ratio" if self.importance == "activation" else "middle"
            steps = [
                ("score", {"method": self.importance, "experts": self.expert_importance}),
                ("depth", depth),
                ("permute", {}),
                ("slice", width),
                ("rescale", {"method": self.rescale}),
            ]
        if self.layout != "uniform":
            dealt = {"per_layer": True, "per_layer_heads": self.layout == "per_layer_heads"}
            steps = [(n, {**p, **dealt} if n == "slice" else p) for n, p in steps]
        if dict(steps).get("score", {}).get("method") == "uniform":
            steps = [(n, {**p, "evenly": True} if n == "slice" else p) for n, p in steps]
        return steps

    @property
    def sizes(self) -> dict[str, int]:
        """The target sizes, from either form (empty: the parent's sizes)."""
        if not self.passes:
            return {**self.target, **({"stacks": dict(self.stacks)} if self.stacks else {})}
        steps = dict(self.passes)
        sizes = {k: v for k, v in steps.get("slice", {}).items() if k in WIDTH}
        if "num_layers" in steps.get("depth", {}):
            sizes["num_layers"] = steps["depth"]["num_layers"]
        stacks: dict[str, dict] = {}
        for name, n in steps.get("depth", {}).get("stacks", {}).items():
            stacks.setdefault(name, {})["num_layers"] = n
        for name, v in steps.get("slice", {}).get("stacks", {}).items():
            stacks.setdefault(name, {}).update(v)
        return {**sizes, **({"stacks": stacks} if stacks else {})}

    def describe(self) -> str:
        """One line: the target sizes and how the child is chosen."""
        sizes = self.sizes
        stacks = sizes.pop("stacks", {})
        target = ", ".join(
            [f"{k} {v}" for k, v in sizes.items()]
            + [
                f"{name}: " + " ".join(f"{k} {v}" for k, v in s.items())
                for name, s in stacks.items()
            ]
        )
        if self.budget:
            target = ", ".join([_budget_text(self.budget), target])
        target = target.strip(", ") or "parent's sizes"
        if self.passes:
            return f"{target}; passes " + " -> ".join(name for name, _ in self.passes)
        chosen = [
            f"{k} {v}"
            for k in ("depth", "importance", "rescale")
            if (v := getattr(self, k)) is not None
        ]
        layout = [f"layout {self.layout}"] if self.layout != "uniform" else []
        blocks = [
            f"drop {k} blocks " + (", ".join(map(str, v)) if isinstance(v, tuple) else str(v))
            for k, v in self.drop_blocks.items()
        ]
        return "; ".join([target, f"recipe {self.recipe}", *chosen, *layout, *blocks])


def _budget_text(budget: Mapping) -> str:
    if "parameters" in budget:
        return f"parameters at most {budget['parameters']:,}"
    if "active_parameters" in budget:
        return f"active parameters at most {budget['active_parameters']:,}"
    if "latency" in budget:
        t = budget["latency"]
        return (
            f"latency at most {t['ms_per_token']:g} ms per token (ONNX decoder in onnxruntime "
            f"here, after {t.get('context', 128):,} tokens x {t.get('batch', 1)})"
        )
    m = budget["memory"]
    return (
        f"memory at most {m['bytes']:,} bytes (weights and a KV cache of {m['context']:,} "
        f"tokens x {m.get('batch', 1)}, {m.get('dtype', 'bfloat16')})"
    )


def load_plan(plan: Any) -> Plan:
    """Read and check a plan (a Plan, dict, YAML string or path to a YAML file)."""
    if isinstance(plan, Plan):
        return plan
    if isinstance(plan, (str, Path)):
        plan = _read_yaml(plan)
    _check_size(plan)
    if plan is None or (isinstance(plan, Mapping) and not plan):
        raise PlanError(
            "the plan is empty: say what the child should be (e.g. target: {num_layers: 8}, "
            "see docs/plan.md)"
        )
    if not isinstance(plan, Mapping):
        raise PlanError(
            f"a plan is a mapping of keys ({', '.join(SCHEMA['properties'])}), not {_kind(plan)}"
        )
    plan = _aliased(plan)
    errors = sorted(jsonschema.Draft202012Validator(SCHEMA).iter_errors(plan), key=_depth_first)
    if errors:
        raise PlanError(_message(errors[0]))
    plan = _integers(plan)
    _check_heads(plan)
    settings = {
        "calibration": {**CALIBRATION, **(plan.get("calibration") or {})},
        "emit": plan.get("emit", "auto"),
        "device": plan.get("device", "cpu"),
    }
    if "passes" in plan:
        passes = _passes(plan)
        if any(v for k, v in dict(passes).get("depth", {}).get("blocks", {}).items()):
            _graph_for_blocks(settings)
        return Plan(passes=passes, **settings)
    target = dict(plan.get("target") or {})
    budget = {k: target.pop(k) for k in BUDGETS if k in target}
    if len(budget) > 1:
        raise PlanError(
            "target: one budget at a time (parameters, active_parameters, memory or latency), "
            "not several"
        )
    if budget and plan.get("stacks"):
        raise PlanError(
            "target.parameters: budgets are solved for one stack of layers; give each "
            "stack's sizes under stacks instead"
        )
    drop = {
        k: tuple(sorted(set(v))) if isinstance(v, list) else v
        for k, v in (target.pop("drop_blocks", None) or {}).items()
        if v != 0
    }
    if drop and plan.get("stacks"):
        raise PlanError(
            "target.drop_blocks: blocks are dropped in models with one stack of layers; "
            "this plan names stacks"
        )
    if drop:
        _graph_for_blocks(settings)
    layout = plan.get("layout", "uniform")
    if "latency" in budget and (layout != "uniform" or drop):
        raise PlanError(
            "target.latency is measured on a child of one width per size, its Hugging Face "
            "class exported to ONNX: not with a per-layer layout or drop_blocks (state "
            "target.parameters or memory for those)"
        )
    if layout != "uniform":
        if settings["emit"] == "hf":
            raise PlanError(
                f"layout: {layout} gives layers of different sizes, which a Hugging Face "
                "config cannot state: use emit: graph or auto (a graph child)"
            )
        settings["emit"] = "graph"
    return Plan(
        target=target,
        budget=budget,
        layout=layout,
        drop_blocks=drop,
        stacks={k: dict(v or {}) for k, v in (plan.get("stacks") or {}).items()},
        depth=_depth(plan.get("depth")),
        importance=plan.get("importance"),
        expert_importance=plan.get("expert_importance", "reap"),
        rescale=plan.get("rescale"),
        recipe=plan.get("recipe", "auto"),
        **settings,
    )


def _graph_for_blocks(settings: dict) -> None:
    """Dropped blocks make a graph child; `PlanError` where the plan insists on `hf`."""
    if settings["emit"] == "hf":
        raise PlanError(
            "target.drop_blocks: a Hugging Face config states every layer with its "
            "attention and MLP, so it cannot hold dropped blocks: use emit: graph or "
            "auto (a graph child; surgeon apply --nas writes it as a Nemotron-NAS folder)"
        )
    settings["emit"] = "graph"


def _integers(value: Any) -> Any:
    """`value` with the whole numbers YAML or JSON wrote as floats (`384.0`, which the
    schema's `integer` accepts) made ints: every number a plan holds is a count."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {k: _integers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integers(v) for v in value]
    return value


def _aliased(plan: Mapping) -> Mapping:
    """The plan with the Hugging Face config names of sizes (`ALIASES`) in `target` and
    `stacks` read as the plan's own; `PlanError` where both names are given."""

    def renamed(sizes: Any, where: str) -> Any:
        if not isinstance(sizes, Mapping):
            return sizes
        out = dict(sizes)
        for alias, name in ALIASES.items():
            if alias in out:
                if name in out:
                    raise PlanError(
                        f"{where}: {alias} and {name} are one size (the config's name and "
                        f"the plan's): give it once"
                    )
                out[name] = out.pop(alias)
        return out

    plan = dict(plan)
    if "target" in plan:
        plan["target"] = renamed(plan["target"], "target")
    if isinstance(plan.get("stacks"), Mapping):
        plan["stacks"] = {k: renamed(v, f"stacks.{k}") for k, v in plan["stacks"].items()}
    return plan


def _check_heads(plan: Mapping) -> None:
    """`PlanError` where a plan's own sizes break the head rule: query heads in whole
    key/value groups (num_heads a multiple of num_kv_heads), naming the sizes nearby that
    keep it."""
    sizes = [("target", plan.get("target") or {})]
    sizes += [(f"stacks.{k}", v or {}) for k, v in (plan.get("stacks") or {}).items()]
    for where, s in sizes:
        heads, kv = s.get("num_heads"), s.get("num_kv_heads")
        if heads is None or kv is None or heads % kv == 0:
            continue
        near = sorted({max(kv, heads - heads % kv), heads - heads % kv + kv} - {0})
        groups = [g for g in range(1, heads + 1) if heads % g == 0]
        fewer = max((g for g in groups if g < kv), default=1)
        more = min((g for g in groups if g > kv), default=heads)
        kvs = " or ".join(map(str, sorted({fewer, more})))
        raise PlanError(
            f"{where}.num_heads = {heads} does not divide into num_kv_heads = {kv} groups "
            f"(query heads share key/value heads in whole groups): num_heads "
            f"{' or '.join(map(str, near))}, or num_kv_heads {kvs}"
        )


def _depth(depth: Any) -> Any:
    """A list of layers as a tuple, checked to keep the parent's order."""
    if not isinstance(depth, list):
        return depth
    if depth != sorted(depth):
        raise PlanError(
            f"depth {depth}: layers keep the parent's order (list them sorted; a repeated "
            "index duplicates that layer)"
        )
    return tuple(depth)


def _passes(plan: Mapping) -> tuple[tuple[str, Mapping[str, Any]], ...]:
    """The long form's passes, checked: each at most once, in the pipeline's order, with a
    permutation between scoring and slicing (slice keeps the leading positions of the
    permuted order). A pass left out does nothing (no score: the order is kept; no
    rescale: weights are copied as they are)."""
    mixed = [
        k for k in ("target", "stacks", "depth", "importance", "rescale", "layout") if k in plan
    ]
    if mixed:
        raise PlanError(
            f"the plan has both passes and {', '.join(mixed)}: use the short form or the long "
            "form (a list of passes), not both"
        )
    if "recipe" in plan:
        raise PlanError("the long form lists its passes: a recipe has nothing to fill in")
    names = [next(iter(step)) for step in plan["passes"]]
    for earlier, later in zip(names, names[1:], strict=False):
        if PASS_ORDER.index(later) <= PASS_ORDER.index(earlier):
            raise PlanError(
                f"pass order impossible: {later!r} after {earlier!r}; passes run in the "
                f"order {' -> '.join(PASS_ORDER)}, each at most once"
            )
    steps = {next(iter(step)): dict(next(iter(step.values()))) for step in plan["passes"]}
    if "strategy" in steps.get("depth", {}):
        steps["depth"]["strategy"] = _depth(steps["depth"]["strategy"])
    slices = steps.get("slice", {}).keys() - {"num_layers"}
    if slices and "permute" not in steps and "score" in steps:
        raise PlanError(
            "pass order impossible: slice keeps the leading indices of the permuted order; "
            "put permute between score and slice"
        )
    return tuple(steps.items())


def _depth_first(error: jsonschema.ValidationError):
    return (-len(error.absolute_path), str(list(error.absolute_path)))


def _where(path) -> str:
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else "the plan"


def _message(e: jsonschema.ValidationError) -> str:
    """One line: the key, the value, what is allowed."""
    path = list(e.absolute_path)
    where, value = _where(path), e.instance
    if e.validator == "oneOf" and path and path[-1] in ("depth", "strategy"):
        return (
            f"{where} must be one of {', '.join(DEPTH)} or a non-empty list of layer "
            f"indices, not {_kind(value)}"
        )
    if e.validator == "oneOf" and len(path) >= 2 and path[-2] in ("drop_blocks", "blocks"):
        return (
            f"{where} must be a count of blocks (0 or more) or a non-empty list of layer "
            f"indices, not {_kind(value)}"
        )
    if e.validator == "additionalProperties":
        allowed = list(e.schema.get("properties", {}))
        unknown = sorted((k for k in value if k not in allowed), key=str)[0]
        if len(path) >= 2 and path[-2] == "passes":
            return (
                f"unknown pass {unknown!r} in passes[{path[-1]}]; valid passes: "
                f"{', '.join(PASS_ORDER)}"
            )
        names = [*allowed, *(k for k, v in ALIASES.items() if v in allowed)]
        guess = difflib.get_close_matches(str(unknown), names, n=1, cutoff=0.6)
        guess = f" (did you mean {ALIASES.get(guess[0], guess[0])}?)" if guess else ""
        if isinstance(unknown, int):  # `{parameters: 1,000,000}`: commas split a mapping
            guess = " (a number is written without commas: 1_000_000)"
        if path == ["target"]:
            return f"unknown target {unknown!r}{guess}; allowed: {', '.join(allowed)}"
        inside = "the plan" if not path else where
        return (
            f"unknown key {unknown!r} in {inside}{guess}; allowed: {', '.join(allowed) or 'none'}"
        )
    if e.validator in ("type", "minimum") and e.schema.get("type") == "integer":
        # a count, not a size in bytes, where a trailing b or G would be ambiguous
        count = _count(value) if not isinstance(value, int) and path[-1:] != ["bytes"] else None
        fix = ""
        if count is not None:
            quoted = isinstance(value, str) and f"{count:_}" == value.strip()
            fix = f" (write {count:_}{' without quotes' if quoted else ''})"
        return f"{where} must be a positive integer, got {value!r}{fix}"
    if e.validator == "enum":
        return f"{where} {value!r} is not one of: {', '.join(map(str, e.validator_value))}"
    if e.validator in ("minProperties", "maxProperties"):
        return f"{where} must name exactly one pass ({', '.join(PASS_ORDER)}), not {value!r}"
    if e.validator == "type":
        kind = {"object": "a mapping", "array": "a list"}.get(e.validator_value, e.validator_value)
        return f"{where} must be {kind}, not {_kind(value)}"
    return f"{where}: {e.message.splitlines()[0]}"


_SCALES = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


def _count(value: Any) -> int | None:
    """The whole number that `60M`, `2.5B` or `1.5e6` (a string to YAML) spells, if any
    (up to 10**18; never raises: it words an error)."""
    try:
        text = str(value).strip().replace("_", "")
        scale = _SCALES.get(text[-1:].lower(), 1)
        number = decimal.Decimal(text[:-1] if scale > 1 else text) * scale
        whole = 1 <= number <= 10**18 and number == number.to_integral_value()
        return int(number) if whole else None
    except Exception:  # noqa: BLE001 - whatever it is, it spells no number
        return None


MAX_PLAN_BYTES = 2**20  # a plan is a few lines; more is not a plan
MAX_PLAN_ITEMS = 10_000  # values in the plan, aliases expanded (a YAML alias bomb: refused)


def _check_size(plan: Any) -> None:
    """`PlanError` for a plan of more than `MAX_PLAN_ITEMS` values once its YAML aliases
    are expanded (safe_load shares aliased values, so a "billion laughs" plan loads in
    microseconds; everything that walks it afterwards would not end), or one that holds
    itself. Each distinct value is visited once: linear in the size of the YAML text."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()

    def size(value: Any) -> int:
        if not isinstance(value, (Mapping, list, tuple)):
            return 1
        key = id(value)
        if key in sizes:
            return sizes[key]
        if key in visiting:
            raise PlanError("the plan contains itself (a recursive YAML alias)")
        visiting.add(key)
        items = value.items() if isinstance(value, Mapping) else enumerate(value)
        total = 1
        for k, v in items:
            total += size(k) + size(v)
            if total > MAX_PLAN_ITEMS:
                break
        visiting.discard(key)
        sizes[key] = total
        return total

    if size(plan) > MAX_PLAN_ITEMS:
        raise PlanError(
            f"the plan expands to more than {MAX_PLAN_ITEMS:,} values (YAML aliases repeated "
            "over and over?): a plan is a few lines"
        )


def _read_yaml(source: str | Path) -> Any:
    text = str(source)
    path = Path(text) if "\n" not in text and 0 < len(text.strip()) < 4096 else None
    try:
        if path is not None and (path.suffix in (".yaml", ".yml", ".json") or path.exists()):
            if path.is_dir():
                raise PlanError(f"plan {text} is a folder: name the plan file inside it")
            if not path.is_file():
                raise PlanError(f"plan file {text} does not exist")
            if path.stat().st_size > MAX_PLAN_BYTES:
                raise PlanError(
                    f"plan file {text} is {path.stat().st_size:,} bytes: a plan is a few lines"
                )
            text = path.read_text()
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PlanError(f"the plan is not valid YAML: {str(e).splitlines()[0]}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise PlanError(f"cannot read plan {text}: {e}") from e


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:80]
