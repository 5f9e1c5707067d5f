"""Analysis: the report matches every zoo model's config, and every group is verified by
permutation: permuting all of a group's axes keeps the output, permuting one changes it."""

import pytest
import torch
from torch.func import functional_call

from surgeon import UnsupportedOpError
from surgeon.analysis import analyse, permuted_tensors
from surgeon.frontends import output_tensors, trace
from surgeon.report import Report, inspect
from tests import zoo

FRONTEND = {"nanogpt": "fx"}


def _first(config, *names, default=None):
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


def expected_shape(model):
    """What the config says, read with each family's field names (tests may know them)."""
    c = model.config
    hidden = _first(c, "hidden_size", "n_embd")
    heads = _first(c, "num_attention_heads", "n_head")
    return {
        "num_layers": _first(c, "num_hidden_layers", "n_layer"),
        "hidden_size": hidden,
        "intermediate_size": _first(
            c, "intermediate_size", "n_inner", "ffn_dim", default=4 * hidden
        ),
        "num_heads": heads,
        "num_kv_heads": _first(c, "num_key_value_heads", default=heads),
        "head_dim": _first(c, "head_dim", default=hidden // heads),
    }


@pytest.fixture(params=zoo.NAMES)
def analysed(request, prepared):
    """(name, model, graph, analysis): each zoo model traced and analysed once a session
    (torch.fx for plain modules, torch.export for Hugging Face ones)."""
    p = prepared(request.param)
    return p.name, p.model, p.parent.graph, p.parent.analysis


def test_report_matches_config(analysed):
    name, model, graph, analysis = analysed
    report = Report(type(model).__name__, analysis).to_dict()
    want = expected_shape(model)
    assert report["num_layers"] == want["num_layers"]
    assert report["hidden_size"] == want["hidden_size"]
    assert len(report["layers"]) == want["num_layers"]
    for layer in report["layers"]:
        for key in ("intermediate_size", "num_heads", "num_kv_heads", "head_dim"):
            assert layer[key] == want[key], (name, layer["name"], key)


def _run(graph, tensors):
    call = lambda *a, **k: functional_call(graph.module, tensors, a, k)  # noqa: E731
    return output_tensors(graph.inputs.call(call))[0]


def _with_aliases(graph, new):
    """Give every name of a tied tensor its new value (functional_call needs each name)."""
    present = {n for n, _ in graph.module.named_parameters(remove_duplicate=False)}
    present |= {n for n, _ in graph.module.named_buffers(remove_duplicate=False)}
    present |= {n.target for n in graph.tensor_nodes()}
    return {
        alias: t
        for name, t in new.items()
        for alias in graph.params[name].names
        if alias in present
    }


def test_every_group_is_verified_by_permutation(analysed):
    name, model, graph, analysis = analysed
    reference = output_tensors(graph.inputs.call(graph.module))[0]
    free = [g for g in analysis.groups.values() if g.pinned is None and not g.ordered]
    assert len(free) >= 4 * len(analysis.layers)  # ffn, heads, head_dim, ... per layer
    broken_by_one = 0
    for group in free:
        gen = torch.Generator().manual_seed(group.id)
        perm = torch.randperm(group.size, generator=gen)
        while torch.equal(perm, torch.arange(group.size)):
            perm = torch.randperm(group.size, generator=gen)
        new = permuted_tensors(analysis, {group.id: perm})
        assert new, group
        out = _run(graph, _with_aliases(graph, new))
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5, msg=str(group))
        noise = (out - reference).abs().max().item()
        # The same permutation on one member alone (the largest tensor axis that the group
        # indexes once: q|k fused in one axis is both sides of a coupling) breaks the model:
        # ten times beyond the whole permutation's rounding (and 1e-6)
        # (a tiny random model's attention is near uniform, so q or k alone moves little).
        once = [
            m
            for m in group.members
            if analysis.atoms.leaves(analysis.dims.tensors[m[0]][m[1]]).count(group.id) == 1
        ]
        if len(group.members) < 2 or not once:
            continue
        member = max(once, key=lambda m: graph.params[m[0]].numel)
        one = permuted_tensors(analysis, {group.id: perm}, only={member})
        broken = _run(graph, _with_aliases(graph, one))
        assert (broken - reference).abs().max() > max(1e-6, 10 * noise), (name, group.id, member)
        broken_by_one += 1
    assert broken_by_one >= 0.6 * len(free)


def test_roles_and_couplings(analysed):
    name, model, graph, analysis = analysed
    roles = {g.role for g in analysis.groups.values()}
    assert {"residual", "ffn", "head_dim"} <= roles
    assert ("kv_groups" in roles) == (
        name in {"llama", "qwen2", "qwen3", "mistral", "phi3", "gemma", "gemma2", "phi"}
    )
    report = Report(type(model).__name__, analysis).to_dict()
    rotary = {"llama", "qwen2", "qwen3", "mistral", "phi3", "phi", "gemma", "gemma2", "gpt_neox"}
    norms = {n.rsplit(".", 2)[-2] for n in report["per_head_norms"]}
    assert norms == ({"q_norm", "k_norm"} if name == "qwen3" else set())
    assert bool(report["rotary"]) == (name in rotary)
    fused = {f["tensor"].rsplit(".", 2)[-2] for f in report["fused"]}
    assert fused == {
        "nanogpt": {"c_attn"},
        "gpt2": {"c_attn"},
        "phi3": {"qkv_proj", "gate_up_proj"},
    }.get(name, set())
    assert report["tied"] == [list(t) for t in graph.params.tied]
    assert all(r["tensors"] for r in report["rotary"])


def test_unsupported_op_is_named_with_its_node_and_line():
    model, example = zoo.unsupported_op()
    graph = trace(model, example)
    with pytest.raises(UnsupportedOpError) as info:
        analyse(graph)
    message = str(info.value)
    assert (
        "aten.special_bessel_j0" in message
        and "zoo.py:" in message
        and "docs/op-rules.md" in message
    )


@pytest.mark.parametrize("frontend", ["export", "fx"])
def test_a_bias_expanded_as_the_stream_is_not_a_skip(frontend):
    model, example = zoo.bias_after_branch()
    blocks = analyse(trace(model, example, frontend=frontend)).blocks
    assert len(blocks) == 2
    assert [b.skip.name for b in blocks[1:]] == [blocks[0].add.name]  # the stream, not the bias
    assert any(n.target is not None and "expand" in str(n.target) for n in blocks[1].nodes)


def test_residual_ratio_matches_a_direct_measurement():
    model, example = zoo.nanogpt()
    batches = [
        torch.randint(3, zoo.VOCAB, (2, 8), generator=torch.Generator().manual_seed(i))
        for i in range(3)
    ]
    report = inspect(model, example, calibration=[(b,) for b in batches], frontend="fx")
    ratios = report.to_dict()["residual_ratio"]
    assert len(ratios) == 2 * model.config.n_layer
    # Block 0 is x + attn(ln_1(x)) of layer 0: measure it with hooks on the eager model.
    seen = {}
    block = model.transformer.h[0]
    hooks = [
        block.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0])),
        block.attn.register_forward_hook(lambda m, a, out: seen.__setitem__("f", out)),
    ]
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            model(b)
            f, x = seen["f"], seen["x"]
            r = f.norm(dim=-1) / (x + f).norm(dim=-1)
            total, count = total + r.sum().item(), count + r.numel()
    for h in hooks:
        h.remove()
    assert ratios[0] == pytest.approx(total / count, rel=1e-5)
    assert all(0 < r < 10 for r in ratios)


def test_attention_beside_a_dynamic_convolution():
    """ConvBERT's layer: the attention is its q·kᵀ (head_dim 8, not the kernel's 3
    positions that a dynamic convolution contracts over), and the convolution's heads,
    concatenated with attention's, are reported beside them: the config counts both."""
    model, inputs = zoo.mixed_attention()
    attention = model.encoder.layer[0].attention.self
    (layer,) = inspect(model, inputs).to_dict()["layers"]
    assert layer["num_heads"] == attention.num_attention_heads == 2
    assert layer["head_dim"] == attention.attention_head_size == 8
    assert layer["heads_beside"] + layer["num_heads"] == model.config.num_attention_heads


def test_differential_attention_keeps_its_two_maps():
    """DiffLlama's key/value heads are the two maps each head subtracts: the analysis
    finds them as its config states them, refuses to cut them, and cuts the query heads
    per map: the child computes what DiffLlama of 2 heads computes with the parent's
    weights of heads 0 and 2 (the first query head of each map)."""
    import surgeon
    from surgeon.errors import PlanError

    model, inputs = zoo.differential_attention()
    parent = surgeon.prepare(model, inputs)
    (layer,) = surgeon.inspect(parent).to_dict()["layers"]
    assert (layer["num_heads"], layer["num_kv_heads"]) == (4, 2)
    with pytest.raises(PlanError, match="num_kv_heads cannot be cut"):
        surgeon.apply(parent, {"target": {"num_kv_heads": 1, "num_heads": 2}})
    child = surgeon.apply(
        parent, {"target": {"num_heads": 2}, "importance": "first", "rescale": "none"}
    )
    config = type(model.config)(**{**model.config.to_dict(), "num_attention_heads": 2})
    by_hand = type(model)(config).eval()
    state = model.state_dict()
    rows = torch.cat([torch.arange(0, 16), torch.arange(32, 48)])  # heads 0 and 2
    attn = "model.layers.0.self_attn."
    state[attn + "q_proj.weight"] = state[attn + "q_proj.weight"][rows]
    # o_proj reads each head's difference of its two maps (2 x head_dim): head 0's
    state[attn + "o_proj.weight"] = state[attn + "o_proj.weight"][:, :32]
    by_hand.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(child(**inputs).logits, by_hand(**inputs).logits)
