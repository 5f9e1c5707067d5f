"""The one pipeline: a parent prepared once serves any number of plans, a plan resolves
once into the registry's passes, checks come before any pass runs, and emitters build
without changing the decisions."""

import copy

import pytest
import torch

import surgeon
import surgeon.frontends.twin
import surgeon.pipeline
from surgeon import PlanError
from surgeon.api import subclone
from surgeon.emit import emit_graph, emit_hf
from surgeon.passes import PASSES, Depth, Permute, Rescale, Score, Slice
from surgeon.pipeline import decide, resolve
from tests import zoo
from tests.helpers import fingerprint, shrink_plan

PLANS = [
    shrink_plan("llama"),
    {"target": {"num_layers": 2, "hidden_size": 48}, "importance": "first", "depth": "last"},
    {"importance": "weight", "depth": [0, 1, 1, 2], "rescale": "none"},
]


def test_a_prepared_parent_serves_many_plans_with_one_trace(monkeypatch):
    model, example = zoo.build("llama")
    traced = []
    real = surgeon.frontends.twin.trace  # what `prepare` traces a Hugging Face model with
    monkeypatch.setattr(
        surgeon.frontends.twin, "trace", lambda *a, **k: traced.append(1) or real(*a, **k)
    )
    parent = surgeon.prepare(model, example)
    children = [surgeon.apply(parent, plan) for plan in PLANS]
    assert len(traced) == 1
    for plan, child in zip(PLANS, children, strict=True):  # as from the module itself
        fresh = surgeon.apply(model, plan, example_inputs=example)
        a, b = child.state_dict(), fresh.state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(traced) == 1 + len(PLANS)  # the module path traces each time


def test_inspect_reads_a_prepared_parent(prepared):
    p = prepared("llama")
    assert surgeon.inspect(p.parent).to_dict() == surgeon.inspect(p.model, p.example).to_dict()


def test_short_and_long_forms_resolve_to_the_same_passes():
    short = resolve(
        {
            "target": {"num_layers": 2, "hidden_size": 32, "num_heads": 2},
            "importance": "weight",
            "depth": "uniform",
            "rescale": "paper",
        }
    )
    long = resolve(
        {
            "passes": [
                {"score": {"method": "weight"}},
                {"depth": {"strategy": "uniform", "num_layers": 2}},
                {"permute": {}},
                {"slice": {"hidden_size": 32, "num_heads": 2}},
                {"rescale": {"method": "paper"}},
            ]
        }
    )
    expected = (
        Score("weight"),
        Depth("uniform", 2),
        Permute(),
        Slice(hidden_size=32, num_heads=2),
        Rescale("paper"),
    )
    assert short.passes == long.passes == expected


def test_a_long_form_runs_only_the_passes_it_lists():
    surgery = resolve({"passes": [{"slice": {"hidden_size": 32}}]})
    assert surgery.passes == (Slice(hidden_size=32),)
    steps = [{"score": {"method": "uniform"}}, {"permute": {}}, {"slice": {"num_heads": 2}}]
    uniform = resolve({"passes": steps})
    assert uniform.passes[-1] == Slice(num_heads=2, evenly=True)  # Weight Selection


@pytest.mark.parametrize(
    "plan, data, needs",
    [
        ({"importance": "activation"}, False, True),
        ({"importance": "weight"}, False, False),
        ({"target": {"num_layers": 2}, "depth": "influence", "importance": "weight"}, False, True),
        ({"depth": "influence", "importance": "weight"}, False, False),  # nothing to drop
        ({"target": {"num_layers": 2}}, True, True),  # auto -> surgeon recipe
        ({"target": {"num_layers": 2}}, False, False),  # auto -> data-free recipe
    ],
)
def test_whether_a_plan_needs_data_is_decided_by_its_passes(plan, data, needs):
    assert resolve(plan, data).needs_data is needs


def test_every_check_comes_before_any_pass_runs(prepared, monkeypatch):
    def refuse(self, state):
        raise AssertionError(f"{self.name} ran before the checks finished")

    for cls in PASSES.values():
        monkeypatch.setattr(cls, "run", refuse)
    parent = prepared("llama").parent
    for plan, message in [
        ({"target": {"hidden_size": 65}, "importance": "weight"}, "wider than the parent"),
        ({"target": {"num_layers": 9}, "importance": "weight"}, "deeper than the parent"),
        ({"target": {"hidden_size": 32, "num_heads": 4}}, None),  # the class holds it
    ]:
        if message is None:
            with pytest.raises(AssertionError, match="score ran"):
                decide(parent, resolve(plan))
        else:
            with pytest.raises(PlanError, match=message):
                decide(parent, resolve(plan))


def test_a_config_that_cannot_hold_the_child_is_refused_before_any_pass(prepared, monkeypatch):
    monkeypatch.setattr(Score, "run", lambda self, state: pytest.fail("scored"))
    with pytest.raises(PlanError, match="cannot hold this child"):
        decide(prepared("gpt2").parent, resolve({"target": {"hidden_size": 32, "num_heads": 4}}))


def test_emitters_change_no_decision_and_the_parent_not_at_all(prepared):
    p = prepared("llama")
    cut = decide(p.parent, resolve({**shrink_plan("llama"), "depth": [0, 2, 2]}))
    state = cut.state
    before = copy.deepcopy((state.select, state.scale, state.layers, state.keep, state.scores))
    graph = emit_graph(state)
    emit_hf(p.model, cut.config, graph, state)
    after = (state.select, state.scale, state.layers, state.keep, state.scores)
    for x, y in zip(before, after, strict=True):
        assert _same(x, y)
    assert fingerprint(p.model) == p.fingerprint


def _same(x, y) -> bool:
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, torch.Tensor):
        return torch.equal(x, y)
    return x == y


def test_cut_sizes_are_the_childs(prepared):
    child = subclone(prepared("llama").parent, {**shrink_plan("llama"), "depth": [0, 2]})
    assert child.cut.sizes == {
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_heads": 2,
        "num_kv_heads": 1,
        "head_dim": 16,
        "num_layers": 2,
    }
    config = child.model.config
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (32, 48, 2)


def test_lists_one_entry_per_layer_follow_depth_where_the_class_asks():
    from transformers import PretrainedConfig

    from surgeon.fit import _fit_lists

    class Windows(torch.nn.Module):  # Longformer: one attention window per layer, asserted
        def __init__(self, config):
            super().__init__()
            assert len(config.windows) == config.num_hidden_layers

    def config(layers):
        return PretrainedConfig(
            num_hidden_layers=layers, windows=[2, 4, 8], sizes=[5, 6, 7], eos_token_id=[1, 2, 3]
        )

    parent, child = Windows(config(3)), config(2)
    _fit_lists(parent, child, [0, 2], 3)
    assert child.windows == [2, 8]  # the one the class asks for
    assert child.sizes == [5, 6, 7] and child.eos_token_id == [1, 2, 3]
    unchanged = config(3)
    _fit_lists(parent, unchanged, [0, 1, 2], 3)
    assert unchanged.windows == [2, 4, 8]


def test_a_size_the_forward_makes_a_tensor_follows_the_child_and_self_casts_trace():
    """The rebuilt class scales by sqrt(the child's hidden size): the child graph's tensor
    constant takes that value, so the two agree (else the rebuild check stops the child);
    `self.head.to(its own dtype)` in the forward traces."""
    model, example = zoo.scaled_embedding()
    child = surgeon.apply(model, {"target": {"hidden_size": 8}}, example_inputs=example)
    assert child.config.hidden_size == 8 and child.embed.weight.shape == (zoo.VOCAB, 8)
    x = child.embed(example["input_ids"]) * 8**0.5
    for layer in child.layers:
        x = x + layer(x)
    torch.testing.assert_close(child(**example), child.head(x))


def test_a_graph_that_computes_otherwise_than_the_model_is_refused():
    from surgeon.analysis import analyse
    from surgeon.frontends import trace
    from surgeon.pipeline import _faithful

    model, example = zoo.exports_otherwise()
    graph = trace(model, example, frontend="export")
    with pytest.raises(surgeon.TraceError, match="computes other values than its forward"):
        _faithful(model, graph, analyse(graph))
    fx = trace(model, example, frontend="fx")  # fx records the eager computation
    assert _faithful(model, fx, analyse(fx)).layers == []
    assert surgeon.prepare(model, example).graph.frontend == "fx"


def test_each_pass_owns_the_schema_of_its_parameters():
    """A plan's long form accepts exactly what each pass's schema states, and each key
    there is a field of the pass (so the plan cannot name a parameter the pass lacks)."""
    import dataclasses

    from surgeon.passes import PASSES
    from surgeon.plan import SCHEMA

    items = SCHEMA["properties"]["passes"]["items"]["properties"]
    assert set(items) == set(PASSES)
    for name, cls in PASSES.items():
        fields = {f.name for f in dataclasses.fields(cls)}
        assert set(cls.schema) <= fields, name
        assert items[name]["properties"] == cls.schema


def test_a_config_ratio_follows_the_width_it_sizes(tmp_path):
    """Dinov2 sizes its MLP as hidden_size x mlp_ratio: cutting hidden and FFN to other
    shares writes the ratio that gives the child's FFN, and the saved child reloads with
    transformers to the same output."""
    import surgeon

    model, inputs = zoo.ratio_sized()
    plan = {"target": {"hidden_size": 16, "num_heads": 2, "intermediate_size": 32}}
    child = surgeon.apply(model, {**plan, "importance": "weight"}, example_inputs=inputs)
    assert child.config.hidden_size * child.config.mlp_ratio == 32
    child.save_pretrained(tmp_path)
    again = type(child).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**inputs)[0], child.eval()(**inputs)[0])
