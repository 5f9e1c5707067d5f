"""A deep stack's graph from its shallow twin's trace (surgeon.frontends.twin): op for op
the full trace's, analysed alike, computing the model's own output on its weights; a
streamed child made through it is bit for bit the in-memory child (traced whole); where
the twin cannot stand for the model, none is made."""

import pytest
import torch

import surgeon
import surgeon.frontends.twin as twin
from surgeon.analysis import analyse
from surgeon.api import stream_apply, subclone
from surgeon.frontends import trace
from surgeon.frontends.graph import op_name, output_tensors
from tests import zoo
from tests.helpers import assert_embedding_is_a_hand_slice

DEEP = 6  # twice the twin's layers


def _ops(graph):
    return [
        (n.op, op_name(n) if n.op == "call_function" else str(n.target)) for n in graph.graph.nodes
    ]


def _groups(analysis):
    groups = analysis.groups.values()
    layers = [(x.name, x.heads, x.kv, x.ffn, x.experts) for x in analysis.layers]
    return layers, sorted((g.id, g.size, g.role, sorted(g.members)) for g in groups)


@pytest.mark.parametrize(
    "name, layers",
    [  # a slice of benchmarks/twin_zoo.py, which checks every zoo type
        ("llama", DEEP),
        ("gemma2", 8),  # sliding and full attention alternate: a twin of 5 layers
        ("deepseek_v3", DEEP),  # a dense first layer; buffers (score correction) per layer
    ],
)
def test_the_twins_graph_is_the_full_trace(name, layers):
    model, inputs = zoo.build(name, num_hidden_layers=layers)
    full = trace(model, inputs)
    graph = twin.trace_twin(model, inputs)
    assert graph is not None
    assert _ops(graph) == _ops(full)
    assert _groups(analyse(graph)) == _groups(analyse(full))
    with torch.no_grad():
        want = output_tensors(model(**inputs))[0]
        got = output_tensors(graph.module(**inputs))[0]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_no_twin_for_a_forward_that_reads_the_layer_index():
    changes = {"scale_attn_by_inverse_layer_idx": True}  # GPT-2 scales by 1 / (index + 1)
    model, inputs = zoo.build("gpt2", num_hidden_layers=DEEP, **changes)
    assert twin.trace_twin(model, inputs) is None


def test_no_twin_for_a_stack_as_shallow_as_one():
    model, inputs = zoo.build("llama")
    assert twin.trace_twin(model, inputs) is None
    model, inputs = zoo.build("gemma2", num_hidden_layers=DEEP)  # its twin would have 5
    assert twin.trace_twin(model, inputs) is None


def _spy(monkeypatch) -> list:
    """What `trace_twin` returns, call by call."""
    made, twin_trace = [], twin.trace_twin

    def spy(*args):
        made.append(twin_trace(*args))
        return made[-1]

    monkeypatch.setattr(twin, "trace_twin", spy)
    return made


def test_inspect_of_a_deep_model_on_the_meta_device_reads_its_twin(monkeypatch):
    made = _spy(monkeypatch)
    model, _ = zoo.build("llama", "meta", num_hidden_layers=DEEP)
    report = surgeon.inspect(model).to_dict()
    assert made and made[-1] is not None
    assert report["num_layers"] == DEEP


def test_a_streamed_child_through_the_twin_is_the_in_memory_child(tmp_path, monkeypatch):
    made = _spy(monkeypatch)
    model, _ = zoo.build("llama", num_hidden_layers=DEEP)
    model.save_pretrained(tmp_path / "parent")
    plan = {
        "target": {"num_layers": 4, "hidden_size": 32, "intermediate_size": 48, "num_heads": 2},
        "importance": "weight",
        "depth": "middle",
    }
    summary = stream_apply(tmp_path / "parent", plan, tmp_path / "child")
    assert made and made[-1] is not None  # the folder was analysed through its twin
    child = type(model).from_pretrained(tmp_path / "child").eval()
    assert_embedding_is_a_hand_slice(model, child, summary["kept"]["hidden_size"])
    streamed = child.state_dict()
    in_memory = subclone(model, plan).model.state_dict()  # traced whole, in memory
    assert streamed.keys() == in_memory.keys()
    for key in streamed:
        assert torch.equal(streamed[key], in_memory[key]), key
