"""Random plans, valid and not, against shared zoo parents (hypothesis): each gives a
child that runs and computes finite logits of the parent's shape, or a one-line
`SurgeonError` (a malformed plan, an impossible target), never another exception.

Random tiny decoders of several families (head counts, KV-group ratios, head_dim, tied
or not, odd widths) are cut by random plans too: the child runs and trains, or the plan
is refused in one line.

A plan `surgeon validate --model` accepts (`dry_run`) is applied without error, on
every causal LM of the zoo.

`make test` runs 80 plans per parent, 12 decoders and 6 validated plans per causal LM;
`SURGEON_PROPERTY_EXAMPLES`, `SURGEON_DECODER_EXAMPLES` and `SURGEON_VALIDATE_EXAMPLES`
set the counts of the long run (`benchmarks/properties.py`)."""

import os

import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import surgeon
from surgeon import SurgeonError, apply
from surgeon.plan import DEPTH, IMPORTANCE, RESCALE, TARGETS
from tests import zoo

EXAMPLES = int(os.environ.get("SURGEON_PROPERTY_EXAMPLES", "80"))
DECODERS = int(os.environ.get("SURGEON_DECODER_EXAMPLES", "12"))
VALIDATED = int(os.environ.get("SURGEON_VALIDATE_EXAMPLES", "6"))

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


def _examples(n: int):
    """Hypothesis settings for `n` examples: the same ones on every `make test` (up to 100),
    fresh ones in the long run."""
    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        derandomize=n <= 100,
        suppress_health_check=[HealthCheck.too_slow],
    )


plans = st.fixed_dictionaries({"target": target}, optional=choice)


def _check(parent, example, plan):
    """The child of `plan`, or None where it is refused in one line."""
    try:
        child = apply(parent, plan)
    except SurgeonError as e:
        assert "\n" not in str(e).strip(), str(e)
        assert "internal error" not in str(e)
        event("refused in one line")
        return None
    with torch.no_grad():
        got = child(**example).logits
    assert got.shape[:-1] == example["input_ids"].shape and torch.isfinite(got).all()
    event("a child that runs")
    return child


@pytest.mark.parametrize("name", ["llama", "gpt2", "qwen2_moe"])
@_examples(EXAMPLES)
@given(plan=plans)
def test_any_plan_gives_a_child_or_one_line(name, prepared, plan):
    p = prepared(name)
    _check(p.parent, p.example, plan)


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


@st.composite
def decoders(draw):
    """A family and sizes for `zoo.tiny_decoder`, and a plan at most as wide."""
    family = draw(st.sampled_from(zoo.TINY_FAMILIES))
    kv = draw(st.integers(1, 3))
    heads = kv * draw(st.integers(1, 3))
    head_dim = draw(st.sampled_from([2, 4, 6, 8]))
    own = family in zoo._OWN_HEAD_DIM and draw(st.booleans())
    hidden = draw(st.integers(4, 40)) if own else None
    sizes = dict(heads=heads, kv=kv, head_dim=head_dim, hidden=hidden)
    sizes |= dict(ffn=draw(st.integers(3, 41)), layers=draw(st.integers(1, 3)))
    sizes["tied"] = draw(st.booleans())
    wide = hidden or heads * head_dim
    target = {
        "hidden_size": draw(st.integers(1, wide)),
        "intermediate_size": draw(st.integers(1, sizes["ffn"])),
        "num_heads": draw(st.integers(1, heads)),
        "num_kv_heads": draw(st.integers(1, kv)),
        "num_layers": draw(st.integers(1, sizes["layers"])),
    }
    keys = draw(st.lists(st.sampled_from(sorted(target)), min_size=1, unique=True))
    return family, sizes, {"target": {k: target[k] for k in keys}}


@_examples(DECODERS)
@given(case=decoders())
def test_random_tiny_decoders_cut_and_train_or_refuse_in_one_line(case):
    family, sizes, plan = case
    try:
        model, example = zoo.tiny_decoder(family, **sizes)
    except ValueError:
        event("the family's config refuses the sizes")
        assume(False)  # the family's own config refuses these sizes: not surgeon's to judge
    child = _check(surgeon.prepare(model, example), example, plan)
    if child is None:
        return
    child.train()  # trains: finite loss and gradients, and a step moves the weights
    optimizer = torch.optim.AdamW(child.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in child.parameters()]
    loss = child(**example, labels=example["input_ids"]).loss
    loss.backward()
    grads = [p.grad for p in child.parameters() if p.grad is not None]
    assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads), (family, sizes, plan)
    optimizer.step()
    moved = [not torch.equal(b, p) for b, p in zip(before, child.parameters(), strict=True)]
    assert any(moved) and all(torch.isfinite(p).all() for p in child.parameters())


# a zoo causal LM's sizes: hidden 64, FFN 96, 4 heads over 2 KV groups, head_dim 16
sizes = st.fixed_dictionaries(
    {},
    optional={
        "num_layers": st.integers(1, 3),
        "hidden_size": st.integers(1, 64),
        "intermediate_size": st.integers(1, 96),
        "num_heads": st.integers(1, 4),
        "num_kv_heads": st.integers(1, 2),
    },
)


@pytest.mark.parametrize("name", [n for n in zoo.HF_NAMES if n not in ("bert", "vit")])
@_examples(VALIDATED)
@given(target=sizes)
def test_a_plan_that_validates_applies(name, prepared, target):
    """What `surgeon validate --model` runs (`dry_run`: the plan's rules, the slice's,
    the child's config built and checked by its own class, before any weight is read)
    either refuses in one line, or the plan applies."""
    from surgeon.api import dry_run

    p = prepared(name)
    plan = {"target": target, "importance": "weight"}
    try:
        described = dry_run(p.parent, plan)
    except SurgeonError as e:
        assert "\n" not in str(e).strip() and "internal error" not in str(e), str(e)
        event("refused by validate")
        return
    event("valid")
    child = _check(p.parent, p.example, plan)
    assert child is not None, (plan, described)


def test_found_by_the_long_run(prepared):
    """Each was a failure of `benchmarks/properties.py` before: a whole number written as
    a float (`48.0`, an integer to JSON Schema) crashed the slice; a depth cut beside a
    width cut sized the child's heads from the dropped layers too, so Qwen2's config kept
    4 heads (of head_dim 8, derived) where the child has 2 of 16: the shapes agreed, the
    computation did not."""
    llama = prepared("llama")
    floats = apply(llama.parent, {"target": {"intermediate_size": 48.0}, "importance": "weight"})
    ints = apply(llama.parent, {"target": {"intermediate_size": 48}, "importance": "weight"})
    for a, b in zip(floats.state_dict().values(), ints.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    qwen2 = prepared("qwen2")
    plan = {"target": {"num_layers": 2, "hidden_size": 32}, "importance": "weight"}
    child = apply(qwen2.parent, plan)
    assert (child.config.num_attention_heads, child.config.num_key_value_heads) == (2, 1)
