"""Traces kept for the life of the process (surgeon.frontends.memo): a model traced again
on the same inputs gets the first graph, copied and bound to its own tensors, op for op
the fresh trace's and computing the model's own output; whatever could change the trace
(the config, a module's attribute, a patched method, the inputs' values, a hook) traces
anew; warnings the trace gave are given again."""

import pytest
import torch

from surgeon.frontends import FRONTENDS, memo, output_tensors, trace
from surgeon.frontends.graph import tensor_of
from tests import zoo


@pytest.fixture
def exports(monkeypatch):
    """The number of torch.export traces made while the test runs."""
    count = [0]
    real = FRONTENDS["export"]

    def counted(model, inputs):
        count[0] += 1
        return real(model, inputs)

    monkeypatch.setitem(FRONTENDS, "export", counted)
    memo.clear()
    yield count
    memo.clear()


def _code(graph) -> str:
    return graph.graph.python_code("self").src


def _shapes(graph) -> list:
    vals = [n.meta.get("val") for n in graph.graph.nodes]
    return [tuple(v.shape) if isinstance(v, torch.Tensor) else None for v in vals]


def test_a_recalled_graph_is_the_fresh_trace_on_the_models_own_tensors(exports):
    first, inputs = zoo.build("llama")
    fresh = trace(first, inputs)
    second, _ = zoo.build("llama")
    second.model.layers[0].mlp.up_proj.weight.data.mul_(2)  # other values, same trace
    recalled = trace(second, inputs)
    assert exports[0] == 1
    assert _code(recalled) == _code(fresh) and _shapes(recalled) == _shapes(fresh)
    assert [e.name for e in recalled.params] == [e.name for e in fresh.params]
    for node in recalled.tensor_nodes():  # the second model's tensors themselves
        assert tensor_of(recalled.module, node.target) is tensor_of(second, node.target)
    with torch.no_grad():
        expect = second(**inputs).logits
        got = output_tensors(recalled(**inputs))[0]
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-6)
    # what a pass does to one copy, the next does not see
    node = next(n for n in recalled.graph.nodes if n.op == "call_function")
    node.meta["val"] = None
    recalled.graph.erase_node(next(iter(recalled.graph.find_nodes(op="output"))))
    again = trace(second, inputs)
    assert _code(again) == _code(fresh) and _shapes(again) == _shapes(fresh)
    assert exports[0] == 1


def test_a_model_loaded_from_a_copy_of_its_folder_recalls_the_trace(exports, tmp_path):
    """Where the weights were read from (`name_or_path`) is no part of the trace."""
    import shutil

    from transformers import AutoModelForCausalLM

    model, inputs = zoo.build("llama")
    model.save_pretrained(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    first, second = (AutoModelForCausalLM.from_pretrained(tmp_path / d) for d in "ab")
    assert first.name_or_path != second.name_or_path
    fresh = trace(first, inputs)
    recalled = trace(second, inputs)
    assert exports[0] == 1 and _code(recalled) == _code(fresh)


def test_a_forward_that_reads_where_the_model_came_from_traces_each_copy(
    exports, tmp_path, monkeypatch
):
    """Remote code may branch on the folder's name (`"chat" in config._name_or_path`):
    where the model's code names it, the path is part of the key."""
    import shutil

    from transformers import AutoModelForCausalLM
    from transformers.models.llama import modeling_llama

    forward = modeling_llama.LlamaMLP.forward

    def by_path(self, x):
        out = forward(self, x)
        return out * 2 if "chat" in self.config._name_or_path else out

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", by_path)
    model, inputs = zoo.build("llama")
    model.save_pretrained(tmp_path / "base")
    shutil.copytree(tmp_path / "base", tmp_path / "chat")
    base, chat = (AutoModelForCausalLM.from_pretrained(tmp_path / d) for d in ("base", "chat"))
    trace(base, inputs)
    graph = trace(chat, inputs)
    assert exports[0] == 2
    with torch.no_grad():
        expect = chat(**inputs).logits
        assert not torch.allclose(expect, base(**inputs).logits)
        got = output_tensors(graph(**inputs))[0]
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-6)


def test_whatever_could_change_the_trace_traces_anew(exports, monkeypatch):
    model, inputs = zoo.build("llama")
    trace(model, inputs)
    other = dict(inputs, input_ids=inputs["input_ids"].flip(-1))  # values, not shapes
    trace(model, other)
    assert exports[0] == 2
    model.config.rms_norm_eps = 1e-3
    trace(model, inputs)
    assert exports[0] == 3
    attention = model.model.layers[0].self_attn
    attention.scaling = 0.5
    scaled = trace(model, inputs)
    assert exports[0] == 4
    assert 0.5 in [a for n in scaled.graph.nodes for a in [*n.args, *n.kwargs.values()]]
    handle = attention.register_forward_hook(lambda m, a, out: None)
    trace(model, inputs)
    trace(model, inputs)
    assert exports[0] == 6  # a hook: never kept
    handle.remove()
    forward = type(attention).forward
    monkeypatch.setattr(type(attention), "forward", lambda self, *a, **k: forward(self, *a, **k))
    trace(model, inputs)
    assert exports[0] == 7
    trace(model, inputs)
    assert exports[0] == 7


def test_the_traces_warnings_are_given_again(exports):
    model, inputs = zoo.warns()
    for _ in range(2):
        with pytest.warns(UserWarning, match="a warning from the forward"):
            trace(model, inputs)
    assert exports[0] == 1
