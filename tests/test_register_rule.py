"""A user's own op: without a rule the analysis names it and points to `register_rule`;
with the rule of `examples/custom_op.py` the model is analysed, shrunk and permuted."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import surgeon
from surgeon import UnsupportedOpError
from surgeon.analysis import analyse, register_rule, unregister_rule
from surgeon.analysis.registry import RULES, OpRule, op_key, overlay
from surgeon.frontends import as_inputs, output_tensors, trace

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "custom_op.py"
KEY = "mylib.linear_gelu"


def _load_example():
    """The example as a module, loaded once per process (it defines a torch.library op)."""
    if "_custom_op_example" not in sys.modules:
        spec = importlib.util.spec_from_file_location("_custom_op_example", EXAMPLE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["_custom_op_example"]


@pytest.fixture
def example():
    module = _load_example()
    RULES.pop(KEY, None)
    yield module
    RULES.pop(KEY, None)  # nothing registered here leaks into other tests


@pytest.fixture
def registered(example):
    example.register()
    return example


def _out(model, example):
    return output_tensors(as_inputs(example).call(model))[0]


@pytest.mark.parametrize("frontend", ["export", "fx"])
def test_without_a_rule_the_error_names_the_op_and_register_rule(example, frontend):
    model, inputs = example.build()
    with pytest.raises(UnsupportedOpError) as info:
        analyse(trace(model, inputs, frontend=frontend))
    message = str(info.value)
    assert "mylib.linear_gelu" in message
    assert "custom_op.py:" in message or frontend == "fx"  # fx keeps no stack traces
    assert f'surgeon.register_rule("{KEY}"' in message and "docs/op-rules.md" in message


def test_without_a_rule_apply_stops(example):
    model, inputs = example.build()
    with pytest.raises(UnsupportedOpError, match="register_rule"):
        surgeon.apply(model, {"importance": "weight"}, example_inputs=inputs)


@pytest.mark.parametrize("frontend", ["export", "fx"])
def test_with_the_rule_the_model_is_analysed(registered, frontend):
    model, inputs = registered.build()
    analysis = analyse(trace(model, inputs, frontend=frontend))
    assert analysis.hidden_size == 16
    assert [layer.name for layer in analysis.layers] == ["blocks.0", "blocks.1"]
    assert [layer.intermediate_size for layer in analysis.layers] == [48, 48]
    assert {g.role for g in analysis.groups.values()} >= {"residual", "ffn", "vocab"}
    assert analysis.dims.fan_in["blocks.0.up"] == 1
    assert len(analysis.blocks) == 2


def test_with_the_rule_a_shrunk_child_runs(registered):
    model, inputs = registered.build()
    plan = {"target": {"hidden_size": 8, "intermediate_size": 24}, "importance": "weight"}
    child = surgeon.apply(model, plan, example_inputs=inputs)
    assert child.get_parameter("blocks.0.up").shape == (24, 8)
    assert child.get_parameter("blocks.1.down.weight").shape == (8, 24)
    assert child.get_parameter("embed.weight").shape == (32, 8)
    out = _out(child, inputs)
    assert out.shape == (2, 8, 32) and torch.isfinite(out).all()


def test_with_the_rule_the_child_is_the_hand_sliced_model(registered):
    """With `importance: first` and no rescale the child keeps the leading positions: it
    computes what the example's own class, built at the child's sizes with every weight
    sliced by hand from the parent, computes."""
    model, inputs = registered.build()
    target = {"hidden_size": 8, "intermediate_size": 24}
    child = surgeon.apply(
        model, {"target": target, "importance": "first", "rescale": "none"}, example_inputs=inputs
    )
    hand = registered.TinyModel(hidden=8, ffn=24).eval()
    parent = dict(model.named_parameters())
    h, f = slice(0, 8), slice(0, 24)
    cuts = {"embed.weight": (slice(None), h), "head.weight": (slice(None), h)}
    cuts |= {"norm.weight": (h,), "norm.bias": (h,), "head.bias": (slice(None),)}
    for i in range(2):
        b = f"blocks.{i}."
        cuts |= {b + "norm.weight": (h,), b + "norm.bias": (h,), b + "up": (f, h)}
        cuts |= {b + "up_bias": (f,), b + "down.weight": (h, f), b + "down.bias": (h,)}
    with torch.no_grad():
        for name, p in hand.named_parameters():
            p.copy_(parent[name][cuts[name]])
    torch.testing.assert_close(_out(child, inputs), _out(hand, inputs), atol=1e-5, rtol=1e-5)


def test_with_the_rule_permuting_keeps_the_function(registered):
    model, inputs = registered.build()
    child = surgeon.apply(model, {"importance": "weight"}, example_inputs=inputs)
    parent = dict(model.named_parameters())
    moved = [n for n, p in child.named_parameters() if not torch.equal(p, parent[n])]
    assert moved, "a permutation that moves nothing tests nothing"
    torch.testing.assert_close(_out(child, inputs), _out(model, inputs), atol=1e-5, rtol=1e-5)


def test_a_rule_is_not_replaced_silently(registered):
    with pytest.raises(ValueError, match="replace=True"):
        register_rule("mylib::linear_gelu")(lambda ctx, a: None)
    with pytest.raises(ValueError, match="replace=True"):
        register_rule("linear")(lambda ctx, a: None)
    assert RULES[KEY].fn is registered.linear_gelu_rule
    assert RULES[KEY].mixes_stream

    def other(ctx, a):
        pass

    register_rule(registered.linear_gelu, replace=True)(other)
    assert RULES[KEY].fn is other and not RULES[KEY].mixes_stream


def test_keys_of_an_op_agree(example):
    op = example.linear_gelu
    spellings = [op, torch.ops.mylib.linear_gelu, torch.ops.mylib.linear_gelu.default]
    spellings += ["mylib::linear_gelu", "mylib.linear_gelu"]
    assert {op_key(s) for s in spellings} == {KEY}
    assert op_key(torch.ops.aten.view.default) == op_key("aten::view") == "view"


def test_unregister_removes_the_rule(registered):
    unregister_rule("mylib::linear_gelu")
    assert KEY not in RULES
    with pytest.raises(KeyError):
        unregister_rule(KEY)


def test_rules_given_to_prepare_serve_that_call_only(example):
    """`surgeon.prepare(..., rules=...)` analyses with a rule the table lacks (an `OpRule`,
    with what the op is), and leaves the table as it was: the next call has no rule."""
    model, inputs = example.build()
    before = dict(RULES)
    rule = OpRule(KEY, example.linear_gelu_rule, mixes_stream=True)
    parent = surgeon.prepare(model, inputs, rules={torch.ops.mylib.linear_gelu: rule})
    assert parent.analysis.hidden_size == 16
    assert [layer.name for layer in parent.analysis.layers] == ["blocks.0", "blocks.1"]
    assert RULES == before and KEY not in RULES
    plan = {"target": {"hidden_size": 8, "intermediate_size": 24}, "importance": "weight"}
    child = surgeon.apply(parent, plan)  # the prepared parent needs the rule no more
    assert child.get_parameter("blocks.0.up").shape == (24, 8)
    with pytest.raises(UnsupportedOpError, match="register_rule"):
        surgeon.prepare(model, inputs)


def test_rules_given_to_prepare_are_gone_after_an_error(example):
    """An overlaid rule that fails, over a built-in one: the error reaches the caller and
    the table holds the built-in rule again."""
    model, inputs = example.build()
    before, linear = dict(RULES), RULES["linear"]

    def broken(ctx, a):
        raise RuntimeError("a broken rule")

    with pytest.raises(RuntimeError, match="a broken rule"):
        surgeon.prepare(model, inputs, rules={KEY: example.linear_gelu_rule, "linear": broken})
    assert RULES == before and RULES["linear"] is linear and KEY not in RULES


def test_overlay_puts_rules_in_the_table_for_its_block():
    view = RULES["view"]

    def other(ctx, a):
        pass

    with overlay({"aten::view": other, "surgeon_test_overlaid": OpRule("x", other)}) as put:
        assert RULES["view"].fn is other and RULES["view"].signature is None
        assert RULES["surgeon_test_overlaid"].key == "surgeon_test_overlaid"
        assert set(put) == {"view", "surgeon_test_overlaid"}
    assert RULES["view"] is view and "surgeon_test_overlaid" not in RULES
    with pytest.raises(TypeError, match="OpRule or a function"), overlay({"view": 3}):
        pass
    assert RULES["view"] is view
    with overlay(None) as put:
        assert put == {}


def test_reserved_argument_names_are_refused():
    def sig(input, out): ...

    with pytest.raises(ValueError, match="reserved"):
        register_rule("surgeon_test_reserved", signature=sig)
    assert "surgeon_test_reserved" not in RULES


def test_a_python_function_rule_binds_by_its_signature():
    """A function torch.fx keeps as a call (`torch.fx.wrap`) gets a rule by its name."""

    def sig(input, scale=1.0): ...

    @register_rule("surgeon_test_scaled", signature=sig)
    def scaled(ctx, a):
        assert a.scale == 3.0 and a.path("scale") == (1,)
        ctx.broadcast(a.out, ctx.axes(a.input))

    try:
        graph = trace(_Scaled(), (torch.randn(2, 4),), frontend="fx")
        analysis = analyse(graph)
        assert analysis.hidden_size == 4
    finally:
        unregister_rule("surgeon_test_scaled")


@torch.fx.wrap
def surgeon_test_scaled(x, scale):
    return x * scale


class _Scaled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.a(surgeon_test_scaled(x, 3.0))


def test_the_docs_show_the_example_as_it_is():
    text = (ROOT / "docs" / "op-rules.md").read_text()
    blocks = re.findall(r"```py\n# examples/custom_op.py\n(.*?)```", text, flags=re.S)
    assert blocks
    source = EXAMPLE.read_text()
    for block in blocks:
        assert block in source


def test_the_example_runs():
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "register_rule" in lines[0]
    assert lines[1:] == ["hidden 16, layers 2", "child: up (24, 8)", "child output (2, 8, 32)"]
