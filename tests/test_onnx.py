"""Every zoo model's shrunk child exports to ONNX with dynamic batch and sequence axes and
matches onnxruntime at two other sizes. The child is cut in width and in depth (its first
two layers, which keep Gemma2's alternating attention kinds): export time grows with the
graph, and a third copy of the same layer checks nothing more."""

import pytest

from surgeon.api import subclone
from surgeon.emit.onnx import check_onnx, export_onnx, fresh_like
from tests import zoo
from tests.helpers import shrink_plan


@pytest.mark.parametrize("name", zoo.NAMES)
def test_shrunk_child_matches_onnxruntime(prepared, name, tmp_path):
    example = prepared(name).example
    child = subclone(prepared(name).parent, {**shrink_plan(name), "depth": [0, 1]})
    assert child.model is child.graph or child.model.config.num_hidden_layers == 2
    path = export_onnx(child.model, example, tmp_path / "child.onnx")
    sizes = [(3, 5), (1, 13)]  # batch, sequence: neither is the traced (2, 8)
    worst = check_onnx(
        child.model,
        path,
        [fresh_like(example, b, s, zoo.VOCAB, i) for i, (b, s) in enumerate(sizes)],
    )
    assert worst < 1e-4


def test_export_turns_the_kv_cache_off(tmp_path):
    model, example = zoo.build("llama")
    model.config.use_cache = True  # as in most saved language models
    child = subclone(model, shrink_plan("llama"), example)
    assert child.model.config.use_cache
    path = export_onnx(child.model, example, tmp_path / "cache.onnx")
    assert check_onnx(child.model, path, [fresh_like(example, 2, 6, zoo.VOCAB)]) < 1e-4
    assert child.model.config.use_cache
