"""Calibrating a parent one layer at a time from its files gives the scores, layers and
child bytes of calibrating it in memory; torchrun's ranks give the child of one process.
The whole zoo (and SmolLM2-135M) is checked by benchmarks/calibration_scale.py --zoo."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from surgeon import PlanError
from surgeon.api import subclone
from surgeon.cli import main
from surgeon.emit.shards import emit_shards
from surgeon.execute import Runner, check_device
from surgeon.io.shards import Shards
from surgeon.pipeline import decide, prepare_folder, resolve
from tests import zoo
from tests.helpers import batches, shrink_plan

ROOT = Path(__file__).resolve().parent.parent
SLICE = ("llama", "gpt2")  # GQA + rotary + tied; fused qkv (the rest: the --zoo benchmark)


def keyed(state) -> dict:
    """Scores by what a group is (its role and members), not its id in one trace."""
    groups = state.analysis.groups
    return {(groups[g].role, *groups[g].members): s for g, s in state.scores.items()}


@pytest.mark.parametrize("name", SLICE)
def test_layer_by_layer_equals_in_memory(prepared, tmp_path, name):
    p = prepared(name)
    data = batches(p.example)
    plan = {**shrink_plan(name), "recipe": "surgeon"}
    plan["target"]["num_layers"] = 2
    in_memory = subclone(p.parent, plan, calibration=data)
    p.model.save_pretrained(tmp_path / "parent", max_shard_size="40KB")
    parent = prepare_folder(tmp_path / "parent", data[0])
    assert parent.streamed
    cut = decide(parent, resolve(plan, True), data)
    a, b = keyed(in_memory.state), keyed(cut.state)
    assert a.keys() == b.keys() and len(a) == len(in_memory.state.scores)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=0, msg=str(key))
    assert cut.state.influence == pytest.approx(in_memory.state.influence, rel=1e-5)
    assert cut.state.layers == in_memory.state.layers
    (tmp_path / "streamed").mkdir()
    emit_shards(cut, tmp_path / "streamed")
    in_memory.model.save_pretrained(tmp_path / "in_memory")
    streamed, loaded = Shards(tmp_path / "streamed"), Shards(tmp_path / "in_memory")
    assert streamed.index.keys() == loaded.index.keys()
    for key in streamed.index:
        assert torch.equal(streamed.tensor(key), loaded.tensor(key)), key


def test_each_layer_is_read_once_for_all_batches(prepared, tmp_path):
    """The streamed runner reads a tensor once per segment that uses it, whatever the
    number of batches: each layer's weights once, the tied embedding twice (the first
    segment embeds, the last would project: nothing watched needs the logits)."""
    p = prepared("llama")
    p.model.save_pretrained(tmp_path)
    parent = prepare_folder(tmp_path, p.example)
    reads: dict[str, int] = {}

    def source(name):
        reads[name] = reads.get(name, 0) + 1
        return parent.tensor(name)

    layers = parent.analysis.layers
    runner = Runner(parent.graph, source, [la.output for la in layers])
    assert len(runner.segments) == len(layers) + 1
    seen = []
    runner.run(batches(p.example, 4), {layers[-1].output}, lambda k, n, v: seen.append(k))
    assert seen == [0, 1, 2, 3]
    weights = [n for n in reads if ".layers." in n]
    assert weights and all(reads[n] == 1 for n in weights)
    assert "lm_head.weight" not in reads and "model.norm.weight" not in reads


def test_values_past_the_budget_wait_on_disk(prepared, tmp_path, monkeypatch):
    """With no memory budget every batch's stream goes to a file between layers, and
    the values computed are the same."""
    import surgeon.execute

    p = prepared("llama")
    p.model.save_pretrained(tmp_path)
    parent = prepare_folder(tmp_path, p.example)
    layers = parent.analysis.layers
    watched = {layers[-1].output}
    runs = []
    for budget in (surgeon.execute.SPILL_BYTES, 0):
        runner = Runner(parent.graph, parent.tensor, [la.output for la in layers])
        runner.spill_bytes = budget
        runs.append({})
        runner.run(batches(p.example), watched, lambda k, n, v: runs[-1].setdefault(k, v.clone()))
    saved = []
    save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f: saved.append(f) or save(obj, f))
    runner.run(batches(p.example), watched, lambda k, n, v: None)
    # each batch after each segment but the last (the last layer's output is watched:
    # the first segment holds the embedding and layer 0, and nothing is kept after it)
    assert len(saved) == 3 * (len(layers) - 1)
    assert runs[0].keys() == runs[1].keys() == {0, 1, 2}
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k])


def test_devices_are_checked():
    with pytest.raises(PlanError, match="is not a device"):
        check_device("gpu please")
    if not torch.cuda.is_available():
        with pytest.raises(PlanError, match="no GPU is visible"):
            check_device("cuda")


def test_torchrun_ranks_give_the_child_of_one_process(tmp_path):
    """Two gloo ranks split the batches and all-reduce the running sums; rank 0 writes."""
    model, _ = zoo.build("llama")
    model.save_pretrained(tmp_path / "parent", max_shard_size="40KB")
    zoo.save_letter_tokenizer(tmp_path / "parent")
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "target: {num_layers: 2, hidden_size: 32}\nrecipe: surgeon\n"
        "calibration: {samples: 8, seq_len: 16, batch_size: 2}\n"
    )
    args = ["apply", "--model", str(tmp_path / "parent"), "--plan", str(plan), "--out"]
    assert main([*args, str(tmp_path / "one")]) == 0
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--nproc_per_node", "2", "-m", "surgeon", *args, str(tmp_path / "two")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("wrote ") == 1  # rank 0 only
    one, two = (json.loads((tmp_path / d / "surgeon.json").read_text()) for d in ("one", "two"))
    assert (one["ranks"], two["ranks"]) == (1, 2)
    assert two["influence"] == pytest.approx(one["influence"], rel=1e-5)
    assert two["layers_kept"] == one["layers_kept"]
    a, b = Shards(tmp_path / "one"), Shards(tmp_path / "two")
    assert a.index.keys() == b.index.keys()
    for key in a.index:
        assert torch.equal(a.tensor(key), b.tensor(key)), key
