"""Importance: the methods find what is important by construction; calibration forms."""

import pytest
import torch

import surgeon
from surgeon import PlanError
from surgeon.api import subclone
from tests import zoo


def _batches(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(3, zoo.VOCAB, (2, 8), generator=g),) for _ in range(n)]


def _groups(child):
    a = child.state.analysis
    residual = a.atoms.leaves(a.residual)[0]
    ffn0 = next(g.id for g in a.groups.values() if g.role == "ffn" and g.layer == 0)
    heads1 = a.layers[1].heads[0]
    return residual, ffn0, heads1


def _top(scores, k):
    return set(torch.topk(scores, k).indices.tolist())


@pytest.mark.parametrize("method", ["activation", "weight"])
def test_methods_recover_what_is_important_by_construction(method):
    model, example = zoo.known_importance()
    child = subclone(model, {"importance": method}, example, calibration=_batches())
    residual, ffn0, heads1 = _groups(child)
    scores = child.state.scores
    assert _top(scores[residual], len(zoo.KNOWN_RESIDUAL)) == set(zoo.KNOWN_RESIDUAL)
    assert _top(scores[ffn0], len(zoo.KNOWN_FFN)) == set(zoo.KNOWN_FFN)
    assert _top(scores[heads1], 1) == {zoo.KNOWN_HEAD}
    # and slicing keeps them, in front
    plan = {"importance": method, "target": {"hidden_size": 8, "num_heads": 1}}
    small = subclone(model, plan, example, calibration=_batches())
    kept = small.state.select[residual].tolist()
    assert set(kept[:4]) == set(zoo.KNOWN_RESIDUAL)
    assert small.state.select[heads1].tolist() == [zoo.KNOWN_HEAD]


def test_activation_scores_are_per_neuron_mean_absolute_activations():
    """One stream value by hand: the residual score is the sum over stream values of
    mean |x|, so with one layer-0 block input it must include the embedding's mean |x|."""
    model, example = zoo.nanogpt()
    batches = _batches(2)
    child = subclone(model, {"importance": "activation"}, example, calibration=batches)
    residual = _groups(child)[0]
    first_site = child.state.residual_site_scores[0]  # the stream start: wte + wpe
    with torch.no_grad():
        x = torch.cat(
            [model.transformer.wte(b[0]) + model.transformer.wpe(torch.arange(8)) for b in batches]
        )
    torch.testing.assert_close(first_site, x.abs().double().mean(dim=(0, 1)))
    total = sum(child.state.residual_site_scores)
    torch.testing.assert_close(child.state.scores[residual], total)
    assert len(child.state.residual_site_scores) == 1 + 2 * model.config.n_layer


def test_activation_scores_are_deterministic():
    model, example = zoo.build("llama")
    batches = [{"input_ids": b[0], "attention_mask": torch.ones_like(b[0])} for b in _batches()]
    a = subclone(model, {"importance": "activation"}, calibration=batches).state.scores
    b = subclone(model, {"importance": "activation"}, calibration=iter(batches)).state.scores
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_uniform_keeps_evenly_spaced_indices():
    model, example = zoo.nanogpt()
    child = subclone(model, {"importance": "uniform", "target": {"hidden_size": 8}}, example)
    residual = _groups(child)[0]
    assert child.state.select[residual].tolist() == [0, 9, 18, 27, 36, 45, 54, 63]


class _Chars:
    def __call__(self, text):
        return {"input_ids": [ord(c) % zoo.VOCAB for c in text]}


def test_calibration_from_a_text_file(tmp_path):
    model, _ = zoo.nanogpt()
    text = tmp_path / "calibration.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    plan = {
        "importance": "activation",
        "calibration": {"samples": 4, "seq_len": 8, "batch_size": 2},
    }
    child = subclone(model, plan, calibration=str(text), tokenizer=_Chars())
    assert child.state.scores
    default = subclone(model, plan, tokenizer=_Chars())  # Python's own docs
    residual = _groups(default)[0]
    assert not torch.equal(default.state.scores[residual], child.state.scores[residual])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "needs the model's tokenizer"),
        ({"calibration": "missing.txt", "tokenizer": _Chars()}, "missing.txt does not exist"),
        ({"calibration": []}, "calibration is empty"),
        (
            {
                "calibration": [
                    (torch.zeros(2, 8, dtype=torch.long),),
                    (torch.zeros(3, 8, dtype=torch.long),),
                ]
            },
            "calibration batch 1",
        ),
    ],
)
def test_calibration_errors(kwargs, message):
    model, _ = zoo.nanogpt()
    with pytest.raises(PlanError, match=message):
        surgeon.apply(model, {"importance": "activation"}, **kwargs)


def test_inspect_saves_scores_with_the_report():
    import json

    model, _ = zoo.known_importance()
    report = surgeon.inspect(model, calibration=_batches()).to_dict()
    json.dumps(report)  # the scores travel as JSON
    residual = next(g for g in report["groups"] if g["role"] == "residual")
    scores = torch.tensor(report["importance"][str(residual["id"])])
    assert _top(scores, 4) == set(zoo.KNOWN_RESIDUAL)
    assert len(report["residual_importance_per_site"]) == 1 + 2 * 3


def test_recipes_fill_what_the_plan_leaves_open():
    from surgeon.plan import load_plan

    plan = load_plan({"target": {"num_layers": 2}})
    assert (plan.importance, plan.depth, plan.rescale) == (None, None, None)
    free = plan.resolved(data=False)
    assert (free.recipe, free.importance, free.depth, free.rescale) == (
        "data-free",
        "weight",
        "middle",
        "paper",
    )
    best = plan.resolved(data=True)
    assert (best.recipe, best.importance, best.depth) == ("surgeon", "activation", "influence")
    paper = load_plan({"recipe": "paper", "rescale": "none"}).resolved(data=True)
    assert (paper.importance, paper.depth, paper.rescale) == ("activation", "middle", "none")
    baseline = load_plan({"recipe": "weight-selection"}).resolved(data=False)
    assert (baseline.importance, baseline.depth, baseline.rescale) == ("uniform", "last", "none")


def test_apply_uses_the_surgeon_recipe_when_it_has_data():
    model, example = zoo.nanogpt()
    child = subclone(model, {"target": {"num_layers": 2}}, calibration=_batches())
    assert child.state.influence is not None  # depth measured
    assert child.state.residual_site_scores  # activation importance
    plain = subclone(model, {"target": {"num_layers": 2}}, example)
    assert plain.state.layers == [0, 2] and not plain.state.residual_site_scores


def test_mean_abs_profile_reads_every_axis_in_one_pass():
    from surgeon.passes.score import mean_abs_profile

    g = torch.Generator().manual_seed(0)
    cases = [((3000, 70), 10**6, torch.float32), ((5, 4, 3), 100, torch.float32)]
    cases += [((7,), 4, torch.float32), ((300, 9, 2), 1000, torch.bfloat16)]
    cases += [((6, 64, 64), 1, torch.float16), ((0, 4), 64, torch.float32)]
    for shape, block_bytes, dtype in cases:
        t = torch.randn(*shape, generator=g).to(dtype)
        profile = mean_abs_profile(t, block_bytes=block_bytes)
        for axis in range(t.dim()):
            others = [d for d in range(t.dim()) if d != axis]
            want = t.double().abs().mean(dim=others) if others else t.double().abs()
            want = want.nan_to_num(0.0)  # an empty tensor: zeros
            torch.testing.assert_close(profile[axis], want, rtol=1e-5, atol=1e-7)


def test_the_slice_keeps_the_positions_its_scores_rank_highest(prepared):
    """Every cut group that was scored keeps exactly its k highest-scored positions (the
    scores as the score pass wrote them; the slice's rule, not the scores, is tested)."""
    from surgeon.pipeline import decide, resolve

    p = prepared("llama")
    plan = {"target": {"intermediate_size": 40, "num_heads": 2, "num_kv_heads": 1}}
    state = decide(p.parent, resolve({**plan, "importance": "weight"})).state
    checked = 0
    for group, k in state.keep.items():
        scores = state.scores.get(group)
        if scores is None or len(set(scores.tolist())) < len(scores):
            continue  # unscored, or ties: any of the tied may be kept
        best = set(torch.topk(scores, k).indices.tolist())
        assert set(state.select[group].tolist()) == best, group
        checked += 1
    assert checked >= 3  # each layer's FFN at least


@pytest.mark.parametrize("method", ["weight", "activation"])
def test_an_ordered_group_keeps_its_most_important_positions_in_their_order(method):
    """The residual stream of a model without a head is its output: cut, never
    reordered. The child keeps exactly the positions built to matter most
    (`zoo.HEADLESS_KNOWN`), in the parent's order: its embedding is the parent's, those
    rows taken by hand."""
    model, example = zoo.headless()
    plan = {"importance": method, "target": {"hidden_size": len(zoo.HEADLESS_KNOWN)}}
    child = subclone(model, plan, example, calibration=[example, example])
    (stream,) = [g for g in child.state.analysis.groups.values() if g.ordered]
    kept = sorted(zoo.HEADLESS_KNOWN)
    assert child.state.select[stream.id].tolist() == kept
    weight = dict(child.model.named_parameters())["embed.weight"]
    torch.testing.assert_close(weight, model.embed.weight[kept], rtol=0, atol=0)
