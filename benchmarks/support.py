"""The support matrix: docs/support.md from the sweep's JSON lines (benchmarks/sweep.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

# The matrix's vocabulary, defined here once (the sweep writes rows in it).
CHECKS = ("trace", "inspect", "permute", "shrink", "hf", "onnx", "folder")
CATEGORIES = (
    "decoder",
    "encoder",
    "vision",
    "encoder-decoder",
    "moe",
    "ssm/hybrid",
    "multimodal",
    "other",
)

MARK = {
    "ok": "ok",
    "partial": "*partial*",
    "refused": "refused",
    "caught": "*caught*",
    "wrong": "**WRONG**",
    "crash": "**CRASH**",
}


def _result(r: dict, check: str) -> str:
    if r.get("died"):
        return "died"
    return r["checks"].get(check, {}).get("result", "-")


def _first_failure(r: dict) -> tuple[str, str, str] | None:
    """(check, result, why) of the first check that did not pass: the task-head class's,
    then the base class's (`base <check>`)."""
    if r.get("died"):
        return ("-", "died", r["died"])
    base = r.get("base") or {}
    for prefix, checks in (("", r["checks"]), ("base ", base.get("checks", {}))):
        for name in CHECKS:
            c = checks.get(name, {})
            if c.get("result") not in (None, "ok", "skipped"):
                return prefix + name, c["result"], c.get("why", "")
    return None


def _base(r: dict) -> str:
    """The base class's column: its first failure's mark, `ok`, `-` where the type's
    checked class is its base class or the row predates base checks, `not buildable`."""
    base = r.get("base")
    if not base:
        return "-"
    if "checks" not in base:
        return "not buildable"
    bad = next((c["result"] for c in base["checks"].values() if c["result"] != "ok"), "ok")
    return MARK.get(bad, bad)


def _all_but(r: dict, check: str) -> bool:
    """Every check but `check` ran and passed (the folder check: the API passes, the CLI
    on a saved folder does not)."""
    others = [c for c in CHECKS if c != check]
    return not r.get("died") and all(_result(r, c) == "ok" for c in others)


def counts(records: list[dict]) -> dict[str, dict[str, int]]:
    """Per category: types, buildable, passed every check, shrink ok, and the first
    failure's kind: partial, refused, crash, wrong, caught."""
    out = {}
    for cat in CATEGORIES:
        rs = [r for r in records if r.get("buildable") and r.get("category") == cat]
        fails = Counter((_first_failure(r) or ("", "pass", ""))[1] for r in rs)
        out[cat] = {
            "buildable": len(rs),
            "passed": sum(bool(r.get("passed")) for r in rs),
            "in_process": sum(_all_but(r, "folder") for r in rs),
            "shrink_ok": sum(_result(r, "shrink") == "ok" for r in rs),
            "partial": fails["partial"],
            "refused": fails["refused"],
            "crash": fails["crash"] + fails["died"],
            "wrong": fails["wrong"],
            "caught": fails["caught"],
        }
    return out


def summary(records: list[dict]) -> str:
    built = [r for r in records if r.get("buildable")]
    lines = [f"{len(records)} model types, {len(built)} buildable"]
    for cat, c in counts(records).items():
        if c["buildable"]:
            pct = 100 * c["passed"] / c["buildable"]
            lines.append(
                f"  {cat:<16} pass {c['passed']}/{c['buildable']} ({pct:.1f}%)  "
                f"shrink ok {c['shrink_ok']}/{c['buildable']} buildable  "
                f"partial {c['partial']}  refused {c['refused']}  caught {c['caught']}  "
                f"crash {c['crash']}  wrong {c['wrong']}"
            )
    return "\n".join(lines)


def _base_count(records: list[dict]) -> str:
    """How many rows checked a base class, and how many could not yet (run before it)."""
    built = [r for r in records if r.get("buildable")]
    have = [r for r in built if r.get("base")]
    passed = sum(bool(r["base"].get("passed")) for r in have)
    old = [r for r in built if "base" not in r and r.get("commit") in BEFORE_BASE_CLASSES]
    rest = "the others' checked class is the base"
    rest = f"{len(old)} were swept before base classes were, {rest}" if old else rest
    return f"{len(have)} of the {len(built)} buildable rows did ({passed} of them pass); {rest}."


# commits of sweep rows made before the sweep checked base classes (1274d6d)
BEFORE_BASE_CLASSES = {"10cb446", "1460898", "c48726f", "31299dc", "e30755d"}


def _provenance(records: list[dict]) -> str:
    """Which code each row ran at (the sweep records its commit and timeout per type)."""
    runs = Counter((r.get("commit", "?"), r.get("timeout")) for r in records)
    parts = []
    for (commit, timeout), n in runs.most_common():
        names = sorted(
            r["type"]
            for r in records
            if (r.get("commit", "?"), r.get("timeout")) == (commit, timeout)
        )
        who = f"{n} types" if n > 6 else ", ".join(names)
        limit = f", {timeout:.0f} s timeout" if timeout else ""
        parts.append(f"{who} at {commit}{limit}")
    return (
        "Rows by the code they ran at: " + "; ".join(parts) + ". `tests/test_sweep.py` runs a "
        "slice of them at the last code."
    )


def write_support(records: list[dict], path: Path) -> None:
    import transformers

    built = [r for r in records if r.get("buildable")]
    passed = sum(bool(r.get("passed")) for r in built)
    seconds = sum(r.get("seconds", 0) for r in records)
    lines = [
        "# Support matrix",
        "",
        "Written by `python benchmarks/sweep.py --docs` from `benchmarks/results/sweep.jsonl`",
        f"(transformers {transformers.__version__}). Every model type of transformers' auto",
        "mappings is built tiny and random from its config class alone (its 1-D parameters,",
        "biases and norms, drawn at random too: zeros and ones hide a wrong permutation of",
        "them) and put through seven checks (see `benchmarks/sweep.py`): **trace**;",
        "**inspect** (layers and hidden size equal the config's; heads, KV heads, experts",
        "and FFN widths by role that differ from the config's make it *partial*);",
        "**permute** (an importance-only plan computes the parent's output within 1e-4 of its",
        "scale, its largest magnitude or 1); **shrink**, the full plan: half of every size",
        "the model has (layers, hidden size, each FFN role's width, heads in whole KV groups,",
        "routed experts); the child runs, trains a step, the parent is unchanged, its",
        "config states the plan's sizes, and analysed afresh it has them (where the",
        "parent's analysis agrees with its config; else *wrong*).",
        "A hybrid's linear attention keeps its heads (their config fields are not the",
        "plan's): the row lists it in `absent`. Where",
        "surgeon refuses a size, the plan is tried again without it and the row is",
        "*partial*, never a pass (`sweep.jsonl` gives the refusal and the sizes kept); so",
        "is a size the config states that the plan cannot cut (the analysis does not find",
        "it, or finds it differing between layers); a size the model does not have (an SSM's",
        "heads) is listed in the row's `absent`; **hf** (save_pretrained + from_pretrained",
        "of the child computes the same); **onnx** (the child against onnxruntime);",
        "**folder**, as users hold the model: a `save_pretrained` folder whose config keeps",
        "its class's defaults (the cache on), `surgeon inspect` and `surgeon apply` through",
        "the CLI with inputs surgeon derives, the child folder reloads. The same checks run",
        "on the type's base class (`AutoModel`'s) where it is not the class checked first;",
        f"{_base_count(records)} A row passes only where both pass.",
        "`refused` is a clear",
        "one-line error (quoted below); *caught* means",
        "surgeon's own consistency check (an `InvariantError`) stopped a child that would not",
        "compute what its graph computes: no child is written, the message asks for a report",
        "(a bug, not support); **WRONG** (a silent wrong child) and **CRASH** are bugs",
        "(`died`: the type's process ran past the sweep's `--timeout`, counted as a crash).",
        _provenance(records),
        "A check",
        f"after a failed one is not run (`-`). {len(records) - len(built)} types are not "
        "buildable: most need inputs the sweep does not make (audio features, time series,",
        "videos) or reject a tiny config.",
        "",
        f"{len(records)} model types; {len(built)} buildable; **{passed} of {len(built)} "
        f"({100 * passed / max(1, len(built)):.1f}%) pass every check with the full plan**. "
        "Sum of per-type "
        f"times {seconds / 60:.0f} min (one process per type).",
        "",
        "## By category",
        "",
        "| category | buildable | pass every check | every check but the folder | shrink ok "
        "| partial | refused | caught | crash | wrong |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cat, c in counts(records).items():
        pct = f"{100 * c['passed'] / c['buildable']:.1f}%" if c["buildable"] else "-"
        lines.append(
            f"| {cat} | {c['buildable']} | {c['passed']} ({pct}) | {c['in_process']} | "
            f"{c['shrink_ok']} | "
            f"{c['partial']} | {c['refused']} | {c['caught']} | {c['crash']} | {c['wrong']} |"
        )
    lines += [
        "",
        "Categories: `multimodal` (a text and a vision or audio sub-config, or a type",
        "transformers lists as making audio from text), `ssm/hybrid`",
        "(state-space fields or mamba layers), `moe` (more than one expert),",
        "`encoder-decoder`, then by head: `decoder` (causal LM), `vision` (image classes,",
        "backbones), `encoder`; `other` has no attention heads in its config (convolutional,",
        "recurrent and signal models) or no input the sweep builds.",
        "",
        "## By model type",
        "",
        "| type | category | class | " + " | ".join(CHECKS) + " | base class | first problem |",
        "|---|---|---|" + "---|" * len(CHECKS) + "---|---|",
    ]
    for r in sorted(
        records, key=lambda r: (CATEGORIES.index(r.get("category") or "other"), r["type"])
    ):
        if not r.get("buildable"):
            continue
        fail = _first_failure(r)
        why = f"{fail[0]}: {fail[2]}" if fail else ""
        marks = " | ".join(MARK.get(_result(r, c), _result(r, c)) for c in CHECKS)
        lines.append(
            f"| {r['type']} | {r['category']} | {r.get('cls', '')} | {marks} | {_base(r)} "
            f"| {_cell(why)} |"
        )
    lines += [
        "",
        "## Not buildable",
        "",
        "Transformers itself could not build or run these from a tiny config:",
        "",
    ]
    lines += ["| type | reason |", "|---|---|"]
    for r in sorted(records, key=lambda r: r["type"]):
        if not r.get("buildable"):
            lines.append(f"| {r['type']} | {_cell(r['why'])} |")
    Path(path).write_text("\n".join(lines) + "\n")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:200]
