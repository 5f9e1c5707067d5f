"""Op rules that need care, each in a tiny model, verified by permutation in both frontends."""

from pathlib import Path

import pytest
import torch
from torch.func import functional_call

from surgeon.analysis import analyse, permuted_tensors
from surgeon.analysis.dims import discover_dims
from surgeon.frontends import output_tensors, trace
from tests import zoo

# Free groups each case must keep (the inner width of `a`, unless the op pins it).
MIN_FREE = {
    "list_index": 0,
    "max_dim": 0,
    "narrow_negative": 1,
    "split_slice": 1,
    "group_norm": 0,  # the channel groups pin the channels
    "sort": 1,  # the sorted axis is pinned, the "heads" are free
    "topk": 1,
}


def _with(graph, tensors):
    return lambda *a, **k: functional_call(graph.module, tensors, a, k)


def _check_groups(graph):
    analysis = analyse(graph)
    reference = output_tensors(graph.inputs.call(graph.module))[0]
    free = [g for g in analysis.groups.values() if g.pinned is None and not g.ordered]
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


# -- single ops: the exact unifications each rule makes, in both frontends ----------------
FRONTENDS = pytest.mark.parametrize("frontend", ["export", "fx"])


class _Op(torch.nn.Module):
    """`fn(self, x)` with the given submodules and parameters."""

    def __init__(self, fn, **parts):
        super().__init__()
        self.fn = fn
        for name, part in parts.items():
            setattr(self, name, part)

    def forward(self, x):
        return self.fn(self, x)


class _Op2(_Op):
    def forward(self, x, y):
        return self.fn(self, x, y)


class _Op3(_Op):
    def forward(self, x, y, z):
        return self.fn(self, x, y, z)


class _Ran:
    """The atoms after `discover_dims`: of the inputs, the outputs and the tensors."""

    def __init__(self, fn, inputs, frontend, **parts):
        module = (_Op, _Op2, _Op3)[len(inputs) - 1](fn, **parts)
        graph = trace(module.eval(), inputs, frontend=frontend)
        self.graph, self.dims = graph, discover_dims(graph)
        self.A = self.dims.atoms
        nodes = graph.graph.nodes
        self.ins = [self.dims.out[n] for n in nodes if n.op == "placeholder"]
        output = next(n for n in nodes if n.op == "output")
        self.outs = []  # one list of atoms per output tensor, tuples (fx: split) unpacked
        for n in output.all_input_nodes:
            atoms = self.dims.out[n]
            self.outs += atoms if atoms and not isinstance(atoms[0], int) else [atoms]
        self.t = self.dims.tensors

    def same(self, a: int, b: int) -> bool:
        return self.A.find(a) == self.A.find(b)

    def leaves(self, a: int) -> list[int]:
        return [self.A.find(leaf) for leaf in self.A.leaves(a)]

    def roots(self, *atoms: int) -> list[int]:
        return [self.A.find(a) for a in atoms]

    def literals(self) -> list[tuple]:
        return [(lit.where, lit.kind) for lit in self.dims.literals]


@FRONTENDS
def test_linear_couples_features_with_the_weight(frontend):
    r = _Ran(lambda m, x: m.lin(x), (torch.randn(2, 3, 8),), frontend, lin=torch.nn.Linear(8, 6))
    (x,), (out,), w, b = r.ins, r.outs, r.t["lin.weight"], r.t["lin.bias"]
    assert r.same(x[2], w[1]) and r.same(out[2], w[0]) and r.same(out[2], b[0])
    assert r.same(x[0], out[0]) and r.same(x[1], out[1])
    assert not r.same(x[2], out[2]) and not r.same(w[0], w[1])
    assert r.dims.fan_in == {"lin.weight": 1}


@FRONTENDS
@pytest.mark.parametrize("spelling", ["spread", "list", "reshape"])
def test_view_factors_an_axis_and_records_its_sizes(frontend, spelling):
    fn = {
        "spread": lambda m, x: x.view(2, 3, 4, 3),
        "list": lambda m, x: x.view([2, 3, 4, 3]),
        "reshape": lambda m, x: torch.reshape(x, (2, 3, 4, 3)),
    }[spelling]
    r = _Ran(fn, (torch.randn(2, 3, 12),), frontend)
    (x,), (out,) = r.ins, r.outs
    assert r.leaves(x[2]) == r.roots(out[2], out[3])
    assert r.same(x[0], out[0]) and r.same(x[1], out[1])
    spread = frontend == "fx" and spelling == "spread"
    paths = [(1 + i,) if spread else (1, i) for i in range(4)]
    assert r.literals() == [(p, "size") for p in paths]
    assert [lit.atoms for lit in r.dims.literals] == [(o,) for o in out]


@FRONTENDS
def test_flatten_merges_axes_without_literals(frontend):
    r = _Ran(lambda m, x: x.flatten(1), (torch.randn(2, 3, 4),), frontend)
    (x,), (out,) = r.ins, r.outs
    assert r.leaves(out[1]) == r.roots(x[1], x[2]) and r.same(out[0], x[0])
    assert r.literals() == []


@FRONTENDS
@pytest.mark.parametrize(
    "op, order",
    [
        (lambda x: x.transpose(1, 3), [0, 3, 2, 1]),
        (lambda x: torch.swapaxes(x, axis0=-1, axis1=0), [3, 1, 2, 0]),
        (lambda x: x.permute(0, 2, 3, 1), [0, 2, 3, 1]),
        (lambda x: x.permute(dims=(3, 2, 1, 0)), [3, 2, 1, 0]),
        (lambda x: torch.movedim(x, 1, -1), [0, 2, 3, 1]),
        (lambda x: x.mT, [0, 1, 3, 2]),
    ],
    ids=["transpose", "swapaxes_kwargs", "permute", "permute_dims", "movedim", "mT"],
)
def test_reorderings_map_each_output_axis_to_one_input_axis(frontend, op, order):
    r = _Ran(lambda m, x: op(x), (torch.randn(2, 3, 4, 5),), frontend)
    (x,), (out,) = r.ins, r.outs
    for i, src in enumerate(order):
        assert r.same(out[i], x[src])
        assert all(not r.same(out[i], x[j]) for j in range(4) if j != src)


@FRONTENDS
@pytest.mark.parametrize("sizes", [[4, 8], 6], ids=["sizes", "int"])
def test_split_refines_the_axis_as_the_pieces(frontend, sizes):
    r = _Ran(lambda m, x: x.split(sizes, dim=-1), (torch.randn(2, 12),), frontend)
    (x,), outs = r.ins, r.outs
    parts = r.A.parts(x[1])
    assert parts.kind == "cat" and r.roots(*parts.parts) == r.roots(*(o[1] for o in outs))
    assert all(r.same(o[0], x[0]) for o in outs)
    if isinstance(sizes, int):
        assert r.literals() == [((1,), "split")]
    else:
        assert r.literals() == [((1, 0), "size"), ((1, 1), "size")]


@FRONTENDS
def test_unbind_pins_the_axis_and_carries_the_others(frontend):
    r = _Ran(lambda m, x: x.unbind(1), (torch.randn(2, 3, 4),), frontend)
    (x,), outs = r.ins, r.outs
    assert r.A.find(x[1]) in r.A.pinned or r.A.pinned_leaves().get(r.A.find(x[1]))
    assert all(r.same(o[0], x[0]) and r.same(o[1], x[2]) for o in outs)


@FRONTENDS
def test_cat_refines_the_output_axis_as_the_inputs(frontend):
    fn = lambda m, x, y: torch.cat([x, y], dim=-1)  # noqa: E731
    r = _Ran(fn, (torch.randn(2, 4), torch.randn(2, 8)), frontend)
    (x, y), (out,) = r.ins, r.outs
    parts = r.A.parts(out[1])
    assert parts.kind == "cat" and r.roots(*parts.parts) == r.roots(x[1], y[1])
    assert r.same(out[0], x[0]) and r.same(out[0], y[0])


@FRONTENDS
@pytest.mark.parametrize("how", ["index", "narrow"])
def test_a_range_is_before_kept_after(frontend, how):
    fn = (lambda m, x: x[:, 2:6]) if how == "index" else (lambda m, x: x.narrow(1, 2, 4))
    r = _Ran(fn, (torch.randn(3, 12),), frontend)
    (x,), (out,) = r.ins, r.outs
    parts = r.A.parts(x[1])
    assert [r.A.size[r.A.find(p)] for p in parts.parts] == [2, 4, 6]
    assert r.same(parts.parts[1], out[1]) and r.same(x[0], out[0])
    ((where, kind),) = r.literals()
    lit = r.dims.literals[0]
    assert lit.atoms == (parts.parts[0], out[1]) and lit.bounded
    node = lit.node
    if kind == "index":  # torch.fx: the slice object inside the index tuple
        assert node.args[where[0]][where[1]] == slice(2, 6)
    else:  # start, then end (slice) or length (narrow) at the next position
        assert kind in ("slice", "narrow") and node.args[where[0]] == 2
        assert node.args[where[0] + 1] == (6 if kind == "slice" else 4)


@FRONTENDS
def test_embedding_pins_rows_and_keeps_the_ids_axes(frontend):
    r = _Ran(
        lambda m, ids: m.emb(ids),
        (torch.randint(0, 10, (2, 3)),),
        frontend,
        emb=torch.nn.Embedding(10, 6),
    )
    (ids,), (out,), w = r.ins, r.outs, r.t["emb.weight"]
    assert r.A.pinned.get(r.A.find(w[0])) == "rows picked by ids (embedding)"
    assert r.same(out[2], w[1]) and r.same(out[0], ids[0]) and r.same(out[1], ids[1])
    args = next(a for n, a in r.dims.args.items() if n.name.startswith("embedding"))
    assert args.weight.op == "get_attr" and args.input.op == "placeholder"


@FRONTENDS
def test_layer_norm_ties_its_parameters_to_the_normalised_axis(frontend):
    r = _Ran(lambda m, x: m.ln(x), (torch.randn(2, 3, 8),), frontend, ln=torch.nn.LayerNorm(8))
    (x,), (out,) = r.ins, r.outs
    assert all(r.same(a, b) for a, b in zip(x, out, strict=True))
    assert r.same(r.t["ln.weight"][0], x[2]) and r.same(r.t["ln.bias"][0], x[2])
    assert r.literals() == [((1, 0), "size")]


@FRONTENDS
def test_sdpa_with_gqa_splits_query_heads_into_kv_heads_and_group(frontend):
    fn = lambda m, q, k, v: torch.nn.functional.scaled_dot_product_attention(  # noqa: E731
        q, k, v, enable_gqa=True
    )
    q, k, v = torch.randn(2, 6, 5, 8), torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 4)
    r = _Ran(fn, (q, k, v), frontend)
    (q, k, v), (out,) = r.ins, r.outs
    assert r.same(q[3], k[3]) and r.same(k[2], v[2])
    assert r.same(out[2], q[2]) and r.same(out[3], v[3]) and r.same(out[1], q[1])
    heads = r.leaves(q[1])
    assert [r.A.size[h] for h in heads] == [2, 3] and heads[0] == r.A.find(k[1])
    assert {r.A.find(a) for a, _ in r.dims.broadcasts} == {heads[1]}
    (c,) = r.dims.contractions
    assert r.same(c.contracted, q[3]) and r.roots(*c.batch) == r.roots(out[0], out[1])


@FRONTENDS
@pytest.mark.parametrize(
    "op, kept",
    [
        (lambda x: x.mean(-1, keepdim=True), {0: 0, 1: 1}),
        (lambda x: x.sum(1), {0: 0, 2: 1}),
        (lambda x: x.norm(dim=1), {0: 0, 2: 1}),
        (lambda x: torch.max(x, dim=0).values, {1: 0, 2: 1}),
        (lambda x: x.amax(), {}),
    ],
    ids=["mean_keepdim", "sum", "norm", "max_dim", "amax_all"],
)
def test_reductions_keep_the_other_axes(frontend, op, kept):
    r = _Ran(lambda m, x: op(x), (torch.randn(2, 3, 4),), frontend)
    (x,), (out,) = r.ins, r.outs
    for i, a in enumerate(x):
        for j, o in enumerate(out):
            assert r.same(a, o) == (kept.get(i) == j), (i, j)


@FRONTENDS
def test_expand_grows_size_one_axes_as_broadcasts(frontend):
    r = _Ran(lambda m, x: x.expand(-1, 5, -1, -1), (torch.randn(2, 1, 3, 4),), frontend)
    (x,), (out,) = r.ins, r.outs
    assert r.same(out[0], x[0]) and r.same(out[2], x[2]) and r.same(out[3], x[3])
    assert not r.same(out[1], x[1])
    assert [(r.A.find(a), n.name) for a, n in r.dims.broadcasts] == [
        (r.A.find(out[1]), r.dims.literals[0].node.name)
    ]
    assert r.literals() == [((2,) if frontend == "fx" else (1, 1), "size")]


def test_every_aten_overload_binds_the_required_arguments():
    """The schema of each ATen op in the table, renamed by the rule's aliases, names every
    argument the rule's signature requires: no rule reads a name its op never gives."""
    import inspect as pyinspect

    from surgeon.analysis.registry import _ALIASES, RULES

    checked = 0
    for key, rule in RULES.items():
        packet = getattr(torch.ops.aten, key, None)
        if not isinstance(packet, torch._ops.OpOverloadPacket):
            continue
        params = pyinspect.signature(rule.signature).parameters.values()
        required = {
            p.name
            for p in params
            if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }
        aliases = {**_ALIASES, **rule.aliases}
        for name in packet.overloads():
            schema = getattr(packet, name)._schema
            if any(str(a.type) == "Dimname" or "Dimname" in str(a.type) for a in schema.arguments):
                continue  # named tensors: never in a traced graph
            if name.endswith("out") or not any("Tensor" in str(a.type) for a in schema.arguments):
                continue  # out= variants, and overloads on Python lists and numbers
            given = {aliases.get(a.name, a.name) for a in schema.arguments}
            assert required <= given, (key, name, required - given)
            checked += 1
    assert checked > 50


def test_rules_do_not_name_their_op():
    """One function per family: no rule looks at which op it serves."""
    import surgeon.analysis.rules as rules

    files = sorted(Path(rules.__file__).parent.glob("*.py"))  # the package: one file a family
    assert len(files) > 1
    for path in files:
        text = path.read_text()
        assert "rule_key" not in text and "node.target" not in text and "node.args" not in text


def test_overlapping_chunks_read_with_as_strided_are_windows():
    model, example = zoo.chunks()
    graph = trace(model, example, frontend="export")
    ops = {str(n.target) for n in graph.module.graph.nodes}
    assert "aten.as_strided.default" not in ops and "aten.unfold.default" in ops
    torch.testing.assert_close(graph.module(*example), model(*example))
    analysis, free = _check_groups(graph)
    assert [g.size for g in free] == [4]  # head_dim; the heads are the output's batch


def test_a_view_past_an_axis_refined_otherwise_keeps_its_trailing_axes():
    from surgeon.analysis.atoms import Atoms, Refinement

    atoms = Atoms()
    seq, four, two = atoms.new(8), atoms.new(4), atoms.new(2)
    atoms.refinement[seq] = Refinement("prod", (four, two))  # another op saw 8 as 4 x 2
    atoms.refinement[four] = Refinement("cat", (atoms.new(3), atoms.new(1)))
    d, e = atoms.new(16), atoms.new(16)
    atoms.unify_seq([seq, d], [atoms.new(2), atoms.new(4), e])  # [8, 16] viewed as [2, 4, 16]
    assert atoms.find(d) == atoms.find(e)
    assert atoms.find(d) not in atoms.pinned and atoms.find(four) in atoms.pinned
