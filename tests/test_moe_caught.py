"""Two mixture-of-experts types surgeon's own check used to stop (issue 32), each against
an independent reference:

- MiniMax: a layer's skip is its own input norm's output (`r = norm(x); r * alpha +
  attn(r)`), so the layer starts at `x`, not at `r`: a child that drops layers must drop
  their norms too. Reference: the parent's tensors of the kept layers, renamed by hand,
  in a fresh MiniMax of the child's depth (its lightning attention's decay buffers are
  the parent layer's own, saved with the weights).
- LongCat-Flash: its attention holds sqrt(hidden / q_lora_rank) and head_dim ** -0.5,
  equal in a parent, apart in a narrower child; each call in the graph takes the value
  of the attribute its source line names. Reference: the rebuilt Hugging Face child's
  logits against the child graph's; and a call whose trace names neither is refused in
  one line.
"""

import pytest
import torch
from transformers import MiniMaxForCausalLM

import surgeon
from surgeon import PlanError
from surgeon.api import subclone
from surgeon.emit.hf import _swapped
from tests import zoo

IDS = torch.randint(3, 64, (2, 8), generator=torch.Generator().manual_seed(1))
INPUTS = {"input_ids": IDS, "attention_mask": torch.ones_like(IDS)}


def _logits(model):
    with torch.no_grad():
        return model(**INPUTS).logits


def test_minimax_dropped_layers_take_their_input_norms():
    parent = zoo.minimax_norm_skips()
    config = parent.config
    plan = {"target": {"num_layers": 2}, "importance": "first", "rescale": "none"}
    prepared = surgeon.prepare(parent, INPUTS)
    made = subclone(prepared, plan)
    child, kept = made.model, made.cut.state.layers
    assert len(kept) == 2 and [config.layer_types[i] for i in kept] == child.config.layer_types
    by_hand = {}
    for name, tensor in parent.state_dict().items():
        parts = name.split(".")
        if parts[:2] == ["model", "layers"]:
            if int(parts[2]) not in kept:
                continue
            parts[2] = str(kept.index(int(parts[2])))
        by_hand[".".join(parts)] = tensor
    reference = MiniMaxForCausalLM(child.config).eval()
    reference.load_state_dict(by_hand, strict=True)
    torch.testing.assert_close(_logits(child), _logits(reference), atol=1e-5, rtol=1e-4)
    # and the parent's own forward with the dropped layers skipped
    layers = parent.model.layers
    parent.model.layers = torch.nn.ModuleList([layers[i] for i in kept])
    parent.config.layer_types = child.config.layer_types
    try:
        skipped = _logits(parent)
    finally:
        parent.model.layers, parent.config.layer_types = layers, config.layer_types
    torch.testing.assert_close(_logits(child), skipped, atol=1e-5, rtol=1e-4)


def test_longcat_scales_equal_in_the_parent_apart_in_the_child():
    parent = zoo.longcat_equal_scales()
    attn = parent.model.layers[0].self_attn[0]
    assert attn.mla_scale_q_lora == pytest.approx(attn.scaling)  # the collision
    made = subclone(surgeon.prepare(parent, INPUTS), {"target": {"hidden_size": 8}})
    rebuilt = made.model.model.layers[0].self_attn[0]
    assert rebuilt.mla_scale_q_lora != pytest.approx(rebuilt.scaling)
    with torch.no_grad():
        graph = made.graph(**INPUTS)
    graph = graph["logits"] if isinstance(graph, dict) else graph[0]
    torch.testing.assert_close(_logits(made.model), graph, atol=1e-5, rtol=1e-4)


def test_a_shared_float_no_trace_names_is_refused():
    gm = torch.export.export(*zoo.shared_float()).module()
    muls = [n for n in gm.graph.nodes if n.op == "call_function" and 0.5 in n.args]
    assert len(muls) == 2
    swap = {0.5: {"a": 0.25, "b": 0.5}}
    assert [_swapped(n, 0.5, swap) for n in muls] == [0.25, 0.5]  # as each line names it
    muls[0].meta["stack_trace"] = None
    with pytest.raises(PlanError, match="holds 0.5 in a and b") as e:
        _swapped(muls[0], 0.5, swap)
    assert "\n" not in str(e.value)
