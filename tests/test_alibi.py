"""ALiBi heads (issue 32): the forward computes a slope per head from the head count, so
heads are cut only to those whose slopes the child's class computes again (Bloom and MPT
as the sweep builds them: 4 heads, whose slopes are 2^-2, 2^-4, 2^-6, 2^-8)."""

import math

import pytest
import torch

import surgeon
from benchmarks.sweep import CHECKS, build, check_type
from surgeon.api import subclone

HALF = {"num_layers": 2, "hidden_size": 32, "intermediate_size": 128, "num_heads": 2}


def _slopes(n: int) -> list[float]:
    """By hand, for a power-of-two head count: head i's slope is 2^(-8 (i + 1) / n)."""
    return [2 ** (-8 * (i + 1) / n) for i in range(n)]


def test_halved_alibi_heads_pass_every_check():
    """Bloom through every check of the sweep (MPT: benchmarks/sweep.py, and below)."""
    record = check_type("bloom", skip=("onnx", "base"))
    failed = {k: c for k, c in record["checks"].items() if c["result"] != "ok"}
    assert not failed, failed
    assert set(record["checks"]) == set(CHECKS) - {"onnx"}


def _child_slopes(child, model_type: str, n: int) -> list[float]:
    """The slopes the child's class computes for its heads."""
    if model_type == "bloom":
        from transformers.models.bloom.modeling_bloom import _get_alibi_slopes

        return _get_alibi_slopes(child.config.n_head, "cpu").tolist()
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

    return build_mpt_alibi_tensor(child.config.n_heads, 2)[:, 0, 0].neg().tolist()  # distance 1


@pytest.mark.parametrize("model_type", ["bloom", "mpt"])
def test_kept_heads_are_those_whose_slopes_the_child_computes(model_type):
    model, inputs = build(model_type)[:2]
    made = subclone(surgeon.prepare(model, inputs), {"target": HALF, "importance": "weight"})
    kept = {tuple(x["num_heads"]) for x in made.kept["per_layer"]}
    assert kept == {(1, 3)}  # every other head: 2^-4 and 2^-8
    parent = _slopes(4)
    assert _child_slopes(made.model, model_type, 2) == _slopes(2) == [parent[i] for i in (1, 3)]
    with torch.no_grad():  # the HF child (slopes from its config) is the graph child
        got = made.model(**inputs).logits
        want = made.graph(**inputs)
        want = want.logits if hasattr(want, "logits") else want[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_slopes_the_parent_does_not_hold_are_one_line(monkeypatch):
    """With slopes 2^(-8 (i + 1) / n) for any n (no power-of-two rule), 3 heads' slopes
    are not among 4 heads': refused in one line naming the counts that work."""
    from transformers.models.bloom import modeling_bloom

    def geometric(num_heads, device):
        powers = torch.arange(1, 1 + num_heads, device=device, dtype=torch.float32)
        return torch.pow(2.0, -8 * powers / num_heads)

    monkeypatch.setattr(modeling_bloom, "_get_alibi_slopes", geometric)
    model, inputs = build("bloom")[:2]
    parent = surgeon.prepare(model, inputs)
    plan = {"target": {"hidden_size": 48, "num_heads": 3}}
    with pytest.raises(surgeon.PlanError) as e:
        surgeon.apply(parent, plan)
    message = str(e.value)
    assert "\n" not in message
    assert "target.num_heads = 3 cannot be cut here" in message
    assert "computes a value per head from the head count" in message
    assert message.endswith("head counts that work: 2, 1")
    assert math.isclose(geometric(2, "cpu")[0].item(), 2**-4)  # parent head 1's: kept at 2
