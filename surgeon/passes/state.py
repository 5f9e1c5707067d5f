"""What the passes read and write: the traced parent, its analysis, and the decisions."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..analysis import Analysis
from ..errors import PlanError
from ..frontends import Graph, tensor_of

__all__ = ["SurgeryState", "check_stack_names"]


def check_stack_names(analysis: Analysis, names) -> None:
    """`PlanError` for a plan's stack (`stacks:`) the model does not have."""
    unknown = sorted(set(names) - set(analysis.stacks))
    if unknown:
        raise PlanError(
            f"stacks.{unknown[0]}: no such stack of layers; this model's: "
            f"{', '.join(analysis.stacks) or 'none'}"
        )


@dataclass
class SurgeryState:
    """The passes never touch the parent's tensors: they decide, the emitters build.

    `select[group]` lists the parent positions the child keeps along a group, in the
    child's order (a permutation of all of them, or the leading ones after slicing).
    `keep[group]` is how many positions the target leaves it (set by the slice pass's
    check, before any pass runs); `layers` the parent layer behind each child layer.
    """

    graph: Graph
    analysis: Analysis
    scores: dict[int, torch.Tensor] = field(default_factory=dict)
    select: dict[int, torch.Tensor] = field(default_factory=dict)
    keep: dict[int, int] = field(default_factory=dict)  # group -> positions the child keeps
    # another `keep` for a config that cannot hold the first: a heads target without
    # num_kv_heads where layers hold different KV head counts, every layer's KV heads
    # scaled by one factor (`slice._kv_in_step`); None where there is no other
    keep_in_step: dict[int, int] | None = None
    scale: dict[str, float] = field(default_factory=dict)  # tensor name -> factor
    layers: list[int] | None = None  # the parent layer behind each child layer (None: all)
    top_k: int | None = None  # the experts a token is routed to, where the plan sets it
    resized: dict[int, int] = field(default_factory=dict)  # leaves sized, not cut (top-k's)
    # group -> for each child position, the parent positions whose values the child's
    # class computes there (heads of derived values, `surgeon/derived.py`)
    allowed: dict[int, list[list[int]]] = field(default_factory=dict)
    influence: list[float] | None = None  # per parent layer, when measured
    # blocks the child drops (`target.drop_blocks`): parent layer -> kinds ("attention", "mlp")
    dropped: dict[int, tuple[str, ...]] = field(default_factory=dict)
    residual_site_scores: list[torch.Tensor] = field(default_factory=list)  # per stream value
    # where the parent's tensors are read from: the traced module, or files (streaming)
    source: Callable[[str], torch.Tensor] | None = None
    calibration: list[Any] | None = None  # input batches for the passes that measure
    runner: Any = None  # how they run the parent (a surgeon.execute.Runner; None: whole)
    progress: bool = False  # show progress bars
    # measures kept across plans on one parent (`Parent.measures`; on disk for a folder):
    # (name, what it depends on) -> value
    measures: dict | None = None

    def recall(self, name: str, data: bool) -> Any:
        """A measure kept from an earlier plan (`data`: it read the calibration batches,
        which are then part of its key); None where there is none."""
        return None if self.measures is None else self.measures.get(self._key(name, data))

    def remember(self, name: str, data: bool, value: Any) -> None:
        if self.measures is not None:
            self.measures[self._key(name, data)] = value

    def _key(self, name: str, data: bool) -> str:
        if not data:
            return name
        if not hasattr(self, "_batches"):
            from ..io.measures import batches_key

            self._batches = batches_key(self.calibration)
        return f"{name}@{self._batches}"

    def tensor(self, name: str) -> torch.Tensor:
        """The parent's tensor called `name` (a canonical name)."""
        if self.source is not None:
            return self.source(name)
        return tensor_of(self.graph.module, name)

    def new_size(self, atom: int) -> int:
        """The size of an atom (an axis) in the child."""
        keep = {g: len(chosen) for g, chosen in self.select.items()}
        return self.analysis.atoms.new_size(atom, {**keep, **self.resized})

    def positions(self, atom: int) -> torch.Tensor:
        """For an axis: the parent position each child position takes its values from."""
        return self.analysis.atoms.positions(atom, self.select)

    def dropped_blocks(self) -> list:
        """The parent's blocks (`analysis.residual.Block`) the child drops."""
        from .blocks import droppable

        a, out = self.analysis, []
        for i, kinds in self.dropped.items():
            found = droppable(a, [i])  # the block of each kind that can go alone
            out += [a.layers[i].blocks[found[kind][i]] for kind in kinds]
        return out

    def kept_layers(self) -> list[int]:
        """The parent layer behind each child layer (all of them when depth is unchanged)."""
        return list(range(len(self.analysis.layers))) if self.layers is None else self.layers

    def child_sizes(self, stack: str | None = None) -> dict[str, int]:
        """The child's residual width, and each per-layer size (FFN by role, heads, KV
        heads, head_dim) that is the same in every layer of `stack` (None: of the stacks on the
        main residual stream, `Analysis.residual`)."""
        a = self.analysis
        sizes = {"hidden_size": self.new_size(a.stream_of(stack))}
        # a layer the child drops says nothing of its sizes, unless no kept layer holds
        # that size (a hybrid's only attention layer dropped): then the config states
        # the plan's cut, which no layer of the child reads
        kept = set(self.kept_layers())
        sizes |= self._layer_sizes(stack, range(len(a.layers)))
        sizes |= self._layer_sizes(stack, kept)
        ks = {
            k
            for layer in a.layers
            for node, k, whole in a.top_k(layer)
            if whole and "topk" in str(node.target)
        }
        if ks:  # the routers' top-k
            sizes["num_experts_per_tok"] = self.top_k or (ks.pop() if len(ks) == 1 else None)
        return {k: v for k, v in sizes.items() if v is not None}

    def _layer_sizes(self, stack: str | None, layers) -> dict[str, int]:
        """Each per-layer size that is the same in every one of `layers` of `stack`."""
        a = self.analysis
        sizes: dict[str, int] = {}
        per_layer: dict[str, set[int]] = {}
        for i, layer in enumerate(a.layers):
            if i not in layers:
                continue
            if layer.stack != stack if stack is not None else layer.stream != a.residual:
                continue
            gone = self.dropped.get(i, ())  # a dropped block says nothing of its sizes
            if layer.experts and "mlp" not in gone:
                experts = math.prod(self.new_size(g) for g in layer.experts)
                per_layer.setdefault("num_experts", set()).add(experts)
            # each FFN role's width (a layer without a found FFN says nothing about it)
            for role, width in layer.widths({g: self.new_size(g) for g in layer.ffn}).items():
                if "mlp" not in gone:
                    per_layer.setdefault(role, set()).add(width)
            # a hybrid's other kind of attention: not the config's
            if a.cuts_heads(layer) and "attention" not in gone:
                heads = math.prod(self.new_size(g) for g in layer.heads)
                kv = math.prod(self.new_size(g) for g in layer.kv)
                per_layer.setdefault("num_heads", set()).add(heads)
                per_layer.setdefault("num_kv_heads", set()).add(kv)
                per_layer.setdefault("head_dim", set()).add(layer.head_dim)
        for key, values in per_layer.items():
            if len(values) == 1:
                sizes[key] = values.pop()
        return sizes

    def kept_by_stack(self) -> dict[str, list[int]]:
        """Per stack of layers (`model.encoder.layers`, ...): the parent layer behind each
        of its child layers, in order."""
        layers = self.analysis.layers
        out: dict[str, list[int]] = {stack: [] for stack in self.analysis.stacks}
        for i in self.kept_layers():
            out[layers[i].stack].append(i)
        return out

    def parent_name(self, child_name: str) -> str:
        """The parent's name for a tensor the child's class calls `child_name`: child layer
        j of a stack holds the parent layer kept j-th in that stack
        (`model.layers.1.mlp.up_proj.weight` of a child that keeps parent layers [0, 2] is
        the parent's `model.layers.2.mlp.up_proj.weight`)."""
        layers = self.analysis.layers
        if self.layers is None or not layers:
            return child_name
        for owner, kept in self.lists().items():
            if not child_name.startswith(owner + "."):
                continue
            index, _, rest = child_name[len(owner) + 1 :].partition(".")
            if not index.isdigit() or int(index) >= len(kept):
                return child_name
            return f"{owner}.{layers[kept[int(index)]].name.rpartition('.')[2]}.{rest}"
        return child_name

    def lists(self) -> dict[str, list[int]]:
        """Every module list that holds layers or parts of them (an `ffns` list beside its
        `attentions`), with the parent layer behind each of its child entries."""
        out = {}
        for stack, kept in self.kept_by_stack().items():
            for layer in self.analysis.layers:
                if layer.stack == stack:
                    out.update({part.rpartition(".")[0]: kept for part in layer.parts})
        return out
