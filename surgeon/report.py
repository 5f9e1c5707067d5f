"""`surgeon.inspect`: what the analysis found, as a report with `to_dict()` and a table."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from .analysis import Analysis, analyse
from .analysis.measure import residual_ratios
from .frontends import trace
from .frontends.twin import traced
from .io.calibration import check_batches
from .passes import Score, SurgeryState
from .pipeline import Parent, runner

__all__ = ["Report", "inspect"]


@dataclass
class Report:
    """The structure of a model as surgeon sees it. `to_dict()` is what `--json` prints."""

    model: str
    analysis: Analysis
    ratios: list[float] | None = None  # per block, when calibration data was given
    scores: dict[int, list[float]] | None = None  # activation importance per group index
    stream_scores: list[list[float]] | None = None  # per residual value, stream start first

    def to_dict(self) -> dict[str, Any]:
        a = self.analysis
        kinds = {e.name: e for e in a.graph.params}
        block_index = {id(b): i for i, b in enumerate(a.blocks)}
        layers = []
        for layer in a.layers:
            widths = layer.widths({g: a.groups[g].size for g in layer.ffn})
            entry = {
                "name": layer.name,
                "stack": layer.stack,
                # the dense MLP's width; a layer with experts gives theirs by role below
                "intermediate_size": widths.pop("intermediate_size", 0),
                **widths,
                "num_heads": layer.num_heads,
                "num_kv_heads": layer.num_kv_heads,
                "head_dim": layer.head_dim,
                "num_experts": layer.num_experts,
                "blocks": len(layer.blocks),
            }
            if layer.heads_beside:  # other segments of the axis the heads are in
                entry["heads_beside"] = layer.heads_beside
            if layer.heads and not a.cuts_heads(layer):  # a hybrid's linear attention
                entry["heads_kept"] = "another kind of attention than the config's heads"
            if layer.applied > 1:  # one module applied several times (ALBERT)
                entry["applied"] = layer.applied
            if self.ratios is not None:
                entry["residual_ratio"] = [self.ratios[block_index[id(b)]] for b in layer.blocks]
            layers.append(entry)
        groups = []
        for g in sorted(a.groups.values(), key=lambda g: (g.layer is not None, g.layer or 0, g.id)):
            tensors = {name for name, _ in g.members}
            groups.append(
                {
                    "id": g.id,
                    "role": g.role,
                    "size": g.size,
                    "layer": g.layer,
                    "pinned": g.pinned,
                    "parameters": sum(
                        kinds[t].numel for t in tensors if kinds[t].kind == "parameter"
                    ),
                    "literals": g.literals,
                    "members": [f"{name}[{axis}]" for name, axis in g.members],
                }
            )
        out = {
            "model": self.model,
            "frontend": a.graph.frontend,
            "parameters": a.graph.params.num_parameters(),
            "num_layers": len(a.layers),
            "hidden_size": a.hidden_size,
            "stacks": {
                stack: sum(1 for layer in a.layers if layer.stack == stack) for stack in a.stacks
            },
            "stack_sizes": {
                stack: {
                    "num_layers": sum(1 for layer in a.layers if layer.stack == stack),
                    "hidden_size": a.atoms.size[a.stream_of(stack)],
                    "stream": a.streams.index(a.stream_of(stack)),
                }
                for stack in a.stacks
            },
            "layers": layers,
            **a.couplings,
            "groups": groups,
        }
        if self.ratios is not None:
            out["residual_ratio"] = self.ratios
        if self.scores is not None:
            out["importance"] = {str(g): v for g, v in self.scores.items()}
            out["residual_importance_per_site"] = self.stream_scores
        return out

    def render(self, groups: bool = False) -> str:
        return render(self.to_dict(), groups)


def inspect(
    model: nn.Module | Parent,
    example_inputs: Any = None,
    *,
    calibration: Iterable[Any] | None = None,
    frontend: str = "auto",
    device: str = "cpu",
) -> Report:
    """Trace and analyse `model` (or read the analysis of a parent prepared with
    `surgeon.prepare`); with `calibration` (an iterable of input batches, in the same forms
    as `example_inputs`, the first serving as example when none is given), also measure
    each block's residual ratio ‖f(x)‖ / ‖x + f(x)‖ and the activation importance of every
    group's indices (`importance` in `to_dict()`), running the layers on `device`; a
    parent prepared from a folder (`prepare_folder`) is run one layer at a time from its
    files. The model is not changed."""
    if calibration is not None:
        calibration = list(calibration)
        example_inputs = calibration[0] if example_inputs is None else example_inputs
    if not isinstance(model, Parent):
        auto = frontend == "auto"  # a deep stack on the meta device: from its twin
        graph = traced(model, example_inputs) if auto else trace(model, example_inputs, frontend)
        model = Parent(model, graph, analyse(graph))
    elif calibration:
        check_batches(model.graph.inputs, calibration)
    graph, analysis = model.graph, model.analysis
    if not calibration:
        return Report(type(model.model).__name__, analysis)
    run = runner(model, device)
    ratios = residual_ratios(run, analysis.blocks, calibration)
    source = model.tensor if model.streamed else None
    state = SurgeryState(graph, analysis, source=source, calibration=calibration, runner=run)
    Score("activation").run(state)
    scores = {g: s.tolist() for g, s in state.scores.items()}
    sites = [s.tolist() for s in state.residual_site_scores]
    return Report(type(model.model).__name__, analysis, ratios, scores, sites)


# what each role's group is, in the sizes a plan states
ROLE_MEANING = {
    "residual": "the residual stream: hidden_size",
    "ffn": "FFN neurons: intermediate_size",
    "heads": "query heads per key/value head (num_heads = num_kv_heads x this)",
    "kv_groups": "key/value heads: num_kv_heads",
    "head_dim": "positions in a head: head_dim (kept)",
    "vocab": "the vocabulary (kept)",
    "experts": "routed experts: num_experts",
    "mixer": "a token mixer's channels (kept, or as the config sizes them)",
    "rank": "a low-rank projection's rank, or routed experts' own space (kept)",
}


def _layer_rows(d: dict[str, Any], experts: bool) -> list[tuple[str, str]]:
    """(layer name, its row of sizes) per layer; without residual ratios, runs of
    consecutive layers of one stack and the same sizes are one row (`model.layers.0-29`)."""
    rows: list[tuple[str, str]] = []
    for layer in d["layers"]:
        row = (
            f"{layer['intermediate_size']:>6} {layer['num_heads']:>6} "
            f"{layer['num_kv_heads']:>4} {layer['head_dim']:>9}"
        )
        if experts:
            row += f" {layer.get('num_experts', 0):>8}"
            row += f" {layer.get('moe_intermediate_size', 0):>10}"
            row += f" {layer.get('shared_expert_intermediate_size', 0):>10}"
        if layer.get("heads_kept"):
            row += "  heads kept"
        if "residual_ratio" in layer:
            row += "  " + " ".join(f"{r:.3f}" for r in layer["residual_ratio"])
        rows.append((layer["name"], row))
    if "residual_ratio" in (d["layers"] or [{}])[0]:
        return rows
    runs: list[list] = []
    for name, row in rows:
        stack, _, index = name.rpartition(".")
        last = runs[-1] if runs else None
        if last and last[0] == stack and last[3] == row and index.isdigit():
            if int(index) == last[2] + 1:
                last[2] = int(index)
                continue
        runs.append(
            [
                stack,
                int(index) if index.isdigit() else index,
                int(index) if index.isdigit() else index,
                row,
            ]
        )
    out = []
    for stack, first, end, row in runs:
        label = f"{stack}.{first}" if first == end else f"{stack}.{first}-{end}"
        out.append((label, row))
    return out


def _group_rows(d: dict[str, Any]) -> list[str]:
    """The groups by role: one row per role, size and note, with the layers that have
    such a group and their parameters in all."""
    merged: dict[tuple, dict] = {}
    rotary = {r["group"] for r in d["rotary"]}
    for g in d["groups"]:
        pinned = g["pinned"] or ("rotary" if g["id"] in rotary else "")
        key = (g["layer"] is None, g["role"], g["size"], pinned)
        m = merged.setdefault(key, {"layers": [], "parameters": 0, "count": 0})
        m["count"] += 1
        m["parameters"] += g["parameters"]
        if g["layer"] is not None:
            m["layers"].append(g["layer"])
    lines = [f"{'role':<10} {'size':>6} {'where':<14} {'params':>12}  what it is"]
    for (shared, role, size, pinned), m in sorted(
        merged.items(), key=lambda kv: (not kv[0][0], kv[0][1])
    ):
        layers = sorted(set(m["layers"]))
        where = (
            "shared"
            if shared
            else (f"layer {layers[0]}" if len(layers) == 1 else f"{len(layers)} layers")
        )
        meaning = ROLE_MEANING.get(role, role)
        if role == "heads" and not any(r == "kv_groups" for _, r, _, _ in merged):
            meaning = "attention heads: num_heads (one key/value head each)"
        if pinned == "rotary":
            meaning = "the rotary embedding's frequencies, half a head (kept)"
        elif pinned:
            meaning += f"; pinned: {pinned}"
        lines.append(f"{role:<10} {size:>6} {where:<14} {m['parameters']:>12,}  {meaning}")
    return lines


def render(d: dict[str, Any], groups: bool = False) -> str:
    """The report as a readable table: identical consecutive layers in one row, the
    groups by role (`groups`: every group, by its id)."""
    experts = any(layer.get("num_experts") for layer in d["layers"])
    lines = [
        f"model        {d['model']}  (traced with {d['frontend']})",
        f"parameters   {d['parameters']:,}",
        f"layers       {d['num_layers']}",
        *(
            [
                f"stack        {name}: {s['num_layers']} layers, hidden {s['hidden_size']}, "
                f"residual stream {s['stream']}"
                for name, s in d["stack_sizes"].items()
            ]
            if len(d["stacks"]) > 1
            else []
        ),
        f"residual     {d['hidden_size']}",
        "",
        f"{'layer':<28} {'ffn':>6} {'heads':>6} {'kv':>4} {'head_dim':>9}"
        + (f" {'experts':>8} {'expert ffn':>10} {'shared ffn':>10}" if experts else "")
        + ("  residual ratio" if "residual_ratio" in d else ""),
    ]
    lines += [f"{name:<28} {row}" for name, row in _layer_rows(d, experts)]
    lines.append("(ffn: intermediate_size, heads: num_heads, kv: num_kv_heads, as plans name them)")
    lines.append("")
    for names in d["tied"]:
        lines.append("tied         " + " = ".join(names))
    for r in d["rotary"]:
        lines.append(f"rotary       head_dim group {r['group']} <-> {', '.join(r['tensors'])}")
    for f in d["fused"]:
        lines.append(
            f"fused        {f['tensor']} axis {f['axis']}: "
            + " | ".join(str(s) for s in f["segments"])
        )
    for name in d["per_head_norms"]:
        lines.append(f"per-head     {name}")
    for name in d["other_stacks"]:
        lines.append(f"other stack  {name}: no residual blocks found in it, kept whole")
    if not groups:
        lines += ["", "groups of axes cut together, by role (--groups: each group)"]
        return "\n".join(lines + _group_rows(d))
    lines += ["", "parameters per group (shared groups first, then per layer)"]
    lines.append(f"{'group':>6} {'role':<10} {'size':>6} {'layer':>5} {'params':>10}  note")
    for g in d["groups"]:
        layer = "-" if g["layer"] is None else str(g["layer"])
        note = f"pinned: {g['pinned']}" if g["pinned"] else ""
        lines.append(
            f"{g['id']:>6} {g['role']:<10} {g['size']:>6} {layer:>5} {g['parameters']:>10,}  {note}"
        )
    return "\n".join(lines)
