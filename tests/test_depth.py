"""Depth surgery on every zoo model: keep, remove and duplicate whole layers."""

import pytest
import torch

import surgeon
from surgeon import PlanError
from surgeon.analysis.dims import rule_key
from surgeon.analysis.residual import HEAVY
from surgeon.api import subclone
from surgeon.frontends import as_inputs, output_tensors
from surgeon.passes.depth import choose_layers
from tests import zoo

FRONTEND = {"nanogpt": "fx"}


def out(model, inputs):
    return output_tensors(inputs.call(model))[0]


@pytest.fixture(params=zoo.NAMES)
def parent(request, prepared):
    """(name, model, example inputs, analysis, prepared parent), traced once a session."""
    p = prepared(request.param)
    return p.name, p.model, p.example, p.parent.analysis, p.parent


def test_keeping_all_layers_is_the_identity(parent):
    name, model, example, analysis, prepared = parent
    n = len(analysis.layers)
    child = subclone(prepared, {"depth": list(range(n)), "importance": "first"})
    inputs = as_inputs(example)
    assert torch.equal(out(child.model, inputs), out(model, inputs))


@pytest.mark.parametrize("strategy", ["middle", "first", "last"])
def test_removing_a_layer(parent, strategy):
    name, model, example, analysis, prepared = parent
    n = len(analysis.layers)
    child = subclone(prepared, {"target": {"num_layers": n - 1}, "depth": strategy})
    removed = {0: "first", 1: "middle", n - 1: "last"}
    gone = next(i for i, s in removed.items() if s == strategy)
    assert child.state.layers == [i for i in range(n) if i != gone]
    prefix = analysis.layers[gone].name + "."
    expected = sum(p.numel() for k, p in model.named_parameters() if not k.startswith(prefix))
    assert sum(p.numel() for p in child.graph.parameters()) == expected
    inputs = as_inputs(example)
    if name != "nanogpt":
        assert sum(p.numel() for p in child.model.parameters()) == expected
        torch.testing.assert_close(out(child.model, inputs), out(child.graph, inputs))
        if strategy == "middle":  # traced again: the child's own structure (once a model)
            assert surgeon.inspect(child.model, example).to_dict()["num_layers"] == n - 1
        _per_layer_lists_follow(model.config, child.model.config, child.state.layers, n)


def _per_layer_lists_follow(parent_config, child_config, kept, n):
    for field, value in vars(parent_config).items():
        if isinstance(value, (list, tuple)) and len(value) == n:
            assert list(getattr(child_config, field)) == [value[i] for i in kept], field


def test_duplicate_then_silence_gives_the_parent_back(parent):
    """Duplicate layer 1, then zero what the original layer 1 writes into the stream: the
    copy alone does the layer's work, so the child computes the parent again. (Zeroing the
    original, found in the parent's analysis under the names the child keeps, also fails
    the test if the "copy" shares its tensors with it.)"""
    name, model, example, analysis, prepared = parent
    n = len(analysis.layers)
    layer = analysis.layers[1]
    if _post_norm(layer):
        pytest.skip("post-norm layer: LN(x + 0) is not x, so no copy can be silenced")
    order = [0, 1, 1] + list(range(2, n))
    child = subclone(prepared, {"depth": order, "importance": "first"})
    inputs = as_inputs(example)
    assert child.state.layers == order
    target = child.model
    own = sum(p.numel() for k, p in model.named_parameters() if k.startswith(layer.name + "."))
    total = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in target.parameters()) == total + own  # the copy's own
    with torch.no_grad():
        for block in layer.blocks:
            for tensor_name in _writers(block, prepared.graph):
                target.get_parameter(tensor_name).zero_()
    torch.testing.assert_close(out(target, inputs), out(model, inputs), atol=1e-5, rtol=1e-5)
    if name != "nanogpt":  # every Hugging Face config answers num_hidden_layers (attribute_map)
        assert target.config.num_hidden_layers == n + 1


def _post_norm(layer) -> bool:
    """Whether the layer normalises the stream after its last residual addition."""
    node, chain = layer.blocks[-1].add, []
    while node is not layer.output:
        node = next(iter(node.users))
        chain.append(rule_key(node))
    return any(op in ("layer_norm", "rms_norm", "rsqrt") for op in chain)


def _writers(block, graph):
    """The names of the weights and biases of the ops that write a block's output into
    the stream."""
    found, stack, seen = [], [block.branch], set()
    while stack:
        n = stack.pop()
        if n in seen or n.op != "call_function":
            continue
        seen.add(n)
        if rule_key(n) in HEAVY:
            found += [a for a in n.all_input_nodes if a.op == "get_attr"]
            continue
        stack.extend(n.all_input_nodes)
    assert found, block.add
    return [graph.params.canonical(a.target) for a in found]


def test_copies_have_their_own_parameters():
    model, example = zoo.build("gemma")
    child = subclone(model, {"depth": [0, 1, 1, 2]}, example).model
    a, b = child.model.layers[1], child.model.layers[2]
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr(), name


def test_saved_child_reloads_with_its_layer_types(tmp_path):
    model, example = zoo.build("gemma2")
    child = surgeon.apply(
        model, {"target": {"num_layers": 2}, "depth": "middle"}, example_inputs=example
    )
    assert child.config.layer_types == [model.config.layer_types[i] for i in (0, 2)]
    child.save_pretrained(tmp_path)
    again = type(model).from_pretrained(tmp_path).eval()
    inputs = as_inputs(example)
    torch.testing.assert_close(out(again, inputs), out(child, inputs))


def _calibration():
    ids = torch.randint(3, zoo.VOCAB, (3, 2, 8), generator=torch.Generator().manual_seed(1))
    return [{"input_ids": x, "attention_mask": torch.ones_like(x)} for x in ids]


@torch.no_grad()
def _turn_per_layer(model, batches) -> list[float]:
    """1 − cos(x_in, x_out) of each of the Hugging Face model's own decoder layers, averaged
    over positions and batches, measured with forward hooks (no surgeon code)."""
    layers = model.model.layers
    sums, count = [0.0] * len(layers), 0

    def hook(i):
        def record(module, args, kwargs, output):
            x_in = args[0] if args else kwargs["hidden_states"]
            x_out = output[0] if isinstance(output, tuple) else output
            turn = 1 - torch.nn.functional.cosine_similarity(x_in, x_out, dim=-1)
            sums[i] += turn.double().sum().item()

        return record

    handles = [la.register_forward_hook(hook(i), with_kwargs=True) for i, la in enumerate(layers)]
    try:
        for batch in batches:
            model(**batch)
            count += batch["input_ids"].numel()
    finally:
        for h in handles:
            h.remove()
    return [x / count for x in sums]


def test_influence_removes_the_least_influential_layers():
    """Zero what the parent's most influential layer writes into the stream (o_proj and
    down_proj): it adds 0 and turns nothing. Keeping 1 of 3 layers, `influence` must remove
    it and the weaker of the other two, as measured here with hooks on the model's own
    decoder layers."""
    model, example = zoo.build("llama")
    batches = _calibration()
    natural = _turn_per_layer(model, batches)
    strongest = max(range(3), key=lambda i: natural[i])
    with torch.no_grad():
        layer = model.model.layers[strongest]
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    turns = _turn_per_layer(model, batches)
    assert turns[strongest] == pytest.approx(0, abs=1e-6)
    others = sorted(turns[i] for i in range(3) if i != strongest)
    assert others[0] > 1e-3 and others[1] > 1.01 * others[0]  # a clear ranking
    keep = max(range(3), key=lambda i: turns[i])
    child = subclone(model, {"target": {"num_layers": 1}, "depth": "influence"}, example, batches)
    assert child.state.layers == [keep]
    assert child.state.influence == pytest.approx(turns, rel=1e-4, abs=1e-6)
    assert len(child.model.model.layers) == 1


def test_strategies_choose_the_documented_layers():
    assert choose_layers(30, "middle", 20) == list(range(10)) + list(range(20, 30))
    assert choose_layers(30, "first", 20) == list(range(10, 30))
    assert choose_layers(30, "last", 20) == list(range(20))
    assert choose_layers(30, "uniform", 4) == [0, 10, 19, 29]
    assert choose_layers(5, "middle", 4) == [0, 1, 3, 4]
    assert choose_layers(4, (0, 1, 1, 3), None) == [0, 1, 1, 3]


@pytest.mark.parametrize(
    "plan, message",
    [
        ({"target": {"num_layers": 4}}, "deeper than the parent (3)"),
        ({"depth": [0, 5]}, "depth lists layer 5; the parent has 3"),
        ({"depth": [2, 0]}, "layers keep the parent's order"),
        ({"depth": [0, 1], "target": {"num_layers": 3}}, "depth lists 2 layers"),
        ({"depth": "random"}, "depth must be one of middle"),
        ({"depth": []}, "non-empty list"),
        ({"target": {"num_layers": 2}, "depth": "influence"}, "pass calibration"),
    ],
)
def test_bad_depth_plans_are_plan_errors(plan, message):
    model, example = zoo.build("llama")
    with pytest.raises(PlanError, match=message.replace("(", r"\(").replace(")", r"\)")):
        surgeon.apply(model, plan, example_inputs=example)


def test_a_post_norm_written_out_is_the_stream_not_a_value_others_read():
    from surgeon.passes.depth import read_by_others

    model, example = zoo.post_norm_layers()
    parent = surgeon.prepare(model, example)
    assert len(parent.analysis.layers) == 3 and read_by_others(parent.analysis.layers) == {}
    child = surgeon.apply(parent, {"depth": "first", "target": {"num_layers": 2}})
    x = example[0]
    for i in (1, 2):
        x = model.norms[i](x + model.layers[i](x))
    torch.testing.assert_close(child(example[0]), model.head(x))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_a_scaled_skip_starts_its_layer_at_the_stream(frontend):
    """`x = alpha * x + f(x)`: the layer reads the stream before alpha (a weight of the
    layer), so dropping the layer drops its alpha too."""
    from surgeon.analysis import analyse
    from surgeon.frontends import trace

    model, example = zoo.gated_skips()
    graph = trace(model, example, frontend=frontend)
    parent = surgeon.Parent(model, graph, analyse(graph))
    layers = parent.analysis.layers
    assert [layer.name for layer in layers] == ["layers.0", "layers.1", "layers.2"]
    assert all(len(layer.blocks) == 2 for layer in layers)
    child = surgeon.apply(parent, {"depth": "first", "target": {"num_layers": 2}})
    x = example[0]
    for i in (1, 2):
        x = model.layers[i](x)
    torch.testing.assert_close(child(example[0]), model.head(x))
