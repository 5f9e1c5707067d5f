"""A stack of layers run in a loop (issue 32): Dory runs layer 0, then layers 1 and 2
twice, then layer 3. Each of the recurrent layers is applied twice in one forward, one
application after another; removing one removes it from every pass of the loop, as the
child's class loops over the layers it keeps. The child is checked against Dory's class
built by hand with one recurrent layer, holding the parent's layers 0, 1 and 3."""

import copy

import pytest
import torch

import surgeon
from tests.zoo import build


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(scope="module")
def dory():
    model, inputs = build("dory")
    return model, inputs, surgeon.prepare(model, inputs)


def test_the_recurrent_layers_are_applied_once_per_pass(dory):
    _, _, parent = dory
    layers = parent.analysis.layers
    assert [x.applied for x in layers] == [1, 2, 2, 1]
    assert [len(x.spans) for x in layers] == [0, 2, 2, 0]


def test_a_recurrent_layer_removed_from_every_pass(dory):
    model, inputs, parent = dory
    child = surgeon.apply(parent, {"target": {"num_layers": 3}, "depth": [0, 1, 3]})
    assert (child.config.n_input_layers, child.config.n_recurrent_layers) == (1, 1)
    assert child.config.n_output_layers == 1
    config = copy.deepcopy(model.config)
    config.num_hidden_layers, config.n_recurrent_layers = 3, 1
    config.layer_types = [model.config.layer_types[i] for i in (0, 1, 3)]
    ref = type(model)(config).eval()
    kept = {"model.layers.0.": "model.layers.0.", "model.layers.1.": "model.layers.1."}
    kept["model.layers.3."] = "model.layers.2."
    state = {}
    for name, t in model.state_dict().items():
        if name.startswith("model.layers."):
            prefix = ".".join(name.split(".")[:3]) + "."
            if prefix not in kept:
                continue
            name = kept[prefix] + name[len(prefix) :]
        state[name] = t
    ref.load_state_dict(state)
    torch.testing.assert_close(_logits(child, inputs), _logits(ref, inputs), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(_logits(child, inputs), _logits(model, inputs), atol=1e-3)


def test_a_recurrent_layer_copied_is_one_line(dory):
    _, _, parent = dory
    with pytest.raises(surgeon.PlanError) as e:
        surgeon.apply(parent, {"target": {"num_layers": 5}, "depth": [0, 1, 1, 2, 3]})
    message = str(e.value)
    assert "\n" not in message
    assert "model.layers.1 is applied 2 times in one forward" in message
    assert "cannot copy such a layer" in message


def test_hrm_stacks_lose_their_last_layer_in_every_cycle():
    """HRM's L and H stacks (each layer applied twice) keep layer 0 each; its count of
    cache slots (num_hidden_layers: layers x H_cycles x (L_cycles + 1)) follows."""
    model, inputs = build("hrm_text")
    assert (model.config.num_layers_per_stack, model.config.num_hidden_layers) == (2, 8)
    plan = {"target": {"num_layers": 1}, "depth": "last"}
    child = surgeon.apply(model, plan, example_inputs=inputs)
    assert (child.config.num_layers_per_stack, child.config.num_hidden_layers) == (1, 4)
    config = copy.deepcopy(model.config)
    config.num_layers_per_stack, config.num_hidden_layers = 1, 4
    ref = type(model)(config).eval()
    ref.load_state_dict({k: t for k, t in model.state_dict().items() if ".layers.1." not in k})
    torch.testing.assert_close(_logits(child, inputs), _logits(ref, inputs), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(_logits(child, inputs), _logits(model, inputs), atol=1e-3)
