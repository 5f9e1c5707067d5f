"""Frontends: every zoo model traces, reproduces eager, names its tensors, traces on meta."""

import pytest
import torch

from surgeon.errors import SurgeonError, TraceError
from surgeon.frontends import as_inputs, output_tensors, synthetic_inputs, trace
from tests import zoo

# Which names are one tensor, per zoo model (tied input/output embeddings and the like).
EXPECTED_TIES = {
    "nanogpt": [{"transformer.wte.weight", "lm_head.weight"}],
    "gpt2": [{"transformer.wte.weight", "lm_head.weight"}],
    "llama": [{"model.embed_tokens.weight", "lm_head.weight"}],
    "gemma": [{"model.embed_tokens.weight", "lm_head.weight"}],
    "gemma2": [{"model.embed_tokens.weight", "lm_head.weight"}],
    "opt": [{"model.decoder.embed_tokens.weight", "lm_head.weight"}],
    "bert": [
        {"bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"},
        {"cls.predictions.bias", "cls.predictions.decoder.bias"},
    ],
}
FRONTEND = {"nanogpt": "fx"}


@pytest.mark.parametrize("name", zoo.NAMES)
def test_trace_reproduces_eager(prepared, name):
    p = prepared(name)
    model, example, graph = p.model, p.example, p.parent.graph
    assert graph.frontend == FRONTEND.get(name, "export")
    inputs = as_inputs(example)
    expected = output_tensors(inputs.call(model))
    got = output_tensors(inputs.call(graph))
    assert len(expected) == len(got) >= 1
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    # Fresh inputs of the same shape: the graph is not specialised to the example's values.
    fresh = as_inputs(example)
    key = "pixel_values" if name == "vit" else None
    if key:
        fresh = as_inputs({key: torch.randn_like(example[key])})
    elif isinstance(example, dict):
        ids = torch.randint(3, zoo.VOCAB, example["input_ids"].shape)
        fresh = as_inputs({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    else:
        fresh = as_inputs((torch.randint(3, zoo.VOCAB, example[0].shape),))
    torch.testing.assert_close(
        output_tensors(fresh.call(graph))[0], output_tensors(fresh.call(model))[0]
    )


@pytest.mark.parametrize("name", zoo.NAMES)
def test_parameter_table_covers_every_tensor_once(prepared, name):
    model, graph = prepared(name).model, prepared(name).parent.graph
    table = graph.params
    unique = {id(p): p for p in model.parameters()}  # parameters() yields each tensor once
    by_name = dict(model.named_parameters(remove_duplicate=False))
    entries = [e for e in table if e.kind == "parameter"]
    assert len(entries) == len(unique)
    # Each tensor exactly once: the names of one entry all point to the same tensor object.
    covered = set()
    for entry in entries:
        ids = {id(by_name[n]) for n in entry.names}
        assert len(ids) == 1, entry
        assert ids.isdisjoint(covered)
        covered |= ids
    assert covered == set(unique)
    assert all(n in table for n in by_name)
    assert table.num_parameters() == sum(p.numel() for p in model.parameters())
    assert [set(t) for t in table.tied] == EXPECTED_TIES.get(name, [])
    # Every tensor the graph reads is named in the table.
    for node in graph.tensor_nodes():
        assert node.target in table, node.format_node()


@pytest.mark.parametrize("name", zoo.NAMES)
def test_trace_on_meta_device_reads_no_weights(name):
    real_model, example = zoo.build(name)
    model, _ = zoo.build(name, device="meta")
    graph = trace(model, example, frontend=FRONTEND.get(name, "auto"))
    assert all(t.device.type == "meta" for t in graph.module.state_dict().values())
    meta_out = output_tensors(graph.inputs.call(graph))
    real_out = output_tensors(as_inputs(example).call(real_model))
    assert [t.shape for t in meta_out] == [t.shape for t in real_out]
    assert all(t.device.type == "meta" for t in meta_out)
    assert [set(t) for t in graph.params.tied] == EXPECTED_TIES.get(name, [])


def test_nodes_carry_shapes_and_module_paths():
    for name in ("nanogpt", "llama"):
        model, example = zoo.build(name)
        for frontend in ("fx", "export") if name == "nanogpt" else ("export",):
            graph = trace(model, example, frontend=frontend)
            linears = [n for n in graph.graph.nodes if "linear" in str(n.target)]
            assert len(linears) == sum(isinstance(m, torch.nn.Linear) for m in model.modules())
            for n in linears:
                assert isinstance(n.meta["val"], torch.Tensor)
                weight = n.args[1].target  # get_attr of the layer's weight
                owner = graph.params[weight].names  # any name of the (maybe tied) tensor
                paths = {path for path, _ in n.meta["nn_module_stack"].values()}
                assert any(name.rpartition(".")[0] in paths for name in owner), n.format_node()


def test_untraceable_model_gives_trace_error_naming_each_frontend():
    model, example = zoo.untraceable()
    with pytest.raises(TraceError) as info:
        trace(model, example)
    message = str(info.value)
    assert isinstance(info.value, SurgeonError)
    assert "export failed" in message and "fx failed" in message and "Try:" in message
    assert "\n" not in message
    assert isinstance(info.value.__cause__, Exception)
    with pytest.raises(TraceError, match="export failed"):
        trace(model, example, frontend="export")


def test_a_branch_on_the_data_is_traced_as_the_example_takes_it_and_checked_at_run_time():
    model, (x,) = zoo.branches()  # the example takes the first branch
    with pytest.warns(UserWarning, match="_Branches branches on its input values"):
        graph = trace(model, (x,))
    torch.testing.assert_close(graph.module(x), model(x))
    other = -x
    with pytest.raises(RuntimeError, match="Runtime assertion failed"):
        graph.module(other)  # the other branch: refused, never computed as the first


def test_unknown_frontend_and_missing_inputs_are_clear_errors():
    model, example = zoo.nanogpt()
    with pytest.raises(TraceError, match="unknown frontend 'jit'"):
        trace(model, example, frontend="jit")
    with pytest.raises(TraceError, match="pass example_inputs"):
        trace(model)


def test_trace_restores_training_flags_and_cache_setting():
    model, example = zoo.build("llama")
    model.train()
    model.model.layers[0].eval()
    model.config.use_cache = True
    trace(model, example)
    assert model.training and model.model.training and not model.model.layers[0].training
    assert model.config.use_cache is True


def test_tracing_leaves_each_config_its_own_experts_implementation():
    # transformers records the experts implementation per config: the text model's
    # experts dispatch, the vision tower refuses one; after tracing, each config states
    # what it stated before, and the config builds the model again
    import copy

    from surgeon.frontends.hf import tracing_settings

    model, _ = zoo.experts_beside_a_vision_tower()
    config = model.config
    parts = (config, config.text_config, config.vision_config)
    before = [c._experts_implementation for c in parts]
    assert before[1] != before[2]  # the case: two choices in one model
    with tracing_settings(model):
        assert config.text_config._experts_implementation == "batched_mm"
    assert [c._experts_implementation for c in parts] == before
    type(model)(copy.deepcopy(config))


@pytest.mark.parametrize("name", ["llama", "bert", "vit"])
def test_hf_models_trace_without_example_inputs(name):
    model, _ = zoo.build(name)
    inputs = synthetic_inputs(model)
    graph = trace(model)
    torch.testing.assert_close(
        output_tensors(inputs.call(graph))[0], output_tensors(inputs.call(model))[0]
    )


def test_in_place_ops_on_computed_values_become_out_of_place():
    import surgeon
    from surgeon.analysis import analyse
    from surgeon.pipeline import Parent

    model, example = zoo.scaled_layers()
    graph = trace(model, example, frontend="export")  # torch.fx keeps `imul` as a value
    targets = {str(n.target) for n in graph.module.graph.nodes}
    assert "aten.mul_.Tensor" not in targets and "aten.mul.Tensor" in targets
    child = surgeon.apply(Parent(model, graph, analyse(graph)), {"depth": [0, 2]})
    x, want = example[0], example[0]
    for i in (0, 2):  # the dropped layer neither runs nor scales the stream in place
        layer = model.layers[i]
        want = (want + layer.lin(want)) * layer.scale
    torch.testing.assert_close(child(x), model.head(want))


def test_inputs_are_derived_from_the_sub_configs_that_state_them():
    """An image classifier of a two-tower model sizes its images in its vision config;
    a model built of an encoder and a decoder config reads tokens both know; no derived
    token is a special one (a pad among them changes what FSMT's forward computes)."""
    import transformers as tf

    clip, _ = zoo.build("clip")
    classifier = tf.CLIPForImageClassification(clip.config)
    assert synthetic_inputs(classifier).kwargs["pixel_values"].shape == (2, 3, 16, 16)
    sizes = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, pad_token_id=0)
    encoder = tf.BertConfig(vocab_size=40, intermediate_size=48, **sizes)
    decoder = tf.BertConfig(vocab_size=30, is_decoder=True, add_cross_attention=True, **sizes)
    config = tf.EncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    kwargs = synthetic_inputs(tf.EncoderDecoderModel(config)).kwargs
    assert {"input_ids", "decoder_input_ids"} <= set(kwargs)
    assert kwargs["input_ids"].max() < 30 and kwargs["input_ids"].min() > 0
