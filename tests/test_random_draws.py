"""Forwards that draw random numbers: a draw no cut size reaches (ViT-MAE's patch noise,
one number per image and patch) is cut like any model, every check run with one seed; a
draw along a width a plan cuts is refused in one line, and so is an ONNX file that
draws (onnxruntime draws other numbers than PyTorch)."""

import pytest
import torch

from surgeon import apply, prepare
from surgeon.emit.onnx import emit_onnx
from surgeon.errors import SurgeonError
from tests import zoo


def _seeded(model, example):
    torch.manual_seed(0)
    with torch.no_grad():
        return model(**example)


@pytest.fixture(scope="module")
def mae():
    model, example = zoo.masked_autoencoder()
    return model, example, prepare(model, example)


def test_noise_over_patches_is_drawn_alike_by_parent_and_child(mae):
    model, example, parent = mae
    want = _seeded(model, example)
    same = apply(parent, {"importance": "weight"})  # permuted only: the parent's output
    torch.testing.assert_close(_seeded(same, example).last_hidden_state, want.last_hidden_state)
    child = apply(parent, {"target": {"hidden_size": 16, "num_heads": 2}})
    got = _seeded(child, example)
    assert got.last_hidden_state.shape[-1] == 16
    # which patches are kept is the parent's draw: the same mask and order
    assert torch.equal(got.mask, want.mask)
    assert torch.equal(got.ids_restore, want.ids_restore)


def test_the_onnx_file_of_a_forward_that_draws_is_refused_and_removed(mae, tmp_path):
    model, example, parent = mae
    child = apply(parent, {"target": {"hidden_size": 16, "num_heads": 2}})
    with pytest.raises(SurgeonError, match=r"^the ONNX graph draws random numbers \(Random"):
        emit_onnx(child, example, tmp_path)
    assert not list(tmp_path.iterdir())


def test_noise_along_a_width_a_plan_cuts_is_refused():
    model, example = zoo.noisy_width()
    with pytest.raises(SurgeonError, match=r"draws random numbers in its forward .* along "):
        prepare(model, example)
