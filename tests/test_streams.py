"""Several residual streams: a stack with an input of its own (Whisper's audio encoder,
CLIP's and SigLIP's two towers, LLaVA's vision tower) writes a stream of its own, which
another stack reads through cross-attention or a projector, or meets at the output. Each
stream is found with its stack, cut alone (`stacks:`) or with the others, and the reading
projections are cut with the stream they read."""

import tempfile
from pathlib import Path

import pytest
import torch

from surgeon import PlanError, apply, inspect
from surgeon.api import subclone
from surgeon.emit.onnx import check_onnx, export_onnx
from surgeon.frontends import output_tensors
from tests import zoo

STACKS = {  # the module lists of each model's two stacks, in the order they run
    "whisper": ("model.encoder.layers", "model.decoder.layers"),
    "clip": ("vision_model.encoder.layers", "text_model.encoder.layers"),
    "siglip": ("vision_model.encoder.layers", "text_model.encoder.layers"),
    "llava": ("model.vision_tower.encoder.layers", "model.language_model.layers"),
}
WIDTHS = {"whisper": (64, 64), "clip": (48, 64), "siglip": (64, 64), "llava": (48, 64)}
ROOT = Path(__file__).resolve().parent.parent
LAYERS = 2  # per stack, in the zoo's configs
# Exported to ONNX here (about 12 s each): a stream written over image tokens
# (`masked_scatter`, checked with `torch._check`) through a projector. Streams read
# through cross-attention (FSMT's, EncoderDecoderModel's) and CLIP's and SigLIP's towers
# export in the sweep (benchmarks/sweep.py).
ONNX = ("llava",)


@pytest.fixture(params=zoo.STREAM_NAMES)
def streams(request, prepared):
    return prepared(request.param)


def _half(name: str, which: int) -> dict:
    """Half the stack's width and heads (its head_dim kept: 64/4 = 32/2, 48/4 = 24/2);
    LLaVA's language model has 2 KV groups of 2 query heads: one of 2."""
    kv = {"num_kv_heads": 1} if (name, which) == ("llava", 1) else {}
    return {"hidden_size": WIDTHS[name][which] // 2, "num_heads": 2, **kv}


def _first(model, example) -> torch.Tensor:
    with torch.no_grad():
        return output_tensors(model(**example))[0]


def _norm_widths(model, stack: str) -> set[int]:
    """The widths of the first layer's norm weights: its residual stream's width."""
    layer = model.get_submodule(f"{stack}.0")
    return {p.shape[0] for n, p in layer.named_parameters() if "norm" in n and p.dim() == 1}


def test_inspect_finds_a_stream_per_stack(streams):
    d = inspect(streams.parent).to_dict()
    first, second = STACKS[streams.name]
    assert d["other_stacks"] == []
    assert d["stack_sizes"] == {  # the stream the output is read from is the first
        first: {"num_layers": LAYERS, "hidden_size": WIDTHS[streams.name][0], "stream": 1},
        second: {"num_layers": LAYERS, "hidden_size": WIDTHS[streams.name][1], "stream": 0},
    }
    assert d["hidden_size"] == WIDTHS[streams.name][1]


def test_permuting_every_group_keeps_the_output(streams):
    child = apply(streams.parent, {"importance": "weight"})
    reference = _first(streams.model, streams.example)
    got = _first(child, streams.example)
    torch.testing.assert_close(got, reference, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("which", [0, 1])
def test_one_stream_cut_alone_leaves_the_other(streams, which):
    name = streams.name
    cut, kept = STACKS[name][which], STACKS[name][1 - which]
    plan = _half(name, which) if name != "whisper" else {"intermediate_size": 48}
    child = apply(streams.parent, {"stacks": {cut: {**plan, "num_layers": 1}}})
    assert len(child.get_submodule(cut)) == 1
    assert _norm_widths(child, cut) == {plan.get("hidden_size", WIDTHS[name][which])}
    assert _size(child, kept) == _size(streams.model, kept)
    assert torch.isfinite(_first(child, streams.example)).all()


def test_a_width_the_config_ties_between_streams_is_refused_in_one_line(prepared):
    whisper = prepared("whisper")  # one d_model for its encoder and its decoder
    with pytest.raises(PlanError, match="WhisperForConditionalGeneration cannot hold") as e:
        apply(whisper.parent, {"stacks": {STACKS["whisper"][0]: _half("whisper", 0)}})
    assert "\n" not in str(e.value)


def _size(model, stack: str) -> dict[str, tuple]:
    return {n: tuple(p.shape) for n, p in model.get_submodule(stack).named_parameters()}


def test_every_stream_cut_together_reloads_and_exports(streams, tmp_path):
    name = streams.name
    stacks = {s: {**_half(name, i), "num_layers": 1} for i, s in enumerate(STACKS[name])}
    child = subclone(streams.parent, {"stacks": stacks}).model
    for i, stack in enumerate(STACKS[name]):
        assert len(child.get_submodule(stack)) == 1
        assert _norm_widths(child, stack) == {WIDTHS[name][i] // 2}
    with tempfile.TemporaryDirectory() as folder:
        child.save_pretrained(folder)
        again = type(child).from_pretrained(folder).eval()
    torch.testing.assert_close(_first(again, streams.example), _first(child, streams.example))
    if name not in ONNX:
        return
    path = export_onnx(child, streams.example, tmp_path / "child.onnx")
    assert check_onnx(child, path, [zoo.stream_inputs(name, seed=7)]) < 1e-4  # other values


def test_the_example_plan_cuts_each_stream_by_name(prepared):
    llava = prepared("llava")
    child = apply(llava.parent, str(ROOT / "examples" / "stacks" / "llava.yaml"))
    vision, text = STACKS["llava"]
    assert _norm_widths(child, vision) == {24} and _norm_widths(child, text) == {64}
    assert len(child.get_submodule(text)) == 1
    assert child.config.vision_config.hidden_size == 24
    assert child.config.text_config.intermediate_size == 48
    assert child.model.multi_modal_projector.linear_1.weight.shape == (64, 24)


def test_validate_states_each_stacks_change(prepared):
    """`surgeon validate --model` (`dry_run`) names a stack's size change under its path,
    beside the main stack's sizes (the vision tower's hidden size is 48 in the zoo)."""
    from surgeon.api import dry_run

    plan = {"stacks": {"model.vision_tower.encoder.layers": {"hidden_size": 16}}}
    described = dry_run(prepared("llava").parent, {**plan, "importance": "weight"})
    assert "model.vision_tower.encoder.layers hidden_size 48 -> 16" in described
    assert described.startswith("num_layers 4, hidden_size 64, ")
