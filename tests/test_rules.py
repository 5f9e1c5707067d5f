"""Op rules that need care, each in a tiny model, verified by permutation in both frontends."""

import pytest
import torch
from torch.func import functional_call

from surgeon.analysis import analyse, permuted_tensors
from surgeon.frontends import output_tensors, trace
from tests import zoo

# Free groups each case must keep (the inner width of `a`, unless the op pins it).
MIN_FREE = {"list_index": 0, "max_dim": 0, "narrow_negative": 1, "split_slice": 1}


def _with(graph, tensors):
    return lambda *a, **k: functional_call(graph.module, tensors, a, k)


def _check_groups(graph):
    analysis = analyse(graph)
    reference = output_tensors(graph.inputs.call(graph.module))[0]
    free = [g for g in analysis.groups.values() if g.pinned is None]
    for group in free:
        gen = torch.Generator().manual_seed(group.id)
        perm = torch.randperm(group.size, generator=gen)
        new = permuted_tensors(analysis, {group.id: perm})
        out = output_tensors(graph.inputs.call(_with(graph, new)))[0]
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5, msg=str(group))
    return analysis, free


@pytest.mark.parametrize("frontend", ["export", "fx"])
@pytest.mark.parametrize("name", sorted(zoo.OP_CASES))
def test_op_case_groups_keep_the_function(name, frontend):
    model, example = zoo.op_case(name)
    graph = trace(model, example, frontend=frontend)
    _, free = _check_groups(graph)
    assert len(free) >= MIN_FREE.get(name, 1)


@pytest.mark.parametrize("frontend", ["export", "fx"])
def test_matmul_with_a_parameter_is_not_attention(frontend):
    model, example = zoo.param_matmul_head()
    analysis, free = _check_groups(trace(model, example, frontend=frontend))
    roles = {g.role for g in analysis.groups.values()}
    assert "head_dim" not in roles and "heads" not in roles
    assert analysis.dims.contractions == []
    assert len(free) == 1 and free[0].size == 12


def test_fx_binds_keyword_inputs_by_name():
    class Optional(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(4, 4)

        def forward(self, x, mask=None, y=None):
            return self.a(x) + (0 if y is None else y)

    model = Optional()
    x, y = torch.randn(2, 4), torch.randn(2, 4)
    graph = trace(model, {"x": x, "y": y}, frontend="fx")
    torch.testing.assert_close(graph(x=x, y=y), model(x=x, y=y))
