"""Export the child to ONNX (torch.onnx, dynamo) with dynamic batch and sequence axes, and
check it with onnxruntime on fresh inputs of other sizes."""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from ..errors import InvariantError, SurgeonError, first_line
from ..frontends import as_inputs, output_tensors, quiet_torch_logs
from ..frontends.export import _windows_not_strides
from ..frontends.hf import tracing_settings

__all__ = [
    "check_onnx",
    "emit_onnx",
    "export_onnx",
    "fresh_like",
    "onnx_ready",
    "torch_onnx_export",
]


def _dynamic_shapes(inputs) -> tuple[Any, Any]:
    """Batch (axis 0) of every tensor is dynamic; so is the sequence (axis 1) of integer
    tensors (token ids, masks): an encoder-decoder's `decoder_*` inputs have a sequence
    of their own. Image sizes stay fixed."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    seq = torch.export.Dim("sequence", min=2, max=8192)
    target = torch.export.Dim("decoder_sequence", min=2, max=8192)

    def spec(t, name: str = ""):
        if not isinstance(t, torch.Tensor):
            return None
        dims = {0: batch}
        if t.dim() >= 2 and not t.is_floating_point():
            dims[1] = target if name.startswith("decoder_") else seq
        return dims

    kwargs = {k: spec(v, k) for k, v in inputs.kwargs.items()}
    return tuple(spec(a) for a in inputs.args), kwargs


def onnx_ready(model: nn.Module) -> nn.Module:
    """`model`, or a float32 copy of it when it holds other floating dtypes: onnxruntime's
    CPU kernels lack bfloat16 for common ops (Mul, among others), so the ONNX file of a
    bfloat16 or float16 child is float32."""
    dtypes = {t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()}
    if dtypes <= {torch.float32}:
        return model
    import copy

    return copy.deepcopy(model).float()


def export_onnx(model: nn.Module, example_inputs: Any, path: str | Path) -> Path:
    """Write `model` to `path` (weights in `path`.data beside it)."""
    inputs = as_inputs(example_inputs)
    args_spec, kwargs_spec = _dynamic_shapes(inputs)
    model.eval()
    shapes = _by_signature(model, args_spec, kwargs_spec)
    with tracing_settings(model):  # no KV cache in the outputs
        try:
            torch_onnx_export(
                "ONNX export", model, inputs.args, path, kwargs=dict(inputs.kwargs),
                dynamic_shapes=shapes,
            )  # fmt: skip
        except SurgeonError:
            with _eager_attention(model) as changed:
                if not changed:
                    raise
                torch_onnx_export(
                    "ONNX export", model, inputs.args, path, kwargs=dict(inputs.kwargs),
                    dynamic_shapes=shapes,
                )  # fmt: skip
    return Path(path)


@contextlib.contextmanager
def _eager_attention(model: nn.Module) -> Iterator[bool]:
    """A Hugging Face model set to its eager attention while exporting again: the
    exporter re-runs SDPA's output with other strides than export recorded, and a
    `view` after its transpose fails (T5: "Cannot view a tensor with shape ..."). The
    file is checked against the model either way. Yields whether it changed anything."""
    config = getattr(model, "config", None)
    was = getattr(config, "_attn_implementation", None)
    if was in (None, "eager") or not hasattr(model, "set_attn_implementation"):
        yield False
        return
    try:
        model.set_attn_implementation("eager")
    except Exception:  # noqa: BLE001 - a class without an eager path
        yield False
        return
    try:
        yield True
    finally:
        model.set_attn_implementation(was)


def torch_onnx_export(what: str, model: nn.Module, args: tuple, path: str | Path, **options):
    """`torch.onnx.export(..., dynamo=True)` to `path`, quietly; a failure is one
    `SurgeonError` line that starts with `what` and names the innermost cause."""
    try:
        with quiet_torch_logs(), warnings.catch_warnings():
            # "the axis name batch will not be used, since it shares the same shape
            # constraints with another axis: batch": the names are used, as wanted
            warnings.filterwarnings("ignore", "# The axis name", UserWarning)
            options = {"custom_translation_table": _translations(), **options}
            again = None
            try:
                program = torch.onnx.export(
                    model, args, str(path), dynamo=True, report=False, verbose=False, **options
                )
            except Exception as e:  # noqa: BLE001 - retried below, or raised
                cause = str(_cause(e))
                if "data-dependent expression" in cause:
                    again = _branch_taken(model, args, options.get("kwargs") or {})
                elif "complex-valued input" in cause:
                    again = _complex_as_pairs(model, args, options)
                elif "compatible OpOverload for aten.sub" in cause:
                    again = _scalar_minus(model, args, options)
                elif re.search(r"'(int|float|bool)' object has no attribute 'name'", cause):
                    again = _tensor_outputs(model, args, options)
                else:
                    raise
            else:
                if _reads_strides(program):
                    again = program.exported_program
            if again is not None:
                _windows_not_strides(again.graph_module)
                program = torch.onnx.export(
                    again, (), str(path), dynamo=True, report=False, verbose=False,
                    custom_translation_table=options["custom_translation_table"],
                )  # fmt: skip
    except Exception as e:  # noqa: BLE001 - the exporter's failures become one line
        raise SurgeonError(f"{what} failed: {first_line(_cause(e))}") from e
    if program is None:
        raise SurgeonError(f"{what} produced nothing")


def _reads_strides(program) -> bool:
    """Whether the exported program calls `as_strided`: the exporter's translation reads
    its input's values in their logical order as if they were its storage, which they
    are not for a view with other strides (Longformer's chunks of a transposed query),
    and the file then computes something else. The program is exported again with such
    calls written as the ops they mean (`frontends.export._windows_not_strides`, as the
    tracing frontend does: the strides its nodes' values record are PyTorch's)."""
    graph = getattr(getattr(program, "exported_program", None), "graph", None)
    return graph is not None and any(
        n.target is torch.ops.aten.as_strided.default for n in graph.nodes
    )


def _translations() -> dict:
    """ONNX translations of ops the exporter has none for: `_is_all_true`, the check a
    forward makes with `torch._check` on a tensor (LLaVA's image tokens against its image
    features), whose result only feeds a runtime assertion that ONNX drops."""
    from onnxscript import opset18 as op

    def is_all_true(x):
        return op.Not(op.ReduceMax(op.Cast(op.Not(x), to=7), keepdims=0) > 0)

    return {torch.ops.aten._is_all_true.default: is_all_true}


def _branch_taken(model: nn.Module, args: tuple, kwargs: dict):
    """A forward that branches on its input values (LED's `if is_global_attn:`),
    exported as the tracing frontend does (`torch.export.draft_export`): for the branch
    the example takes, at the example's sizes (`emit_onnx` then checks the file at those
    sizes and says so). ONNX keeps no runtime assertion: the file computes that branch
    for every input, which the warning says."""
    warnings.warn(
        f"{type(model).__name__} branches on its input values: the ONNX file computes "
        "the branch the example takes, for every input (export with an example of the "
        "inputs it will see)",
        stacklevel=4,
    )
    return torch.export.draft_export(model, args, kwargs, strict=False)


# Complex ops the ONNX exporter has no complex-valued translation for, done instead on the
# (real, imaginary) pairs it stores complex tensors as: op -> how its dims move (the pair
# axis comes last, so a negative dim counts one further).
_ON_PAIRS = {torch.ops.aten.unsqueeze.default: 1}


def _complex_as_pairs(model: nn.Module, args: tuple, options: dict):
    """The exported program of `model` with each complex op in `_ON_PAIRS` (Llama 4's
    rotary unsqueezes complex frequencies) applied to `view_as_real` of its input, then
    viewed as complex again: the same values, in ops the exporter translates."""
    from torch._guards import detect_fake_mode

    program = torch.export.export(
        model, args, options.get("kwargs") or {}, dynamic_shapes=options.get("dynamic_shapes"),
        strict=False,
    )  # fmt: skip
    graph = program.graph_module.graph
    for node in list(graph.nodes):
        val = node.args[0].meta.get("val") if node.args and hasattr(node.args[0], "meta") else None
        if node.target not in _ON_PAIRS or val is None or not val.is_complex():
            continue
        dim = node.args[1]
        dim = dim if dim >= 0 else dim - _ON_PAIRS[node.target]
        with graph.inserting_before(node), detect_fake_mode([val]):
            pairs = graph.call_function(torch.ops.aten.view_as_real.default, (node.args[0],))
            pairs.meta["val"] = torch.view_as_real(val)
            moved = graph.call_function(node.target, (pairs, dim))
            moved.meta["val"] = node.target(pairs.meta["val"], dim)
            back = graph.call_function(torch.ops.aten.view_as_complex.default, (moved,))
            back.meta["val"] = torch.view_as_complex(moved.meta["val"])
        node.replace_all_uses_with(back)
        graph.erase_node(node)
    program.graph_module.recompile()
    return program


def _program(model: nn.Module, args: tuple, options: dict):
    """`model` exported as the ONNX exporter would (its dynamic shapes; without them for a
    forward that fixes its sizes, XLNet's positions), to be rewritten and exported again."""
    kwargs = options.get("kwargs") or {}
    try:
        return torch.export.export(
            model, args, kwargs, dynamic_shapes=options.get("dynamic_shapes"), strict=False
        )
    except Exception:  # noqa: BLE001 - the exporter falls back so too
        return torch.export.export(model, args, kwargs, strict=False)


def _tensor_outputs(model: nn.Module, args: tuple, options: dict):
    """The program of `model` returning its tensors alone: an output that is a number
    (MaskFormer-Swin's `hidden_states_spatial_dimensions`) is a constant, which the
    exporter cannot name as a graph output."""
    from torch.export.graph_signature import OutputKind, TensorArgument
    from torch.utils import _pytree as pytree

    program = _program(model, args, options)
    output = program.graph_module.graph.output_node()
    specs = program.graph_signature.output_specs
    kept = [
        (arg, spec)
        for arg, spec in zip(output.args[0], specs, strict=True)
        if isinstance(arg, fx.Node)
        and (spec.kind is not OutputKind.USER_OUTPUT or isinstance(spec.arg, TensorArgument))
    ]
    output.args = (tuple(arg for arg, _ in kept),)
    specs[:] = [spec for _, spec in kept]
    users = sum(spec.kind is OutputKind.USER_OUTPUT for _, spec in kept)
    call = program.module_call_graph[0].signature  # the outputs, unflattened: a tuple
    call.out_spec = pytree.tree_flatten(tuple(range(users)))[1]
    program.graph_module.recompile()
    return program


def _scalar_minus(model: nn.Module, args: tuple, options: dict):
    """The decomposed program of `model` with each `number - tensor` written as
    `-tensor + number`: PyTorch decomposes `rsub` (XLNet's `1.0 - attention_mask`) into
    `aten.sub(number, tensor)`, which the exporter's type promotion cannot run again."""
    from torch._guards import detect_fake_mode

    program = _program(model, args, options).run_decompositions()
    graph = program.graph_module.graph
    for node in list(graph.nodes):
        if node.target is not torch.ops.aten.sub.Tensor or isinstance(node.args[0], fx.Node):
            continue
        number, tensor = node.args[0], node.args[1]
        val = tensor.meta.get("val")
        with graph.inserting_before(node), detect_fake_mode([val]):
            neg = graph.call_function(torch.ops.aten.neg.default, (tensor,))
            neg.meta["val"] = torch.neg(val)
            out = graph.call_function(torch.ops.aten.add.Tensor, (neg, number))
            out.meta["val"] = torch.add(neg.meta["val"], number)
        node.replace_all_uses_with(out)
        graph.erase_node(node)
    program.graph_module.recompile()
    return program


def _cause(e: BaseException) -> BaseException:
    """The exporter wraps the real error; report the innermost one."""
    while e.__cause__ is not None:
        e = e.__cause__
    return e


def _by_signature(model, args_spec, kwargs_spec):
    """dynamic_shapes keyed by the forward's parameter names, as torch.export wants them."""
    import inspect

    params = list(inspect.signature(model.forward).parameters)
    out = {params[i]: s for i, s in enumerate(args_spec) if i < len(params)}
    out.update(kwargs_spec)
    return out


def fresh_like(example_inputs: Any, batch: int, seq: int, vocab: int | None, seed: int = 0):
    """Inputs like the example's, with another batch size and (for token ids) length."""
    g = torch.Generator().manual_seed(seed)
    inputs = as_inputs(example_inputs)

    def make(t):
        if not isinstance(t, torch.Tensor):
            return t
        shape = list(t.shape)
        shape[0] = batch
        if t.is_floating_point():
            return torch.randn(shape, generator=g, dtype=t.dtype)
        if t.dim() >= 2:
            shape[1] = seq
        if t.dtype == torch.bool or int(t.max()) <= 1:  # masks
            return torch.ones(shape, dtype=t.dtype)
        high = vocab or int(t.max()) + 1
        return torch.randint(0, high, shape, generator=g, dtype=t.dtype)

    return type(inputs)(
        tuple(make(a) for a in inputs.args), {k: make(v) for k, v in inputs.kwargs.items()}
    )


@torch.no_grad()
def check_onnx(model: nn.Module, path: str | Path, inputs_list: list[Any], tol: float = 1e-4):
    """Run the ONNX file with onnxruntime on each inputs and compare with PyTorch; returns
    the largest difference relative to the output scale; `InvariantError` above `tol`."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    worst = 0.0
    for example in inputs_list:
        inputs = as_inputs(example)
        # named after the forward's arguments; the rest (positional, or a keyword the
        # exporter renamed, `attention_mask_orig`) in order
        rest = iter([*inputs.args, *(v for k, v in inputs.kwargs.items() if k not in names)])
        feed = {n: (inputs.kwargs[n] if n in inputs.kwargs else next(rest)).numpy() for n in names}
        try:
            got = session.run(None, feed)[0]
        except Exception as e:  # noqa: BLE001 - onnxruntime's own error types
            shapes = {n: tuple(v.shape) for n, v in feed.items()}
            raise SurgeonError(
                f"onnxruntime rejects inputs of shapes {shapes} ({first_line(e, 120)}): the "
                "exported graph fixed a size that the model's forward specialises"
            ) from e
        want = output_tensors(inputs.call(model))[0]
        scale = max(want.abs().max().item(), 1e-6)
        worst = max(worst, (torch.from_numpy(got) - want).abs().max().item() / scale)
    if worst > tol:
        raise InvariantError(
            f"onnxruntime differs from PyTorch by {worst:.2e} of the output scale (> {tol})"
        )
    return worst


def emit_onnx(model: nn.Module, example_inputs: Any, folder: str | Path) -> float:
    """Write `folder`/model.onnx for `model` (float32) and check it with onnxruntime on
    two fresh input shapes; returns the largest difference relative to the output scale."""
    model = onnx_ready(model)
    example = as_inputs(example_inputs)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    first = example.args[0] if example.args else next(iter(example.kwargs.values()))
    batch, seq = first.shape[0], first.shape[1] if first.dim() > 1 else 1
    path = Path(folder) / "model.onnx"
    export_onnx(model, example, path)
    _deterministic(path)
    fixed = fixed_axes(path)
    if fixed:  # the forward specialised them (a loop over the images of a batch)
        warnings.warn(
            f"{path.name} keeps the example's sizes on {', '.join(fixed)} (the model's "
            "forward fixes them): it is checked at those sizes, with fresh values",
            stacklevel=2,
        )
        return check_onnx(model, path, [fresh_like(example, batch, seq, vocab, 1)])
    checks = [
        fresh_like(example, batch + 1, seq + 3, vocab, 1),
        fresh_like(example, 1, max(2, 2 * seq), vocab, 2),
    ]
    return check_onnx(model, path, checks)


RANDOM_OPS = ("RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike")
RANDOM_OPS += ("Bernoulli", "Multinomial")


def _deterministic(path: Path) -> None:
    """`SurgeonError` (the file removed) where the ONNX graph draws random numbers (a
    masked autoencoder's patch noise): onnxruntime draws other numbers than PyTorch, so
    the file cannot be checked against the child."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    drawn = sorted({n.op_type for n in graph.node if n.op_type in RANDOM_OPS})
    if drawn:
        for file in path.parent.glob(f"{path.name}*"):
            file.unlink()
        raise SurgeonError(
            f"the ONNX graph draws random numbers ({', '.join(drawn)}): onnxruntime draws "
            "others than PyTorch, so surgeon cannot check it against the child; pass that "
            "draw in as an input (an argument the forward otherwise fills at random)"
        )


def fixed_axes(path: str | Path) -> list[str]:
    """The axes that `export_onnx` asked to be dynamic (batch, and the sequence of integer
    inputs) but the ONNX file gives a fixed size, as `name[axis]=size`."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    out = []
    for value in graph.input:
        tensor = value.type.tensor_type
        dims = tensor.shape.dim
        integer = tensor.elem_type in (
            onnx.TensorProto.INT64,
            onnx.TensorProto.INT32,
            onnx.TensorProto.BOOL,
        )
        wanted = [0, 1] if integer and len(dims) >= 2 else [0]
        for axis in wanted:
            if axis < len(dims) and dims[axis].HasField("dim_value"):
                out.append(f"{value.name}[{axis}]={dims[axis].dim_value}")
    return out
