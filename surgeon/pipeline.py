"""The one pipeline every entry point runs (`surgeon.apply`, the streamed path of `surgeon
apply`, `surgeon validate`, the demo):

    prepare(model) / prepare_folder(path)  ->  Parent   traced and analysed once
    resolve(plan, data)                    ->  Surgery  the plan as its passes, once
    decide(parent, surgery, calibration)   ->  Cut      every pass checked, then run
    emit_graph / emit_hf / emit_shards / emit_onnx      the child, built from a Cut

A `Parent` is reusable for any number of plans: nothing downstream changes it. The
in-memory and streamed paths differ only in where the parent's tensors are read from
(the traced module, or the files) and in the emitter that writes the child.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .analysis import FFN_ROLES, Analysis, analyse
from .analysis.registry import overlay
from .derived import allowed_positions
from .emit.hf import is_hf_model
from .errors import ModelLoadError, NotStreamable, PlanError, SurgeonError, TraceError
from .execute import Runner, check_device
from .fit import ChildShape, config_error, config_heads, fit_config, states_kinds
from .frontends import Graph, tensor_of, trace
from .frontends.twin import traced
from .io.shards import Shards
from .passes import PASSES, Pass, SurgeryState
from .plan import Plan, load_plan

__all__ = [
    "Cut",
    "Parent",
    "Surgery",
    "check",
    "decide",
    "prepare",
    "prepare_folder",
    "resolve",
    "runner",
]


@dataclass
class Parent:
    """A parent traced and analysed once; reusable for any number of plans.

    `model` holds its weights in memory, or sits on the meta device when `shards` (the
    safetensors files of the folder it came from) holds them. `tensor(name)` reads a
    parent tensor from wherever it lives.
    """

    model: nn.Module
    graph: Graph
    analysis: Analysis
    shards: Shards | None = None
    stored: dict[str, str] = field(default_factory=dict)  # the model's name -> the files'
    folder: Path | None = None
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)  # computed, not stored
    # what the measuring passes found (scores, influence), for later plans; a folder's
    # are kept on disk too (`surgeon.io.measures`) unless `cache` is off
    measures: dict = field(default_factory=dict)
    cache: bool = False
    kept: bool = False  # graph and analysis read from the disk (`surgeon.io.prepared`)

    @property
    def is_hf(self) -> bool:
        return is_hf_model(self.model)

    @property
    def streamed(self) -> bool:
        return self.shards is not None

    def read(self, name: str) -> torch.Tensor | None:
        """A tensor by the model's name for it, None when the files lack it."""
        if self.shards is None:
            return tensor_of(self.graph.module, name)
        stored = self.stored.get(name)
        return self.shards.tensor(stored) if stored is not None else self.buffers.get(name)

    def tensor(self, name: str) -> torch.Tensor:
        """The parent's tensor by any of its names (tied names are one tensor)."""
        if self.shards is None:
            return tensor_of(self.graph.module, name)
        for alias in self.graph.params[name].names:
            found = self.read(alias)
            if found is not None:
                return found
        raise ModelLoadError(
            f"{self.folder} has no tensor {name}: the checkpoint is incomplete (a missing "
            "shard or index entry?); restore the parent's files"
        )


def prepare(
    model: nn.Module, example_inputs: Any = None, *, rules: Mapping[Any, Any] | None = None
) -> Parent:
    """Trace and analyse a module (its weights may be on the meta device: then only its
    structure can be used, as by `surgeon validate`).

    A plain module is traced with torch.fx first: its graph keeps batch and sequence sizes
    symbolic, so the child runs (and exports) at any size. Hugging Face models, and modules
    torch.fx cannot trace or analyse, go through torch.export.

    `rules` (op -> `OpRule` or rule function, as `analysis.registry.overlay` takes them)
    serve this call only, over the table's; the table is left as it was."""
    with overlay(rules):
        if not is_hf_model(model):
            try:
                graph = trace(model, example_inputs, frontend="fx")
                analysis = _checked(model, analyse(graph))
                return Parent(model, graph, _faithful(model, graph, analysis))
            except SurgeonError:
                pass
        graph = traced(model, example_inputs)
        return Parent(model, graph, _faithful(model, graph, _checked(model, analyse(graph))))


def _faithful(model: nn.Module, graph: Graph, analysis: Analysis) -> Analysis:
    """The traced graph computes the model's first output on the example inputs (within
    1e-4 of its scale, or 8 eps of a low-precision dtype), else `TraceError`: a frontend
    that records another computation (torch.export's graph of PaliGemma's base model) is
    refused here, before any child is made from it. Weights on the meta device: nothing
    to run."""
    from .frontends import eval_mode, output_tensors
    from .frontends.hf import tracing_settings

    if any(t.device.type == "meta" for t in model.parameters()):
        return analysis
    with torch.no_grad(), eval_mode(model), tracing_settings(model):
        want = output_tensors(graph.inputs.call(model))[0]
        got = output_tensors(graph.inputs.call(graph.module))[0]
    if not want.is_floating_point() or want.shape != got.shape:
        return analysis
    scale = max(want.abs().max().item(), 1.0)
    diff = (want.float() - got.float()).abs().max().item()
    if not diff <= scale * max(1e-4, 8 * torch.finfo(want.dtype).eps):
        raise TraceError(
            f"the {graph.frontend} graph of {type(model).__name__} computes other values "
            f"than its forward on the example inputs (max difference {diff:.3g}, output "
            f"scale {scale:.3g}): the tracer recorded another computation; try the other "
            "frontend, or report it"
        )
    return analysis


def _checked(model: nn.Module, analysis: Analysis) -> Analysis:
    """Refuse, in one line, what the analysis would report wrongly: a forward that draws
    random numbers (an op `random` in the rule table: no output to preserve), or a list
    of layers of which the traced forward reaches only some (cross-attention layers that
    run only with an image). Mark the layers whose weights are applied several times
    (ALBERT shares one layer across the depth; Dory runs a stack of layers in a loop):
    their widths can be cut, and they can be removed where each application is a span
    of its own (`LayerInfo.spans`, found by the analysis), but not copied."""
    from .analysis.context import source_line
    from .analysis.registry import rule_for, rule_key

    for node in analysis.graph.graph.nodes:
        rule = rule_for(node)  # every node, those whose values are never read included
        cut = rule is not None and rule.random and _cut_axes(analysis, node)
        if cut:
            raise SurgeonError(
                f"{type(model).__name__} draws random numbers in its forward ({rule_key(node)} "
                f"at {source_line(node)}) along {cut}, which a child cuts: it would draw "
                "other numbers than the parent, so surgeon cannot check that it computes "
                "the same; pass that draw in as an input, or keep that size"
            )
    for layer in analysis.layers:
        seen = Counter(p for b in layer.blocks for p in dict.fromkeys(b.params))
        # ALBERT: one layer, every weight applied 12 times; a norm that two parallel
        # blocks read (x + attn(norm x) + mlp(norm x)) is read twice, its layer once
        layer.applied = min(seen.values(), default=1)
    stacks = {x.stack for x in analysis.layers if x.heads}
    shapes = {(x.stack, x.num_heads, x.head_dim) for x in analysis.layers if x.heads}
    if len(shapes) > len(stacks) and is_hf_model(model):  # attention of several shapes
        analysis.config_heads = config_heads(model, analysis.layers)
    if is_hf_model(model):
        analysis.stated_kinds = states_kinds(model.config, len(analysis.layers))
    for stack in analysis.stacks:
        try:
            modules = model.get_submodule(stack)
        except AttributeError:
            continue
        found = sum(1 for layer in analysis.layers if layer.stack == stack)
        if isinstance(modules, nn.ModuleList) and len(modules) != found:
            raise SurgeonError(
                f"surgeon finds residual layers in {found} of the {len(modules)} modules of "
                f"{stack} in {type(model).__name__} (the traced forward skips the others, or "
                "they are not residual blocks): it cannot cut layers it does not see"
            )
    return analysis


def _cut_axes(analysis: Analysis, node) -> str | None:
    """The group a random draw's output axes share with sizes a plan may cut (its role),
    None where a child draws the same numbers as the parent (`Inputs.call` seeds every
    run): a draw of (batch, positions) only."""
    from .analysis.dims import _flat

    atoms = analysis.atoms
    for a in _flat(analysis.dims.out.get(node)):
        for leaf in atoms.leaves(a):
            group = analysis.groups.get(leaf)
            if group is not None and group.movable:
                return f"the {group.role} axis"
    return None


def prepare_folder(
    folder: str | Path,
    example_inputs: Any = None,
    *,
    rules: Mapping[Any, Any] | None = None,
    cache: bool = True,
) -> Parent:
    """A Hugging Face folder of safetensors files, never loaded: the model is built from
    its config on the meta device, traced (on `example_inputs`, e.g. the first calibration
    batch; a small batch from its config by default) and analysed, and its tensors are
    read from the files as views (file pages, not process memory); the buffers the model
    computes rather than stores (rotary frequencies) are computed on the CPU.
    `NotStreamable` for checkpoints whose tensors transformers converts on load, or that
    are quantized. `rules`: as for `prepare`. `cache`: read and keep on disk the graph and
    the analysis (`surgeon.io.prepared`) and the measures of earlier plans on this folder
    (scores, influence; `surgeon.io.measures`)."""
    from .frontends import memo
    from .frontends.load import load_model
    from .io.names import load_names
    from .io.prepared import load_prepared, prepared_key, save_prepared

    folder = Path(folder)
    model, _ = load_model(str(folder), weights=False)
    quantized = getattr(model.config, "quantization_config", None)
    if quantized:
        method = getattr(quantized, "quant_method", None) or dict(quantized).get("quant_method")
        raise NotStreamable(f"the checkpoint is quantized ({method}): its tensors are packed")
    shards = Shards(folder)
    stored = load_names(model, shards.index)
    key = prepared_key(model, example_inputs, stored) if cache and not rules else None
    found = load_prepared(key, model)
    if found is not None:
        graph, analysis, buffers = found
    else:
        caught: list = []
        try:
            with overlay(rules), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                graph = _traced_on_meta(model, example_inputs)
                buffers = _computed_buffers(model, graph, stored)
                analysis = _checked(model, analyse(graph))
        finally:
            memo.replay(caught)  # as they were given, and again on every load
        save_prepared(key, model, graph, analysis, buffers, caught)
    parent = Parent(model, graph, analysis, shards, stored, folder, buffers, cache=cache)
    parent.kept = found is not None
    if cache:
        from .io.measures import load_measures

        parent.measures = load_measures(folder).get(_signature(analysis), {})
    return parent


def _signature(analysis: Analysis) -> str:
    """The groups' ids, sizes and roles: measures kept under it index these groups."""
    import hashlib

    groups = sorted((g.id, g.size, g.role) for g in analysis.groups.values())
    return hashlib.sha256(repr((len(analysis.layers), groups)).encode()).hexdigest()[:16]


def _traced_on_meta(model: nn.Module, example_inputs: Any) -> Graph:
    """The graph of a model whose weights are on the meta device (`traced`);
    `NotStreamable` for a forward that branches on its input values (LED's `if
    is_global_attn:`): which branch the example takes shows only with real weights."""
    try:
        return traced(model, example_inputs)
    except TraceError as e:
        if "data-dependent" not in str(e):
            raise
        raise NotStreamable(
            f"{type(model).__name__} branches on its input values, which tracing it without "
            "its weights cannot follow"
        ) from e


def _computed_buffers(model: nn.Module, graph: Graph, stored: dict) -> dict[str, torch.Tensor]:
    """The buffers the files lack, from the model built again with its parameters on the
    meta device and its buffers on the CPU (accelerate's `init_empty_weights`); and the
    parameters its class does not save (`_keys_to_ignore_on_save`: Marian's sinusoidal
    positions), initialised as `from_pretrained` does, by the class's `_init_weights`."""
    unsaved = getattr(model, "_keys_to_ignore_on_save", None) or []
    missing = [
        n
        for e in graph.params
        for n in e.names
        if n not in stored and (e.kind != "parameter" or n in unsaved)
    ]
    if not missing:
        return {}
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        skeleton = type(model)(model.config)
    out = {}
    for name in missing:
        try:
            tensor = tensor_of(skeleton, name)
        except AttributeError:
            continue
        if tensor.device.type == "meta":  # a parameter: its owner built and initialised
            owner = skeleton.get_submodule(name.rpartition(".")[0]).to_empty(device="cpu")
            with torch.no_grad():
                skeleton._init_weights(owner)
            tensor = tensor_of(skeleton, name).detach()
        out[name] = tensor
    return out


@dataclass(frozen=True)
class Surgery:
    """A plan resolved into its passes, in pipeline order."""

    plan: Plan
    passes: tuple[Pass, ...]
    # a solved budget: what the plan asked (`parameters`) and the child's count
    budget: Mapping[str, Any] = field(default_factory=dict)

    @property
    def needs_data(self) -> bool:
        """Whether a pass runs the parent on calibration data (with an unsolved budget:
        whether one would if the budget cuts layers)."""
        if self.plan.budget and self.plan.depth == "influence":
            return True
        return any(p.needs_data for p in self.passes)


def resolve(plan: Any, data: bool = False) -> Surgery:
    """The plan (a `Plan`, dict, YAML string or file) as its passes. `data`: whether
    calibration data can be had (it decides the `auto` recipe). A `Surgery` is returned
    as it is."""
    if isinstance(plan, Surgery):
        return plan
    plan = load_plan(plan).resolved(data)
    return Surgery(plan, tuple(PASSES[name](**params) for name, params in plan.steps()))


@dataclass
class Cut:
    """What the passes decided for one plan on one parent: all an emitter needs.
    `config`: the child's Hugging Face config (Hugging Face parents), checked on the
    meta device to hold exactly the child's tensor shapes."""

    parent: Parent
    surgery: Surgery
    state: SurgeryState
    config: Any = None

    @cached_property
    def parent_sizes(self) -> dict[str, int]:
        """The parent's sizes, as `sizes` states the child's."""
        whole = replace(self.state, keep={}, select={}, top_k=None, layers=None)
        return Cut(self.parent, self.surgery, whole).sizes

    @property
    def kept(self) -> dict[str, Any]:
        """Which parent positions the child keeps, in the child's order (after the passes
        ran): `layers` (the parent layer behind each child layer), `hidden_size` (the
        residual positions), and per child layer its FFN neurons by role, query heads and
        key/value heads (head numbers as the parent counts them)."""
        state, a = self.state, self.state.analysis
        out: dict[str, Any] = {"layers": state.kept_layers()}
        if a.residual is not None:
            out["hidden_size"] = state.positions(a.residual).tolist()
        out["per_layer"] = [_kept_in(state, a.layers[i]) for i in state.kept_layers()]
        for j, i in enumerate(state.kept_layers()):
            if i in state.dropped:  # its attention or MLP block removed, with its sizes
                mine = out["per_layer"][j]
                if "mlp" in state.dropped[i]:
                    for key in (*FFN_ROLES, "num_experts"):
                        mine.pop(key, None)
                if "attention" in state.dropped[i]:
                    mine.pop("num_heads", None)
                    mine.pop("num_kv_heads", None)
                mine["dropped"] = list(state.dropped[i])
        return out

    @cached_property
    def sizes(self) -> dict[str, int]:
        """The child's sizes: layers, residual width, and the per-layer sizes that are
        the same in every layer."""
        state = _planned(self.state)
        sizes = {**state.child_sizes(), "num_layers": len(state.kept_layers())}
        stacks = state.kept_by_stack()
        if len(stacks) > 1:
            sizes["stacks"] = {
                name: {**state.child_sizes(name), "num_layers": len(kept)}
                for name, kept in stacks.items()
            }
        return sizes


def _kept_in(state: SurgeryState, layer) -> dict[str, list[int]]:
    """A layer's kept FFN neurons (per role), query heads and key/value heads."""
    out: dict[str, list[int]] = {}
    offsets: dict[str, int] = {}
    for g in layer.ffn:  # groups of one role side by side, numbered as the parent's
        role, offset = layer.ffn_role[g], offsets.get(layer.ffn_role[g], 0)
        out.setdefault(role, []).extend((state.positions(g) + offset).tolist())
        offsets[role] = offset + state.analysis.atoms.size[g]
    if layer.experts:
        out["num_experts"] = [p for g in layer.experts for p in state.positions(g).tolist()]
    if layer.heads and state.analysis.cuts_heads(layer):
        pick = [state.positions(g).tolist() for g in layer.heads]
        sizes = [state.analysis.atoms.size[g] for g in layer.heads]
        heads = [0]
        for kept, size in zip(pick, sizes, strict=True):  # flat: outer group first
            heads = [h * size + k for h in heads for k in kept]
        out["num_heads"] = heads
        if layer.kv and layer.kv != layer.heads:
            out["num_kv_heads"] = state.positions(layer.kv[0]).tolist()
    return out


def check(
    parent: Parent, surgery: Surgery, calibration: list | None = None, progress: bool = False
) -> Cut:
    """Every check that can be made before any pass runs: each pass's own (`PlanError`
    for an impossible target or depth), then whether the parent's class can hold the
    child. Returns the unrun decisions. A plan with a budget (`target: {parameters: N}`)
    is first solved into sizes (`surgeon.budget.solve`); the `Cut` holds the solved
    surgery."""
    if surgery.plan.budget:
        from .budget import solve

        surgery = solve(parent, surgery, calibration, progress)
    state = fresh_state(parent, surgery, calibration, progress)
    for p in surgery.passes:
        p.check(state)
    config = _child_config(parent, state)
    if any(parent.analysis.groups[g].derived for g in state.keep):  # values from a count
        state.allowed = allowed_positions(parent, state, config)
    return Cut(parent, surgery, state, config)


def fresh_state(
    parent: Parent, surgery: Surgery, calibration: list | None = None, progress: bool = False
) -> SurgeryState:
    """A state of nothing decided yet for `surgery` on `parent`: its tensors, calibration
    batches and runner where the plan measures on data, and the parent's kept measures."""
    source = parent.tensor if parent.streamed else None
    state = SurgeryState(parent.graph, parent.analysis, source=source, calibration=calibration)
    if surgery.needs_data:
        state.runner = runner(parent, surgery.plan.device)
    state.progress = progress
    state.measures = parent.measures
    return state


def decide(
    parent: Parent, surgery: Surgery, calibration: list | None = None, progress: bool = False
) -> Cut:
    """Check, then run every pass; returns the decisions (the parent is not changed).
    `calibration`: the input batches the measuring passes run (needed when
    `surgery.needs_data`): all of them in memory, one layer at a time on a streamed
    parent (`runner`)."""
    if surgery.needs_data and not calibration:
        raise PlanError(
            "this plan runs the parent on calibration data (importance: activation or "
            "depth: influence): pass calibration batches"
        )
    known = len(parent.measures)  # before the budget's solver, which may score
    cut = check(parent, surgery, calibration, progress)
    planned = cut.state.layers
    for p in cut.surgery.passes:
        p.run(cut.state)
    if cut.surgery.budget:  # what the passes decided: measured depth, per-layer widths
        from .budget import recount

        cut.surgery = recount(parent, cut.surgery, cut.state)
    if parent.cache and parent.folder is not None and len(parent.measures) > known:
        from .io.measures import load_measures, save_measures

        kept = load_measures(parent.folder)
        kept[_signature(parent.analysis)] = parent.measures
        save_measures(parent.folder, kept)
    plan = cut.surgery.plan
    if plan.layout != "uniform" or cut.state.dropped:  # what no config states: a graph child
        cut.config = None
    elif cut.config is not None and cut.state.layers != planned:  # measured depth
        cut.config = _child_config(parent, cut.state)
    return cut


def runner(parent: Parent, device: str = "cpu") -> Runner:
    """How the measuring passes run `parent` on calibration data: whole when its weights
    are in memory; one layer at a time, each layer's tensors read from the files, when it
    is streamed."""
    device = check_device(device)
    if not parent.streamed:
        return Runner(parent.graph, device=device)
    stacks = parent.analysis.stacks
    if len(stacks) > 1:
        raise PlanError(
            f"{parent.folder} has {len(stacks)} stacks of layers ({', '.join(stacks)}): "
            "calibration runs one stack layer by layer; load the model and pass it to "
            "surgeon.apply, or choose a data-free plan (recipe: data-free)"
        )
    repeated = [layer.name for layer in parent.analysis.layers if layer.applied > 1]
    if repeated:
        raise PlanError(
            f"{parent.folder}: {repeated[0]} is applied several times in one forward, so "
            "calibration cannot run it layer by layer; load the model and pass it to "
            "surgeon.apply, or choose a data-free plan (recipe: data-free)"
        )
    cuts = [layer.output for layer in parent.analysis.layers]
    return Runner(parent.graph, parent.tensor, cuts, device)


def _child_config(parent: Parent, state: SurgeryState) -> Any:
    """The child's config, checked against the parent's class before any weight is cut
    (None for a module without one). Before the passes run, the sizes come from `keep`.
    Groups the plan leaves whole but the config sizes with the ones it cuts (a pooler as
    wide as the hidden size) are cut to the config's size (`_follow_config`)."""
    if not parent.is_hf:
        return None
    for _ in range(8):
        planned = _planned(state)
        shape = ChildShape.of(planned, expected_shapes(planned))
        config, wrong = fit_config(parent.model, shape)
        if not wrong:
            return config
        if state.keep_in_step is not None:  # layers' KV heads, scaled by one factor
            state.keep, state.keep_in_step = state.keep_in_step, None
            continue
        if not _follow_config(state, wrong):
            break
    raise config_error(parent.model, wrong, shape)


def _follow_config(state: SurgeryState, wrong: dict) -> bool:
    """For tensors the config makes narrower than the child's, a movable group the plan
    did not cut along such an axis keeps the size that gives the config's; whether any
    did."""
    a, table = state.analysis, state.graph.params
    changed = False
    for name, (got, want) in wrong.items():
        source = state.parent_name(name)
        axes = a.dims.tensors.get(table.canonical(source)) if source in table else None
        if axes is None or len(got) != len(axes):
            continue
        for axis, g, w in zip(axes, got, want, strict=True):
            changed |= g < w and _follow_axis(state, axis, g)
    return changed


def _follow_axis(state: SurgeryState, axis: int, size: int) -> bool:
    """Cut uncut movable groups of `axis` (not the residual stream) so that the axis has
    `size`: one group, or every group of one role and size alike (the head_dim of q·k and
    that of the values); whether one could. Where several cuts give that size (a pooling
    head's heads or its head_dim), the one to a size the plan gave another group of its
    role (the layers' head count) wins; with none such, only a single possible cut is
    made. On an axis that rotary embeddings read, head_dim is never cut (the rotary width
    the child's class derives from it would not be the graph's)."""
    a = state.analysis
    leaves = list(dict.fromkeys(a.atoms.leaves(axis)))
    rotary = {r["group"] for r in a.couplings.get("rotary") or []}
    kept = {"residual", *(["head_dim"] if rotary & set(leaves) else [])}
    free = [
        leaf
        for leaf in leaves
        if leaf in a.groups
        and a.groups[leaf].movable
        and leaf not in state.keep
        and a.groups[leaf].role not in kept
    ]
    alike: dict[tuple, list[int]] = {}
    for leaf in free:
        alike.setdefault((a.groups[leaf].role, a.groups[leaf].size), []).append(leaf)
    sets = [[leaf] for leaf in free] + [s for s in alike.values() if len(s) > 1]
    cuts = [
        (tuple(leaves), k)
        for leaves in sets
        for k in range(1, a.groups[leaves[0]].size)
        if a.atoms.new_size(axis, {**state.keep, **dict.fromkeys(leaves, k)}) == size
    ]
    planned = {(a.groups[g].role, k) for g, k in state.keep.items() if g in a.groups}
    precedent = [(g, k) for g, k in cuts if (a.groups[g[0]].role, k) in planned]
    chosen = precedent if len(precedent) == 1 else cuts
    if len(chosen) != 1:
        return False
    leaves, k = chosen[0]
    state.keep.update(dict.fromkeys(leaves, k))
    return True


def _planned(state: SurgeryState) -> SurgeryState:
    """Before the passes run, a state whose selections have the sizes `keep` gives
    (beside those a check already made: depth's of per-layer inputs)."""
    if all(g in state.select for g in state.keep):
        return state
    planned = {g: torch.arange(k) for g, k in state.keep.items()}
    return replace(state, select={**planned, **state.select})


def expected_shapes(state: SurgeryState) -> dict[str, tuple]:
    """Every name of every parent tensor -> the shape the child gives it."""
    shapes = {}
    for name, axes in state.analysis.dims.tensors.items():
        shape = tuple(state.new_size(a) for a in axes)
        for alias in state.graph.params[name].names:
            shapes[alias] = shape
    return shapes
