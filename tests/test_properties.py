"""Random plans, valid and not, against shared zoo parents (hypothesis): each gives a
child that runs and computes finite logits of the parent's shape, or a one-line
`SurgeonError` (a malformed plan, an impossible target), never another exception.

`make test` runs a few dozen examples per parent; `SURGEON_PROPERTY_EXAMPLES=10000`
runs the long version."""

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from surgeon import SurgeonError, apply
from surgeon.plan import DEPTH, IMPORTANCE, RESCALE, TARGETS

EXAMPLES = int(os.environ.get("SURGEON_PROPERTY_EXAMPLES", "30"))

# sizes around the zoo's (hidden 64, FFN 96, 4 heads over 2 KV groups, 3 layers, 8
# experts), zero, negative, too wide, and values of the wrong type
size = st.one_of(
    st.integers(min_value=-2, max_value=130),
    st.sampled_from([1, 2, 3, 4, 8, 16, 32, 48, 64, 96]),
    st.text(max_size=3),
    st.floats(allow_nan=True),
    st.none(),
    st.booleans(),
)
target = st.dictionaries(st.sampled_from([*TARGETS, "num_layer", "width"]), size, max_size=5)
choice = {
    "importance": st.sampled_from([*IMPORTANCE, "gradient"]),
    "depth": st.one_of(st.sampled_from([*DEPTH, "random"]), st.lists(st.integers(-1, 4))),
    "rescale": st.sampled_from([*RESCALE, 2]),
}
plans = st.fixed_dictionaries({"target": target}, optional=choice)


def _check(parent, example, plan):
    try:
        child = apply(parent, plan)
    except SurgeonError as e:
        assert "\n" not in str(e).strip(), str(e)
        assert "internal error" not in str(e)
        return
    with torch.no_grad():
        got = child(**example).logits
    assert got.shape[:-1] == example["input_ids"].shape and torch.isfinite(got).all()


@pytest.mark.parametrize("name", ["llama", "gpt2", "qwen2_moe"])
def test_any_plan_gives_a_child_or_one_line(name, prepared):
    p = prepared(name)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=EXAMPLES <= 100,  # the same examples on every `make test`
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(plan=plans)
    def run(plan):
        _check(p.parent, p.example, plan)

    run()


@pytest.mark.parametrize(
    ("name", "target", "message"),
    [  # found by the property test: each was an internal error before
        ("gpt2", {"hidden_size": 1}, r"GPT2LMHeadModel cannot be built with this child's"),
        ("qwen2_moe", {"hidden_size": 1}, r"cannot be built .* negative power"),
        ("qwen2_moe", {"intermediate_size": 1}, r"cannot run this child in its own forward"),
    ],
)
def test_sizes_the_class_cannot_build_or_run_are_one_line(name, target, message, prepared):
    with pytest.raises(SurgeonError, match=message) as e:
        apply(prepared(name).parent, {"target": target})
    assert "\n" not in str(e.value)
