"""A model that calls its own `torch.library` op, and the rule that lets surgeon subclone it.

surgeon has a rule for every op it meets; an op of your own (here `mylib::linear_gelu`, a
fused `gelu(x @ weight.T + bias)`) has none, and the analysis stops with an
`UnsupportedOpError` that names it. Registering a rule, without editing the package, is
enough for the analysis, the surgery and the child. Run it:

    python examples/custom_op.py

`tests/test_register_rule.py` runs this file and tests its parts; `docs/op-rules.md`
explains them.
"""

from __future__ import annotations

import torch
from torch import nn

import surgeon
from surgeon import register_rule


# 1. The op: a kernel, and a fake that gives the output's shape to the tracers.
@torch.library.custom_op("mylib::linear_gelu", mutates_args=())
def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x @ weight.T + bias)


@linear_gelu.register_fake
def _(x, weight, bias):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


# 2. A small residual model that calls it in every block.
class Block(nn.Module):
    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.up = nn.Parameter(torch.randn(ffn, hidden) / hidden**0.5)
        self.up_bias = nn.Parameter(torch.zeros(ffn))
        self.down = nn.Linear(ffn, hidden)

    def forward(self, x):
        return x + self.down(linear_gelu(self.norm(x), self.up, self.up_bias))


class TinyModel(nn.Module):
    def __init__(self, vocab: int = 32, hidden: int = 16, ffn: int = 48, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.blocks = nn.ModuleList(Block(hidden, ffn) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, ids):
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def build() -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    return TinyModel().eval(), (torch.randint(0, 32, (2, 8)),)


# 3. The rule. `a` holds the op's arguments by the names of its schema (x, weight, bias),
# the same in both frontends; `a.out` the atoms (axes) of its output.
def linear_gelu_rule(ctx, a) -> None:
    """x (..., in) · weight (out, in) + bias (out), then GELU: (..., out)."""
    x, weight, bias = ctx.axes(a.x), ctx.axes(a.weight), ctx.axes(a.bias)
    ctx.A.unify(x[-1], weight[1])  # input features: the columns of weight
    ctx.A.unify(a.out[-1], weight[0])  # output features: its rows ...
    ctx.A.unify(a.out[-1], bias[0])  # ... and the bias (GELU acts on each one alone)
    for before, after in zip(x[:-1], a.out[:-1], strict=True):
        ctx.A.unify(before, after)  # leading axes (batch, positions) carry over
    ctx.fan_in(a.weight, 1, a.x, -1)  # weight sums over its axis 1: the input features


def register() -> None:
    """Add the rule to surgeon's table. `mixes_stream`: like a linear layer, the op mixes
    the features of the residual stream with weights, so a path through it is a block."""
    register_rule(torch.ops.mylib.linear_gelu, mixes_stream=True)(linear_gelu_rule)


def main() -> None:
    model, example = build()
    try:
        surgeon.inspect(model, example)
    except surgeon.UnsupportedOpError as e:
        print(f"without the rule: {e}")
    register()
    report = surgeon.inspect(model, example).to_dict()
    print(f"hidden {report['hidden_size']}, layers {len(report['layers'])}")
    plan = {"target": {"hidden_size": 8, "intermediate_size": 24}, "importance": "weight"}
    child = surgeon.apply(model, plan, example_inputs=example)
    print(f"child: up {tuple(child.get_parameter('blocks.0.up').shape)}")
    print(f"child output {tuple(child(*example).shape)}")


if __name__ == "__main__":
    main()
