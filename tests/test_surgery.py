"""Width surgery on every zoo model: permute is the identity on the function, a full-size
target is the identity, a shrink gives a trainable child that the parent's class holds
exactly, and the parent is never changed."""

import re

import pytest
import torch

import surgeon
from surgeon import PlanError
from surgeon.api import subclone
from surgeon.frontends import as_inputs
from tests import zoo
from tests.helpers import assert_embedding_is_a_hand_slice, fingerprint, out, shrink_plan, train


@pytest.fixture(params=zoo.NAMES)
def parent(request, prepared):
    """Each zoo parent, traced and analysed once for the whole session."""
    return prepared(request.param)


def test_permute_only_is_the_identity(parent):
    model, inputs = parent.model, as_inputs(parent.example)
    child = subclone(parent.parent, {"importance": "weight"})
    assert child.state.select, "weight importance permutes some groups"
    moved = [g for g, idx in child.state.select.items() if not torch.equal(idx, idx.sort()[0])]
    assert moved, "a permutation that moves nothing tests nothing"
    torch.testing.assert_close(out(child.graph, inputs), out(model, inputs), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out(child.model, inputs), out(model, inputs), atol=1e-5, rtol=1e-5)


def test_full_size_target_is_the_identity(parent):
    model, example = parent.model, parent.example
    report = surgeon.inspect(parent.parent).to_dict()
    layer = report["layers"][0]
    target = {
        "hidden_size": report["hidden_size"],
        "intermediate_size": layer["intermediate_size"],
        "num_heads": layer["num_heads"],
        "num_kv_heads": layer["num_kv_heads"],
    }
    child = subclone(parent.parent, {"target": target, "importance": "first"})
    parent_state = model.state_dict()
    for key, value in child.model.state_dict().items():
        assert torch.equal(value, parent_state[key]), key
    inputs = as_inputs(example)
    assert torch.equal(out(child.model, inputs), out(model, inputs))


def test_shrink_gives_a_trainable_child_the_parents_class_holds(parent):
    name, model, example = parent.name, parent.model, parent.example
    inputs = as_inputs(example)
    child = subclone(parent.parent, shrink_plan(name))
    graph_params = sum(p.numel() for p in child.graph.parameters())
    assert graph_params < 0.5 * sum(p.numel() for p in model.parameters())
    if name != "nanogpt":  # Hugging Face: same class, smaller config, same function
        assert type(child.model) is type(model)
        rebuilt = type(model)(child.model.config)
        assert sum(p.numel() for p in rebuilt.parameters()) == graph_params
        torch.testing.assert_close(out(child.model, inputs), out(child.graph, inputs))
        shape = surgeon.inspect(child.model, example).to_dict()
        assert shape["hidden_size"] == 32
        want = shrink_plan(name)["target"]
        assert {k: shape["layers"][0][k] for k in ("intermediate_size", "num_heads")} == {
            "intermediate_size": want["intermediate_size"],
            "num_heads": 2,
        }
        assert shape["layers"][0]["num_kv_heads"] == want["num_kv_heads"]
    for names in child.state.graph.params.tied:  # ties survive: one tensor, several names
        for module in (child.model, child.graph):
            present = dict(module.named_parameters(remove_duplicate=False))
            tensors = {id(present[n]) for n in names if n in present}
            assert len(tensors) == 1, (names, type(module).__name__)
    losses = train(child.model, inputs, steps=20)
    assert losses[-1] < losses[0]
    train(child.graph, inputs, steps=2)  # the graph child has its own Parameters too
    assert fingerprint(model) == parent.fingerprint


def test_rescale_paper_scales_cut_matrices(prepared):
    parent = prepared("llama").parent
    plan = shrink_plan("llama")
    scaled = subclone(parent, plan)
    plain = subclone(parent, {**plan, "rescale": "none"})
    a = dict(scaled.model.named_parameters())
    b = dict(plain.model.named_parameters())
    q = "model.layers.0.self_attn.q_proj.weight"  # input axis 64 -> 32: sqrt(2)
    torch.testing.assert_close(a[q], b[q] * 2**0.5)
    down = "model.layers.0.mlp.down_proj.weight"  # input axis 96 -> 48
    torch.testing.assert_close(a[down], b[down] * 2**0.5)
    norm = "model.layers.0.input_layernorm.weight"  # not a matrix: unchanged
    torch.testing.assert_close(a[norm], b[norm])


@pytest.mark.parametrize(
    "name, target, message",
    [
        ("llama", {"hidden_size": 65}, "wider than the parent (64)"),
        ("llama", {"intermediate_size": 100}, "wider than the parent (96)"),
        ("llama", {"num_heads": 3, "num_kv_heads": 2}, "does not divide"),
        ("llama", {"num_heads": 6, "num_kv_heads": 1}, "needs 6 query heads per KV group"),
        ("llama", {"num_kv_heads": 3, "num_heads": 3}, "wider than the parent (2)"),
        ("gpt2", {"num_heads": 2, "num_kv_heads": 1}, "must equal num_heads"),
        ("llama", {"head_dim": 8}, "rotary embeddings couple it"),
        ("gpt2", {"head_dim": 8}, "heads are kept or dropped whole"),
        ("gpt2", {"hidden_size": 32, "num_heads": 4}, "cannot hold this child"),
        ("llama", {"hidden_size": 0}, "must be a positive integer"),
        ("llama", {"hidden_size": "big"}, "must be a positive integer"),
        ("llama", {"layers": 2}, "unknown target 'layers'"),
    ],
)
def test_illegal_targets_are_plan_errors(prepared, name, target, message):
    p = prepared(name)
    with pytest.raises(PlanError, match=re.escape(message)):
        surgeon.apply(p.parent, {"target": target})
    with pytest.raises(PlanError, match=re.escape(message)):  # and from a plain module
        surgeon.apply(p.model, {"target": target}, example_inputs=p.example)
    assert fingerprint(p.model) == p.fingerprint


def test_bad_plans_are_plan_errors(prepared):
    p = prepared("llama")
    for plan, message in [
        ({"importance": "magic"}, "importance 'magic' is not one of: activation"),
        ({"rescale": 3}, "rescale 3 is not one of: paper, none"),
        ({"targets": {}}, "unknown key 'targets'"),
        ([1, 2], "a plan is a mapping"),
        ("target: [", "not valid YAML"),
        ("missing-plan.yaml", "does not exist"),
    ]:
        with pytest.raises(PlanError, match=re.escape(message)):
            surgeon.apply(p.parent, plan)


def test_a_parent_without_weights_is_a_clear_error():
    model, example = zoo.build("llama", device="meta")
    with pytest.raises(surgeon.SurgeonError, match="weights on the meta device"):
        surgeon.apply(model, shrink_plan("llama"), example_inputs=example)


def test_apply_returns_a_graph_module_for_plain_modules():
    """A plain module gives a torch.fx graph that takes any batch and length; at full size
    (every width kept, reordered by importance) it computes what the parent computes."""
    model, example = zoo.nanogpt()
    child = surgeon.apply(model, shrink_plan("nanogpt"), example_inputs=example)
    assert isinstance(child, torch.fx.GraphModule)
    fresh = torch.randint(3, zoo.VOCAB, (3, 12))  # traced with torch.fx: any batch and length
    assert child(fresh).shape == (3, 12, zoo.VOCAB)
    full = surgeon.apply(model, {"target": {}}, example_inputs=example)
    with torch.no_grad():
        torch.testing.assert_close(full(fresh), model(fresh), rtol=1e-5, atol=1e-5)


def test_child_shares_no_storage_with_the_parent(prepared):
    """A kept range is cut as a view for speed; the child must still own its tensors."""
    model = prepared("llama").model
    child = subclone(prepared("llama").parent, {**shrink_plan("llama"), "importance": "first"})
    parent = {t.untyped_storage().data_ptr() for t in model.parameters()}
    for module in (child.graph, child.model):
        for name, p in module.named_parameters():
            assert p.untyped_storage().data_ptr() not in parent, name


# One of each kind of buffer the constructor rebuilds and of embedding: rotary (full,
# partial, GPT-NeoX's), a scaled embedding (Gemma's), learnt positions (GPT-2, BERT), patches
# (ViT). Not a function-preserving step: the whole zoo is not needed.
BFLOAT16_NAMES = ("gpt2", "llama", "phi", "gemma", "gemma2", "gpt_neox", "bert", "vit")


@pytest.mark.parametrize("name", BFLOAT16_NAMES)
def test_a_bfloat16_parent_gives_a_bfloat16_child(name):
    """Checkpoints are mostly bfloat16: the child keeps the dtype (buffers the
    constructor rebuilds included) and the rebuilt class computes what the graph does."""
    model, example = zoo.build(name)
    model = model.to(torch.bfloat16)
    before = fingerprint(model)
    child = subclone(model, {**shrink_plan(name), "importance": "weight"}, example)
    assert {p.dtype for p in child.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in child.graph.parameters()} == {torch.bfloat16}
    assert_embedding_is_a_hand_slice(model, child.model, child.kept["hidden_size"])
    inputs = as_inputs(example)
    torch.testing.assert_close(out(child.model, inputs), out(child.graph, inputs), atol=0, rtol=0)
    assert fingerprint(model) == before


def test_parallel_blocks_cut_their_ffn_like_a_hand_sliced_parent():
    """The MLP of a layer whose attention and MLP read one norm is found (its FFN width was
    0 before) and cut: the child computes what the parent's class computes with the
    first neurons of every MLP kept by hand."""
    import surgeon
    from tests.zoo import parallel_blocks

    parent = parallel_blocks()
    layers = surgeon.inspect(parent).to_dict()["layers"]
    assert {layer["intermediate_size"] for layer in layers} == {96}
    plan = {"target": {"intermediate_size": 48}, "importance": "first", "rescale": "none"}
    child = surgeon.apply(parent, plan)
    config = type(parent.config).from_dict({**parent.config.to_dict(), "intermediate_size": 48})
    reference = type(parent)(config).eval()
    state = parent.state_dict()
    for name in state:
        if "gate_proj" in name or "up_proj" in name:
            state[name] = state[name][:48]
        elif "down_proj" in name:
            state[name] = state[name][:, :48]
    reference.load_state_dict(state)
    ids = torch.randint(3, 128, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = reference(input_ids=ids).logits, child(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()


def test_parallel_blocks_are_one_layer_applied_once_so_depth_cuts_them():
    """The norm both parallel blocks read is read twice per layer; every other weight
    once: the layer is applied once (not shared like ALBERT's), and depth keeps parent
    layers 0 and 2 exactly (the reference: the parent's class with those layers' weights
    by hand)."""
    import surgeon
    from tests.zoo import parallel_blocks

    parent = parallel_blocks()
    assert "applied" not in surgeon.inspect(parent).to_dict()["layers"][0]
    child = surgeon.apply(parent, {"target": {"num_layers": 2}, "depth": [0, 2]})
    config = type(parent.config).from_dict({**parent.config.to_dict(), "num_hidden_layers": 2})
    reference = type(parent)(config).eval()
    state = {}
    for name, tensor in parent.state_dict().items():
        if ".layers.1." in name:
            continue
        state[name.replace(".layers.2.", ".layers.1.")] = tensor
    reference.load_state_dict(state)
    ids = torch.randint(3, 128, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = reference(input_ids=ids).logits, child(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
