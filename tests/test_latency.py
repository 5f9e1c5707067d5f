"""A latency budget (surgeon/latency.py): the largest child whose ONNX decoder takes at
most the budget per token, found by measuring candidate children. The search is tested
with a stand-in for the clock (a time that grows with the parameters, so the answer is
known by hand); the clock itself in tests/test_decoder.py, on its exported decoder."""

import pytest

import surgeon
import surgeon.latency as latency
from surgeon.pipeline import check, resolve
from tests import zoo

PER_MS = 1e4  # the stand-in clock: 1 ms per 10,000 parameters


def _clock(model, spec, threads=None):
    return sum(p.numel() for p in model.parameters()) / PER_MS


@pytest.fixture(scope="module")
def llama():
    model, inputs = zoo.build("llama")
    return model, surgeon.prepare(model, inputs)


def test_the_child_is_the_largest_measured_one_within_the_budget(llama, monkeypatch):
    model, parent = llama
    monkeypatch.setattr(latency, "ms_per_token", _clock)
    budget = 6.0
    cut = check(parent, resolve({"target": {"latency": {"ms_per_token": budget}}}))
    record = cut.surgery.budget
    probes = record["probes"]
    assert len(probes) == 1 + latency.PROBES
    fitting = [p for p in probes if p["ms_per_token"] <= budget]
    assert record["child_parameters"] == max(p["parameters"] for p in fitting)
    assert any(p["ms_per_token"] > budget for p in probes)  # the search went past it
    child = surgeon.apply(parent, {"target": {"latency": {"ms_per_token": budget}}})
    built = sum(p.numel() for p in child.parameters())  # the child as built
    assert built == record["child_parameters"] and built / PER_MS <= budget
    assert record["child_ms_per_token"] == pytest.approx(built / PER_MS)
    assert built < sum(p.numel() for p in model.parameters())


def test_a_budget_below_the_smallest_child_or_off_a_decoder_is_one_line(llama, monkeypatch):
    _, parent = llama
    monkeypatch.setattr(latency, "ms_per_token", _clock)
    with pytest.raises(surgeon.PlanError) as e:
        check(parent, resolve({"target": {"latency": {"ms_per_token": 0.01}}}))
    assert "\n" not in str(e.value) and "the smallest child this plan allows" in str(e.value)
    model, inputs = zoo.build("bert")
    with pytest.raises(surgeon.PlanError, match="not one: state target.parameters or memory"):
        check(surgeon.prepare(model, inputs), resolve({"target": {"latency": {"ms_per_token": 1}}}))
    with pytest.raises(surgeon.PlanError, match="not with a per-layer layout"):
        resolve({"target": {"latency": {"ms_per_token": 1}}, "layout": "per_layer"})
