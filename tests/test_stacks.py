"""Several stacks of layers on one residual stream (an encoder-decoder's encoder and
decoder, whose shared token embedding makes their streams one): each stack is found under
its module path, cut alone (`stacks:`) or all together (`target`), and the Hugging Face
config gets each stack's own layer count and sizes."""

import tempfile

import pytest
import torch

from surgeon import PlanError, apply, inspect
from surgeon.api import subclone
from tests import zoo

STACKS = {  # the module lists that hold each model's layers, encoder first
    "t5": ("encoder.block", "decoder.block"),
    "bart": ("model.encoder.layers", "model.decoder.layers"),
}
LAYERS = 3  # per stack, in the zoo's configs


@pytest.fixture(params=zoo.ENC_DEC_NAMES)
def encdec(request, prepared):
    return prepared(request.param)


def _logits(model, example) -> torch.Tensor:
    with torch.no_grad():
        return model(**example).logits


def _counts(model, name: str) -> tuple[int, int]:
    return tuple(len(model.get_submodule(stack)) for stack in STACKS[name])


def _reloads_alike(child, example) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        child.save_pretrained(tmp)
        again = type(child).from_pretrained(tmp).eval()
    torch.testing.assert_close(_logits(again, example), _logits(child, example))


def test_inspect_reports_each_stack(encdec):
    report = inspect(encdec.parent)
    assert report.to_dict()["stacks"] == dict.fromkeys(STACKS[encdec.name], LAYERS)
    assert [layer["stack"] for layer in report.to_dict()["layers"]] == [
        s for s in STACKS[encdec.name] for _ in range(LAYERS)
    ]
    for stack in STACKS[encdec.name]:
        assert f"stack        {stack}: {LAYERS} layers" in report.render()


def test_permuting_every_group_keeps_the_output(encdec):
    child = apply(encdec.parent, {"importance": "weight"})
    reference = _logits(encdec.model, encdec.example)
    torch.testing.assert_close(_logits(child, encdec.example), reference, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name, which", [("t5", 0), ("bart", 1)])  # the encoder, the decoder
def test_one_stack_cut_alone(prepared, name, which):
    encdec = prepared(name)
    stack = STACKS[name][which]
    child = apply(encdec.parent, {"stacks": {stack: {"num_layers": 1}}, "depth": "uniform"})
    want = [LAYERS, LAYERS]
    want[which] = 1
    assert _counts(child, name) == tuple(want)
    assert torch.isfinite(_logits(child, encdec.example)).all()
    _reloads_alike(child, encdec.example)


def test_every_stack_cut_together(encdec):
    target = {"num_layers": 2, "hidden_size": 32, "num_heads": 2, "intermediate_size": 48}
    child = apply(encdec.parent, {"target": target})
    assert _counts(child, encdec.name) == (2, 2)
    sizes = {n: tuple(t.shape) for n, t in child.state_dict().items()}
    ffn = [s for n, s in sizes.items() if n.endswith(("fc1.weight", "wi.weight"))]
    assert len(ffn) == 4 and set(ffn) == {(48, 32)}  # two layers per stack
    assert sizes["lm_head.weight"] == (zoo.VOCAB, 32)
    _reloads_alike(child, encdec.example)


def test_a_stack_gets_its_own_ffn_width_where_the_config_has_one(prepared):
    bart = prepared("bart")
    encoder = STACKS["bart"][0]
    child = apply(bart.parent, {"stacks": {encoder: {"num_layers": 2, "intermediate_size": 48}}})
    assert (child.config.encoder_ffn_dim, child.config.decoder_ffn_dim) == (48, 96)
    assert (child.config.encoder_layers, child.config.decoder_layers) == (2, LAYERS)
    _reloads_alike(child, bart.example)
    t5 = prepared("t5")  # one d_ff for both stacks: refused before anything is cut
    with pytest.raises(PlanError, match="T5ForConditionalGeneration cannot hold this child"):
        apply(t5.parent, {"stacks": {"decoder.block": {"intermediate_size": 48}}})


def test_a_layer_others_read_from_is_never_dropped(prepared):
    t5 = prepared("t5")  # block 0 computes the position bias all blocks add to their scores
    with pytest.raises(PlanError, match="depth drops encoder.block.0, but later layers read"):
        apply(t5.parent, {"target": {"num_layers": 2}, "depth": "first"})
    cut = subclone(
        t5.parent, {"target": {"num_layers": 1}, "depth": "influence"}, calibration=[t5.example]
    ).cut
    assert cut.state.layers == [0, LAYERS]  # each stack's first block, whatever its influence


@pytest.mark.parametrize(
    "plan, message",
    [
        ({"stacks": {"model.layers": {"num_layers": 1}}}, "stacks.model.layers: no such stack"),
        (
            {"target": {"hidden_size": 32}, "stacks": {"encoder.block": {"hidden_size": 48}}},
            "hidden_size 32 and 48: the stacks of this model read and write one residual",
        ),
        ({"depth": [0, 1]}, "depth lists layers, but this model has 2 stacks of layers"),
        ({"target": {"num_layers": 4}}, "encoder.block: target.num_layers = 4 is deeper"),
        ({"stacks": {"encoder.block": {"layers": 1}}}, "unknown key 'layers' in stacks.encoder"),
    ],
)
def test_a_plan_for_stacks_that_cannot_be_is_refused_in_one_line(prepared, plan, message):
    with pytest.raises(PlanError, match=message) as e:
        apply(prepared("t5").parent, plan)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["t5", *zoo.ENC_DEC_FOLDERS])
def test_an_encoder_decoder_folder_as_saved_with_the_cache_on_goes_through_the_cli(name, tmp_path):
    """As every pretrained checkpoint is: `use_cache` on, no inputs handed in. The CLI
    derives the decoder's inputs itself, traces with the cache off in every config the
    model holds (T5's decoder stack keeps a copy), reads what the files lack as the class
    computes it (Marian's sinusoidal positions, a parameter it does not save), loads a
    parent whose forward branches on its input values (LED's), gives a decoder mask
    (FSMT's forward would branch on pad tokens without one), and the permute-only child
    it writes computes the parent's logits."""
    from tests.helpers import permuted_through_the_cli

    model, example = zoo.build(name)
    model.config.use_cache = True
    child = permuted_through_the_cli(model, tmp_path)
    with torch.no_grad():
        want, got = model(**example).logits, child(**example).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
