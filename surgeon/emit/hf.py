"""Rebuild the parent's Hugging Face class around the child's weights, from the config
`surgeon/fit.py` fitted, and check it against the graph: the rebuilt model must have
exactly the child's tensor shapes and compute what the child graph computes.
"""

from __future__ import annotations

import ast
import functools
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from ..errors import InvariantError, PlanError, first_line
from ..fit import config_value
from ..frontends import output_tensors
from ..passes.state import SurgeryState
from .decoder import is_causal_lm
from .graph import UNREAD, take, unread_cuts

__all__ = ["is_hf_model", "emit_hf"]


def is_hf_model(model: nn.Module) -> bool:
    """Whether `model` is a transformers `PreTrainedModel`."""
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return isinstance(model, PreTrainedModel)


def emit_hf(parent: nn.Module, config: Any, child: fx.GraphModule, state: SurgeryState):
    """The parent's class built from `config`, loaded with the child's weights, ties
    restored, buffers rebuilt by its constructor; checked against the child graph."""
    model = type(parent)(config)
    table = state.graph.params
    own = {
        n: t
        for n, t in (
            *child.named_parameters(remove_duplicate=False),
            *child.named_buffers(remove_duplicate=False),
        )
    }
    by_canonical = {table.canonical(n): t for n, t in own.items() if n in table}
    parent_tensors = parent.state_dict()
    state_dict, fresh, guessed = {}, [], []
    for name, init in model.state_dict().items():
        source_name = state.parent_name(name)  # child layer j: the graph's layer it came from
        used = source_name in table and table.canonical(source_name) in state.analysis.dims.tensors
        source = own.get(source_name)
        if source is None and source_name in table:
            source = by_canonical.get(table.canonical(source_name))
        if not used or source is None:
            # not read by the traced forward, or read by nothing that reaches its outputs
            # (a mask token, a contact head, the pooler of a masked LM): the parent's when
            # the child's class gives it the same shape, else the class's own init
            source = parent_tensors.get(source_name)
            how = (
                None
                if source is None
                else unread_cuts(state, source.shape, init.shape, source_name)
            )
            if how is not None and source.shape != init.shape:  # cut as the groups it shares
                for axis, kept in how[0]:
                    source = take(source, axis, kept)
                guessed += [name] if how[1] else []
            elif source is None or source.shape != init.shape:
                source = (
                    init if init.device.type != "meta" else torch.zeros_like(init, device="cpu")
                )
                fresh.append(name)
        state_dict[name] = source.detach().clone()
    if fresh:
        warnings.warn(
            f"{len(fresh)} tensor(s) that the traced forward never reads keep "
            f"{type(model).__name__}'s own initialisation in the child: {', '.join(fresh[:4])}",
            stacklevel=2,
        )
    if guessed:
        warnings.warn(UNREAD.format(n=len(guessed), names=", ".join(guessed[:4])), stacklevel=2)
    model.load_state_dict(state_dict, strict=True, assign=True)  # the child's dtypes too
    model.tie_weights()
    model.eval()
    _adopt_rebuilt_buffers(model, child)
    _adopt_rebuilt_scalars(parent, model, child, state)
    _check_same(model, child, state, parent)
    _save_everything(model)
    return model


def _save_everything(model: nn.Module) -> None:
    """Tensors the class leaves out of its files because its constructor computes them
    (Marian's sinusoidal positions, `_keys_to_ignore_on_save`) are saved all the same: the
    child's are cut from the parent's, and the constructor would compute others for the
    child's width."""
    if getattr(model, "_keys_to_ignore_on_save", None):
        model._keys_to_ignore_on_save = None


def _adopt_rebuilt_buffers(model: nn.Module, child: fx.GraphModule) -> None:
    """Buffers the constructor derives from the config (e.g. an embedding scale of
    sqrt(hidden_size)) hold the child's values: give the graph child the same ones, in
    the dtype the parent had (a bfloat16 parent's graph expects bfloat16 buffers)."""
    persistent = set(model.state_dict())
    for name, buffer in list(model.named_buffers()):
        if name in persistent:
            continue
        owner, _, attr = name.rpartition(".")
        try:
            module = child.get_submodule(owner) if owner else child
        except AttributeError:
            continue
        old = module._buffers.get(attr)
        if old is not None and old.shape == buffer.shape:
            value = buffer.detach().to(old.dtype)
            module._buffers[attr] = value.clone()
            model.get_submodule(owner)._buffers[attr] = value


def _adopt_rebuilt_scalars(parent: nn.Module, model: nn.Module, child: fx.GraphModule, state):
    """Float attributes that a module's constructor derives from the config (an embedding
    scale of sqrt(hidden_size)) are constants in the graph: where the rebuilt module holds
    another value than the parent's, the graph's calls inside that module that pass the
    parent's value take the child's, as `_adopt_rebuilt_buffers` does for buffers. So do
    the square root of a size (an int attribute, or a field of the module's config) and
    its inverse, also where the forward makes it a tensor (`torch.tensor(hidden ** 0.5)`).
    Where two attributes of a module hold the parent's value and the child's class sets
    them apart (LongCat's q-LoRA scale sqrt(hidden / rank) and its attention's scale
    head_dim ** -0.5, both 24 ** -0.5 in a parent), the attribute a call passes is read
    from the source line the trace recorded for it (`_read_attribute`)."""
    changed = _changed_scalars(parent, model, state)
    if not changed:
        return
    for node in child.graph.nodes:
        swap = changed.get(_owner(node))
        if node.op == "call_function" and swap:
            node.args = tuple(_swapped(node, a, swap) for a in node.args)
            node.kwargs = {  # baddbmm(..., alpha=inv_norm_factor)
                k: _swapped(node, a, swap) for k, a in node.kwargs.items()
            }
        elif node.op == "get_attr" and node.users:
            swaps = [changed.get(_owner(u)) for u in node.users]
            _swap_constant(child, node, swaps[0] if all(swaps[0] == w for w in swaps) else None)
    child.recompile()


def _swapped(node: fx.Node, value, swap: dict):
    """The child's value of a float the parent's graph passes to `node`."""
    if type(value) is not float:
        return value
    new = swap.get(value, value)
    if not isinstance(new, dict):
        return new
    attribute = _read_attribute(node, new)
    if attribute is None:
        names = " and ".join(sorted(new))
        raise PlanError(
            f"{_owner(node)} holds {value:.6g} in {names}, which the child's config sets "
            f"apart, and the trace does not say which one {node.name} reads: choose sizes "
            "that keep them equal (or leave the sizes they derive from uncut)"
        )
    return new[attribute]


def _read_attribute(node: fx.Node, candidates: dict[str, float]) -> str | None:
    """Which of `candidates` (attribute names) the call `node` passes: the innermost
    frame of the stack the trace recorded whose statement names one of them
    (`q * self.mla_scale_q_lora`, or `scaling=self.scaling` in a call over several
    lines), where all it names agree on the value; None where none says."""
    trace = node.meta.get("stack_trace") or ""
    frames = re.findall(r'File "([^"]+)", line (\d+), in \w+\n\s*(.*)', trace)
    for path, line, text in reversed(frames):
        statement = _statements(path).get(int(line), text)
        named = [a for a in candidates if re.search(rf"\.{re.escape(a)}\b", statement)]
        if named:
            values = {candidates[a] for a in named}
            return named[0] if len(values) == 1 else None
    return None


@functools.lru_cache(maxsize=32)
def _statements(path: str) -> dict[int, str]:
    """Line number -> the text of the simple statement that spans it, in a source file."""
    try:
        source = Path(path).read_text()
        tree = ast.parse(source)
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return {}
    lines, out = source.splitlines(), {}
    for stmt in ast.walk(tree):
        if isinstance(stmt, ast.stmt) and not hasattr(stmt, "body"):
            text = "\n".join(lines[stmt.lineno - 1 : stmt.end_lineno])
            for k in range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1):
                out.setdefault(k, text)
    return out


def _changed_scalars(parent: nn.Module, model: nn.Module, state) -> dict[str, dict]:
    """Per module path of the parent: {the parent's value: the rebuilt module's}, or
    {the parent's value: {attribute: the rebuilt module's}} where attributes that hold
    the same value in the parent hold different ones in the rebuilt module."""
    modules = dict(model.named_modules())
    child_path = {state.parent_name(f"{p}.w")[:-2]: p for p in modules if p}
    changed: dict[str, dict] = {}
    new_sizes = state.child_sizes()
    full = replace(state, select={}, top_k=None).child_sizes()
    cut = {(full[k], v) for k, v in new_sizes.items() if full.get(k, v) != v and full[k] > 4}
    for path, old in parent.named_modules():
        new = modules.get(child_path.get(path, path))
        if new is None:
            continue
        floats: dict[float, dict[str, float]] = {}  # every float attribute, changed or not
        roots: dict[float, dict[str, float]] = {}  # square roots of the sizes cut
        for name, value, other in _attribute_pairs(old, new):
            if type(value) is float and type(other) is float:
                floats.setdefault(value, {})[name] = other
            elif type(value) is int and type(other) is int and (value, other) in cut:
                # a size the forward scales by (`x * sqrt(d_model)`, `q * head_dim**-0.5`)
                roots.setdefault(math.sqrt(value), {})[name] = math.sqrt(other)
                roots.setdefault(value**-0.5, {})[name] = other**-0.5
        for value in dict.fromkeys([*floats, *roots]):
            # a float attribute and the root of a cut size may hold one value in the
            # parent (CodeGen's scale head_dim ** -0.5 beside its head count, 8 and 8):
            # which attribute a call passes decides
            by_name = {**floats.get(value, {}), **roots.get(value, {})}
            news = set(by_name.values())
            if news == {value}:
                continue
            swap = changed.setdefault(path, {})
            swap[value] = news.pop() if len(news) == 1 else by_name
            kept = set(floats.get(value, {}).values())
            if kept and kept != {value}:  # and its complement unless a value maps it:
                # `(1 - self.lambda_init) * x`
                one = {n: 1 - v for n, v in floats[value].items()}
                swap.setdefault(1 - value, one.popitem()[1] if len(kept) == 1 else one)
    return changed


def _attribute_pairs(old: nn.Module, new: nn.Module):
    """(name, parent's, rebuilt's) of each attribute of a module, and of each field of its
    config where it holds one."""
    mine = vars(new)
    for key, value in vars(old).items():
        other = mine.get(key)
        yield key, value, other
        if hasattr(value, "to_dict") and hasattr(other, "to_dict"):
            yield from ((k, v, config_value(other, k)) for k, v in vars(value).items())


def _owner(node: fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else None


def _swap_constant(child: fx.GraphModule, node: fx.Node, swap: dict | None) -> None:
    """A number the forward made a tensor, read only inside modules whose scalars change."""
    owner, _, attr = node.target.rpartition(".")
    module = child.get_submodule(owner) if owner else child
    value = getattr(module, attr, None)
    if (
        not swap
        or not isinstance(value, torch.Tensor)
        or value.dim()
        or not value.is_floating_point()
    ):
        return
    new = swap.get(value.item())
    if new is None:  # float32 stores sqrt(64) exactly, not sqrt(2): compare in its dtype
        near = [v for k, v in swap.items() if torch.tensor(k, dtype=value.dtype) == value]
        new = near[0] if near else None
    if isinstance(new, dict):  # as the calls that read it pass it
        new = {_swapped(user, value.item(), {value.item(): new}) for user in node.users}
        new = new.pop() if len(new) == 1 else None
    if new is not None:
        setattr(module, attr, torch.tensor(new, dtype=value.dtype))


@torch.no_grad()
def _check_same(
    model: nn.Module, child: fx.GraphModule, state: SurgeryState, parent: nn.Module
) -> None:
    """The rebuilt model computes what the child graph computes, on three inputs:

    1. the traced inputs: every output, graph against rebuilt model;
    2. where the model takes token ids and an `attention_mask`: the same tokens with the
       last quarter of row 0 masked out (right padding). The graph, traced by
       torch.export with an all-ones mask, may have specialised on it, so for a causal
       language model the rebuilt model's outputs at the unmasked positions (row 0's
       first positions, every other row) are compared with the graph's on the traced
       inputs: causally they only see unmasked tokens. For other models the rebuilt
       model's outputs are only checked to be finite;
    3. a second sequence length (half the traced one): the graph's shapes are fixed at
       the traced ones, so for a causal language model the rebuilt model's outputs on
       the first half of the tokens are compared with the graph's first positions on
       the traced inputs; for other models they are checked to be finite.

    The traced inputs must agree to 1e-5 of the output scale; the other two run other
    kernels (masked attention, another length), so in bfloat16 or float16 they may
    differ by 8 of the dtype's eps. `InvariantError` on a difference. Inputs the parent
    refuses as well (a prompt whose image tokens a half length cuts) are skipped."""
    inputs = state.graph.inputs
    try:
        raw = inputs.call(child)
    except Exception as e:  # noqa: BLE001 - the child graph itself is broken: a bug
        raise InvariantError(
            f"the child graph fails on the traced inputs ({first_line(e, 160)}): please "
            "report this model"
        ) from e
    try:
        rebuilt = inputs.call(model)
    except Exception as e:  # noqa: BLE001 - the class's own kernels refuse these sizes
        raise PlanError(
            f"{type(model).__name__} cannot run this child in its own forward "
            f"({first_line(e, 160)}): choose other sizes (a multiple of 8 for each width "
            "runs on every kernel)"
        ) from e
    want, got = _same_fields(raw, rebuilt)
    _compare(model, want, got, "the traced inputs", False, _moved_layers(state))
    want = output_tensors(raw)
    ids = inputs.kwargs.get("input_ids")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[1] < 2:
        return
    causal = is_causal_lm(model) and _causal_in_fact(model, inputs.kwargs)
    seq = ids.shape[1]
    logits = want[0]
    mask = inputs.kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.shape == ids.shape:
        padded = mask.clone()
        keep = seq - max(1, seq // 4)
        padded[0, keep:] = 0
        out = _variant(model, parent, (), {**inputs.kwargs, "attention_mask": padded})
        if out is None:
            pass
        elif causal:
            _compare(model, [logits[0, :keep]], [out[0, :keep]], "a padded attention mask")
            if ids.shape[0] > 1:
                _compare(model, [logits[1:]], [out[1:]], "a padded attention mask")
        else:
            _finite(model, out, "a padded attention mask")
    half = seq // 2
    short = {
        k: v[:, :half] if isinstance(v, torch.Tensor) and v.shape == ids.shape else v
        for k, v in inputs.kwargs.items()
    }
    out = _variant(model, parent, inputs.args, short)
    if out is None:
        return
    if causal:
        _compare(model, [logits[:, :half]], [out], f"a sequence length of {half}")
    else:
        _finite(model, out, f"a sequence length of {half}")


def _variant(model: nn.Module, parent: nn.Module, args, kwargs) -> torch.Tensor | None:
    """The rebuilt model's first output on other inputs than the traced ones; None where
    the parent refuses them too."""
    try:
        return output_tensors(model(*args, **kwargs))[0]
    except Exception:
        try:
            parent(*args, **kwargs)
        except Exception:  # noqa: BLE001 - not inputs this model takes
            return None
        raise


def _same_fields(want, got) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The tensors of two outputs, paired field by field (`text_output.hidden_states`):
    a field holding another number of tensors in each (one per layer, where the graph
    keeps the entries of removed layers) is left out; the first tensors always pair."""
    a, b = _by_field(want), _by_field(got)
    same = [k for k, ws in a.items() if len(b.get(k, ())) == len(ws)]
    pairs = [pair for k in same for pair in zip(a[k], b[k], strict=True)]
    flat_a, flat_b = output_tensors(want), output_tensors(got)
    pairs = [(flat_a[0], flat_b[0])] + pairs if flat_a and flat_b else pairs
    if len(pairs) < 2:  # not keyed alike (plain tuples): in order, as many as both have
        pairs = list(zip(flat_a, flat_b, strict=False))
    return [w for w, _ in pairs], [g for _, g in pairs]


def _by_field(output, prefix: str = "") -> dict[str, list[torch.Tensor]]:
    if isinstance(output, Mapping):
        fields = {}
        for k, v in output.items():
            fields.update(_by_field(v, f"{prefix}{k}."))
        return fields
    tensors = output_tensors(output)
    return {prefix.rstrip("."): tensors} if tensors else {}


def _causal_in_fact(model: nn.Module, kwargs: dict) -> bool:
    """Whether another last token leaves every earlier output as it was: a causal-LM class
    may still attend both ways (BERT's LM head with `is_decoder` off)."""
    ids = kwargs["input_ids"]
    other = ids.clone()
    other[:, -1] = torch.where(ids[:, -1] > 0, ids[:, -1] - 1, ids[:, -1] + 1)
    a = output_tensors(model(**kwargs))[0][:, :-1]
    b = output_tensors(model(**{**kwargs, "input_ids": other}))[0][:, :-1]
    return torch.allclose(a, b, atol=1e-5 * max(a.abs().max().item(), 1.0), rtol=1e-4)


def _moved_layers(state) -> str:
    """Where depth put parent layers at other positions of their stack: a note for the
    error a rebuilt model that differs gives ("" where no layer moved)."""
    layers = state.analysis.layers
    moved, place = [], {}
    for i in state.kept_layers():
        stack = layers[i].stack
        mine = [k for k, x in enumerate(layers) if x.stack == stack]
        j = place[stack] = place.get(stack, -1) + 1
        if mine.index(i) != j:
            moved.append(f"{mine.index(i)} to {j}")
    if not moved:
        return ""
    return (
        f" (depth moved layers of their stacks: {', '.join(moved[:4])}; a class that builds "
        "each layer by its position, as shifted windows that alternate are, computes them as "
        "the layers there: a depth that keeps each layer at its place, depth: last or a "
        "list, may fit)"
    )


def _compare(
    model: nn.Module, want, got, what: str, other_kernels: bool = True, note: str = ""
) -> None:
    """`other_kernels`: the two ran different kernels (another length, a mask), so they
    round differently: in bfloat16 or float16 the tolerance is 8 of the dtype's eps.
    `note`: said after the difference (what may explain it)."""
    for w, g in zip(want, got, strict=False):  # the first outputs (some add optional ones)
        scale = max(w.abs().max().item(), 1.0)
        eps = torch.finfo(w.dtype).eps if w.is_floating_point() and other_kernels else 0.0
        atol, rtol = max(1e-5, 8 * eps) * scale, max(1e-4, 8 * eps)
        if g.shape != w.shape or not torch.allclose(g, w, atol=atol, rtol=rtol):
            diff = (g - w).abs().max().item() if g.shape == w.shape else float("nan")
            raise InvariantError(
                f"the rebuilt {type(model).__name__} differs from the child graph by "
                f"{diff:.3g} on {what}{note}: please report this model"
            )


def _finite(model: nn.Module, out: torch.Tensor, what: str) -> None:
    if out.is_floating_point() and not torch.isfinite(out).all():
        raise InvariantError(
            f"the rebuilt {type(model).__name__} gives non-finite outputs on {what}: please "
            "report this model"
        )
