"""Hierarchical backbones: stages of layers, each stage a module list inside an entry of
another (Swin's `encoder.layers.0.blocks.1`) and a residual stream of its own width. Each
stage's layers are found as a stack on its stream, and a child cut per stage through the
Hugging Face class (per-stage lists in its config: `num_heads`) is the parent sliced by
hand."""

import copy

import torch

from surgeon import inspect
from surgeon.api import subclone
from tests import zoo

STAGES = ("swin.encoder.layers.0.blocks", "swin.encoder.layers.1.blocks")


def test_each_stage_is_a_stack_on_a_stream_of_its_own():
    model, inputs, _ = zoo.staged()
    d = inspect(model, inputs).to_dict()
    assert d["stacks"] == dict.fromkeys(STAGES, 2)
    assert {s: d["stack_sizes"][s]["hidden_size"] for s in STAGES} == {STAGES[0]: 16, STAGES[1]: 32}
    assert [(x["num_heads"], x["intermediate_size"]) for x in d["layers"]] == [
        (2, 64),
        (2, 64),
        (4, 128),
        (4, 128),
    ]


def test_a_permuted_child_computes_the_parents_output():
    model, inputs, _ = zoo.staged()
    child = subclone(model, {"target": {}, "importance": "weight"}, inputs).model
    with torch.no_grad():
        want, got = model(**inputs).logits, child(**inputs).logits
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_stages_cut_to_half_are_the_parent_sliced_by_hand():
    model, inputs, config = zoo.staged()
    plan = {
        "target": {},
        "importance": "first",
        "rescale": "none",
        "stacks": {
            STAGES[0]: {"hidden_size": 8, "num_heads": 1, "intermediate_size": 32},
            STAGES[1]: {"hidden_size": 16, "num_heads": 2, "intermediate_size": 64},
        },
    }
    child = subclone(model, plan, inputs).model
    assert (child.config.embed_dim, list(child.config.num_heads)) == (8, [1, 2])
    assert child.config.depths == [2, 2] and child.config.mlp_ratio == 4.0
    small = copy.deepcopy(config)
    small.embed_dim, small.num_heads = 8, [1, 2]
    reference = type(model)(small).eval()
    parent = model.state_dict()
    reference.load_state_dict(
        {k: _lead(k, parent[k], t.shape) for k, t in reference.state_dict().items()}
    )
    with torch.no_grad():
        want, got = reference(**inputs).logits, child(**inputs).logits
    assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max()


def _lead(name: str, tensor: torch.Tensor, shape) -> torch.Tensor:
    """The leading positions of every axis; the patch merge's inputs are 4 neighbours'
    channels side by side, so there the leading channels of each quarter."""
    if "downsample" in name:  # its norm's weight and bias, its reduction's weight
        width, keep = tensor.shape[-1] // 4, shape[-1] // 4
        index = torch.cat([torch.arange(q * width, q * width + keep) for q in range(4)])
        tensor = tensor.index_select(tensor.dim() - 1, index)
    return tensor[tuple(slice(0, n) for n in shape)].clone()


def test_the_first_layer_of_each_stage_kept_is_the_parent_without_the_others():
    """Depth per stage: `last` keeps each stage's leading layers at their places (its
    class shifts the windows of every other layer by position, so a layer moved to
    another place would compute otherwise: the rebuilt model's check says so)."""
    model, inputs, config = zoo.staged()
    plan = {"target": {"num_layers": 1}, "depth": "last", "rescale": "none"}
    child = subclone(model, plan, inputs).model
    assert child.config.depths == [1, 1]
    small = copy.deepcopy(config)
    small.depths = [1, 1]
    reference = type(model)(small).eval()
    kept = {k: t for k, t in model.state_dict().items() if ".blocks.1." not in k}
    reference.load_state_dict(kept)
    with torch.no_grad():
        want, got = reference(**inputs).logits, child(**inputs).logits
    assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max()


def test_depth_keeps_each_layer_where_a_layer_of_its_kind_sits():
    """`in_place` worked by hand: kinds alternate A B A B; the middle run's choice [1, 2]
    puts a B first and an A second, so each moves to the nearest layer of the kind its
    place needs (ties to the lower index); layers of one kind, or a choice that fits,
    are left; where no layer of the kind a place needs is left after the earlier ones,
    the choice stays as it was (the rebuilt model's check then says why)."""
    from surgeon.passes.depth import in_place

    assert in_place([1, 2], list("ABAB")) == [0, 1]
    assert in_place([2, 3], list("ABAB")) == [2, 3]
    assert in_place([1, 3], list("AAAA")) == [1, 3]
    assert in_place([0, 3, 5], list("ABABAB")) == [0, 3, 4]
    assert in_place([1, 2], list("AAB")) == [1, 2]


def test_a_config_that_states_each_layers_kind_leaves_depth_as_the_strategy_chose():
    """Layer kinds that the config lists (`layer_types`) move with the layers into the
    child's config, so depth does not move layers to places of their kind."""
    import transformers as tf

    from surgeon.fit import states_kinds

    config = tf.Gemma2Config(num_hidden_layers=4)
    assert states_kinds(config, 4) and not states_kinds(config, 3)
    _, _, swin = zoo.staged()
    assert not states_kinds(swin, 4)


def test_layers_that_hold_tensors_of_their_own_keep_the_strategys_choice():
    """GPT-NeoX-Japanese gives its last layer alone a bias of its own (the class places it
    by the end of the stack): layers that differ in tensors are not moved to places of
    their kind, so halving 4 layers keeps `middle`'s choice, the last layer last."""
    model, inputs = zoo.last_layer_of_its_own()
    cut = subclone(model, {"target": {"num_layers": 2}}, inputs).cut
    assert cut.state.kept_layers() == [0, 3]


def test_layers_held_in_a_sequential_are_counted_when_the_config_is_fitted():
    """CvT's stages hold their layers in an `nn.Sequential`: its per-stage `depth` list is
    fitted to the kept layers (a stage of 4 cut to 2), and the child computes what the
    parent computes with the dropped layers made identities."""
    model, inputs = zoo.staged_in_sequentials()
    child = subclone(model, {"target": {"num_layers": 2}, "depth": "last"}, inputs).model
    assert child.config.depth == [2, 2]
    reference = copy.deepcopy(model)
    for layer in (2, 3):  # the layers `last` drops: each becomes its input
        module = reference.cvt.encoder.stages[1].layers[layer]
        module.forward = lambda hidden, *args, **kwargs: hidden
    with torch.no_grad():
        want, got = reference(**inputs).logits, child(**inputs).logits
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_a_reduction_as_wide_as_its_stage_is_cut_with_it_and_the_mlp_keeps_its_width():
    """SegFormer: each stage's keys and values are read through a strided conv whose
    output the class sizes with the stage width; cut with the stage, by its leading
    channels under `importance: first`. The MLP, which the plan leaves whole, keeps its
    width: the config's per-stage ratio doubles. The child is the parent sliced by hand."""
    model, inputs, config = zoo.staged_with_reduction()
    stages = ("segformer.stages.0.blocks", "segformer.stages.1.blocks")
    plan = {
        "target": {},
        "importance": "first",
        "rescale": "none",
        "stacks": {
            stages[0]: {"hidden_size": 8, "num_heads": 1},
            stages[1]: {"hidden_size": 16, "num_heads": 1},
        },
    }
    child = subclone(model, plan, inputs).model
    assert list(child.config.hidden_sizes) == [8, 16]
    assert list(child.config.mlp_ratios) == [8, 8]
    assert list(child.config.num_attention_heads) == [1, 1]
    small = copy.deepcopy(config)
    small.hidden_sizes, small.mlp_ratios, small.num_attention_heads = [8, 16], [8, 8], [1, 1]
    reference = type(model)(small).eval()
    parent = model.state_dict()
    reference.load_state_dict(
        {
            k: parent[k][tuple(slice(0, n) for n in t.shape)]
            for k, t in reference.state_dict().items()
        }
    )
    with torch.no_grad():
        want, got = reference(**inputs).logits, child(**inputs).logits
    assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max()


def test_a_config_without_an_image_size_gets_inputs_derived_for_it():
    model, _, _ = zoo.staged_with_reduction()
    assert not hasattr(model.config, "image_size")
    d = inspect(model).to_dict()
    assert d["stacks"] == {"segformer.stages.0.blocks": 2, "segformer.stages.1.blocks": 2}


def test_stages_of_one_layer_in_a_list_of_lists_are_a_stack_each():
    model, inputs = zoo.stages_of_one_layer()
    d = inspect(model, inputs).to_dict()
    assert d["stacks"] == {"pvt.encoder.block.0": 1, "pvt.encoder.block.1": 1}
    assert [d["stack_sizes"][s]["hidden_size"] for s in d["stacks"]] == [16, 32]
