"""Every zoo model's shrunk child exports to ONNX with dynamic batch and sequence axes and
matches onnxruntime at two other sizes. The child is cut in width and in depth (its first
two layers, which keep Gemma2's alternating attention kinds): export time grows with the
graph, and a third copy of the same layer checks nothing more. Hugging Face children are
exported with their KV cache turned on, as in most saved language models: the export
turns it off for the trace and back on after."""

import pytest

from surgeon.api import subclone
from surgeon.emit.onnx import check_onnx, export_onnx, fresh_like
from tests import zoo
from tests.helpers import shrink_plan


@pytest.mark.parametrize("name", zoo.NAMES)
def test_shrunk_child_matches_onnxruntime(prepared, name, tmp_path):
    example = prepared(name).example
    child = subclone(prepared(name).parent, {**shrink_plan(name), "depth": [0, 1]})
    config = getattr(child.model, "config", None)
    assert config is None or config.num_hidden_layers == 2
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
