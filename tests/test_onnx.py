"""A slice of the zoo (below): each shrunk child exports to ONNX with dynamic batch and
sequence axes and matches onnxruntime at two other sizes. The child is cut in width and in
depth, to one layer (export time grows by about 3 s a layer, and another copy of the
same layer exports the same ops). Hugging Face children are exported with their KV cache
turned on, as in most saved language models: the export turns it off for the trace and
back on after."""

import pytest
import torch

from surgeon.api import subclone
from surgeon.emit.onnx import check_onnx, emit_onnx, export_onnx, fixed_axes, fresh_like
from tests import zoo
from tests.helpers import shrink_plan

# The single-pass export on a slice of the zoo: every encoder and vision model, the plain
# module (fused qkv), and a causal LM with partial rotary and parallel blocks with fused
# per-head qkv (GPT-NeoX). GPT-2's fused qkv is nanoGPT's, Phi's layout is GPT-NeoX's;
# GQA and rotary (Llama) are exported by tests/test_decoder.py, soft-capping and sliding
# windows (Gemma2) by benchmarks/onnx_decoders.py. A causal LM's
# `--onnx` is the KV-cache decoder: tests/test_decoder.py, and every zoo causal LM in
# benchmarks/onnx_decoders.py.
LEFT_TO_THE_BENCHMARK = {"gpt2", "llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2"}
ONNX_SLICE = [n for n in zoo.NAMES if n not in LEFT_TO_THE_BENCHMARK | {"phi3", "opt", "phi"}]


@pytest.mark.parametrize("name", ONNX_SLICE)
def test_shrunk_child_matches_onnxruntime(prepared, name, tmp_path):
    p = prepared(name)
    depth = [0]
    example = p.example
    child = subclone(p.parent, {**shrink_plan(name), "depth": depth})
    config = getattr(child.model, "config", None)
    assert config is None or config.num_hidden_layers == len(depth)
    if config is not None and hasattr(config, "use_cache"):
        config.use_cache = True
    path = export_onnx(child.model, example, tmp_path / "child.onnx")
    sizes = [(3, 5), (1, 13)]  # batch, sequence: neither is the traced (2, 8)
    worst = check_onnx(
        child.model,
        path,
        [fresh_like(example, b, s, zoo.VOCAB, i) for i, (b, s) in enumerate(sizes)],
    )
    assert worst < 1e-4
    if config is not None and hasattr(config, "use_cache"):
        assert config.use_cache  # restored


def test_sizes_the_forward_fixes_are_named_and_checked_as_traced(tmp_path):
    model, example = zoo.per_item()
    with pytest.warns(UserWarning, match=r"x\[0\]=2"):
        worst = emit_onnx(model, example, tmp_path)
    assert fixed_axes(tmp_path / "model.onnx") == ["x[0]=2"]
    assert worst < 1e-5


def test_a_forward_that_branches_on_its_input_values_exports_the_branch_taken(tmp_path):
    model, example = zoo.branches()
    with pytest.warns(UserWarning, match="the ONNX file computes the branch the example takes"):
        export_onnx(model, example, tmp_path / "model.onnx")
    same = (example[0].flip(0) + 1,)  # another input that takes the example's branch
    assert check_onnx(model, tmp_path / "model.onnx", [example, same]) < 1e-5


def test_complex_ops_without_an_onnx_translation_export_on_pairs(tmp_path):
    model, example = zoo.complex_rotary()
    assert emit_onnx(model, example, tmp_path) < 1e-5  # two other batch and sequence sizes


def test_as_strided_of_a_view_reads_its_storage_as_pytorch_does(tmp_path):
    """The exporter's `as_strided` reads its input's values in their logical order; here
    they are a view of the storage in another order (Longformer's chunks)."""
    model, example = zoo.strided_chunks()
    h = model.a(example[0].transpose(0, 1)).view(8, 2, 3, 4).permute(1, 2, 0, 3)
    h = h.reshape(6, 8, 4)  # the chunks by hand: positions 0-3, 2-5, 4-7 of each row
    by_hand = model.c(torch.stack([h[:, i : i + 4] for i in (0, 2, 4)], 1))
    assert torch.allclose(model(*example), by_hand)
    export_onnx(model, example, tmp_path / "model.onnx")
    again = (torch.randn(2, 8, 8),)
    assert check_onnx(model, tmp_path / "model.onnx", [example, again]) < 1e-5


def test_numbers_in_the_output_are_left_out_of_the_onnx_file(tmp_path):
    """A forward that returns numbers beside its tensors (MaskFormer-Swin's spatial
    sizes): the file's outputs are the tensors, checked against the module's."""
    import onnx

    model, example = zoo.NumbersOut(), (torch.randn(2, 5, 8),)
    assert emit_onnx(model, example, tmp_path) < 1e-5  # at two other batch and lengths
    assert len(onnx.load(str(tmp_path / "model.onnx")).graph.output) == 1
