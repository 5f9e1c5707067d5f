"""Faults and misuse: a corrupt or incomplete parent, a bad plan, an output folder that
cannot or must not be written, a signal or a full disk mid-write. Each gives exit code 2
(or the signal's), one line on stderr naming the problem, no traceback, the parent's
files unchanged, and no output or partial folder left.

The output folder cannot be made read-only for root (root ignores permissions, and these
tests may run as root): the unwritable case is an `--out` under a path that is a file."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

import surgeon
from surgeon.cli import main
from surgeon.errors import InvariantError, ModelLoadError, PlanError, SurgeonError
from surgeon.io import output
from tests import zoo

ROOT = Path(__file__).resolve().parent.parent
ZOO = str(ROOT / "tests" / "zoo.py")
PLAN = "target: {hidden_size: 32, intermediate_size: 48, num_heads: 2, num_kv_heads: 1}\n"
TENSOR = "model.layers.1.mlp.up_proj.weight"  # the tensor the corruptions aim at


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One sharded Llama parent (several files and an index), saved once."""
    folder = tmp_path_factory.mktemp("saved") / "llama"
    model, _ = zoo.build("llama")
    model.save_pretrained(folder, max_shard_size="40KB")
    return folder


@pytest.fixture
def parent(saved, tmp_path):
    """A copy per test: tests corrupt it, never the shared one."""
    folder = tmp_path / "parent"
    shutil.copytree(saved, folder)
    return folder


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _plan(tmp_path: Path, text: str = PLAN, name: str = "plan.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _left(tmp_path: Path, out: str = "out") -> list[str]:
    """What a run left of its output: the folder, partial or old folders."""
    return sorted(
        p.name for p in tmp_path.iterdir() if p.name == out or p.name.startswith(f".{out}.")
    )


def _fails(argv, words, capsys, tmp_path, parent=None, code=2, out="out") -> str:
    """Run the CLI: exit `code`, one `surgeon: error:` line holding `words`, no traceback,
    the parent unchanged, no output or partial folder."""
    before = _hashes(parent) if parent is not None and parent.is_dir() else None
    assert main(argv) == code
    err = capsys.readouterr().err
    lines = [ln for ln in re.split(r"[\r\n]", err) if ln.startswith("surgeon:")]
    assert len(lines) == 1 and lines[0].startswith("surgeon: error: "), err
    assert "Traceback" not in err
    for word in words if isinstance(words, tuple) else (words,):
        assert word in lines[0], lines[0]
    if before is not None:
        assert _hashes(parent) == before
    assert _left(tmp_path, out) == []
    return lines[0]


def _apply(parent, tmp_path, plan=PLAN, *extra):
    return ["apply", "--model", str(parent), "--plan", _plan(tmp_path, plan), *extra]


# --- corrupt and incomplete checkpoints --------------------------------------------------
def _shard(parent: Path, name: str = TENSOR) -> Path:
    index = json.loads((parent / "model.safetensors.index.json").read_text())
    return parent / index["weight_map"][name]


def _read(file: Path) -> tuple[dict, bytes]:
    raw = file.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _write(file: Path, header, data: bytes) -> None:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    file.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _edit(parent: Path, change) -> None:
    """Rewrite the header entry of TENSOR with `change(entry)`."""
    file = _shard(parent)
    header, data = _read(file)
    header[TENSOR] = change(dict(header[TENSOR]))
    _write(file, header, data)


def _index(parent: Path, change) -> None:
    path = parent / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    change(index["weight_map"])
    path.write_text(json.dumps(index))


def _bytes(parent: Path, change) -> None:
    file = _shard(parent)
    file.write_bytes(change(file.read_bytes()))


def _offsets(entry, f):
    entry["data_offsets"] = f(*entry["data_offsets"])
    return entry


def _drop_shared(weight_map):
    """Drop the entry of a tensor whose file the index still names for another."""
    files = list(weight_map.values())
    weight_map.pop(next(k for k, f in weight_map.items() if files.count(f) > 1))


def _other_file(weight_map):
    weight_map[TENSOR] = next(f for f in weight_map.values() if f != weight_map[TENSOR])


CORRUPT = {
    "truncated shard": (lambda p: _bytes(p, lambda b: b[: len(b) // 2]), "truncated?"),
    "shard of 3 bytes": (lambda p: _bytes(p, lambda b: b[:3]), "too short"),
    "header not JSON": (
        lambda p: _bytes(p, lambda b: b[:8] + b"#" * 12 + b[20:]),
        "not valid JSON",
    ),
    "header length past the end": (
        lambda p: _bytes(p, lambda b: struct.pack("<Q", 10**7) + b[8:]),
        "header claims",
    ),
    "header a list": (lambda p: _write(_shard(p), [1, 2], b""), "not a JSON object"),
    "unknown dtype": (lambda p: _edit(p, lambda e: {**e, "dtype": "F33"}), "not a safetensors"),
    "offsets past the end": (
        lambda p: _edit(p, lambda e: _offsets(e, lambda b, e_: [b + 10**6, e_ + 10**6])),
        "data section",
    ),
    "size not the shape's": (lambda p: _edit(p, lambda e: {**e, "shape": [3, 5]}), "needs"),
    "negative shape": (lambda p: _edit(p, lambda e: {**e, "shape": [-96, -64]}), "non-negative"),
    "offsets reversed": (lambda p: _edit(p, lambda e: _offsets(e, lambda b, e_: [e_, b])), "order"),
    "offsets not integers": (
        lambda p: _edit(p, lambda e: {**e, "data_offsets": ["0", 4]}),
        "two integers",
    ),
    "entry not a mapping": (lambda p: _edit(p, lambda e: 7), "has no dtype"),
    "index lacks a tensor (and its file)": (
        lambda p: _index(p, lambda m: m.pop(TENSOR)),
        ("has no tensor", TENSOR),
    ),
    "index lacks a tensor its file holds": (lambda p: _index(p, _drop_shared), "does not list"),
    "index names a missing file": (lambda p: _shard(p).unlink(), "lacks"),
    "index not JSON": (
        lambda p: (p / "model.safetensors.index.json").write_text("{"),
        "cannot read",
    ),
    "index names the wrong file": (lambda p: _index(p, _other_file), "does not store it"),
    "config not JSON": (lambda p: (p / "config.json").write_text("{nope"), "cannot read"),
    "config missing": (lambda p: (p / "config.json").unlink(), "has no config.json"),
    "unknown architecture": (
        lambda p: (p / "config.json").write_text(
            json.dumps({**json.loads((p / "config.json").read_text()), "model_type": "nope9"})
        ),
        "nope9",
    ),
    "no weights at all": (
        lambda p: [f.unlink() for f in p.iterdir() if "safetensors" in f.name],
        "cannot load",
    ),
}


@pytest.mark.parametrize("case", CORRUPT)
def test_corrupt_or_incomplete_parent(parent, tmp_path, capsys, case):
    damage, words = CORRUPT[case]
    damage(parent)
    argv = _apply(parent, tmp_path, PLAN, "--out", str(tmp_path / "out"))
    _fails(argv, words, capsys, tmp_path, parent)


def test_a_tensor_missing_from_the_checkpoint_is_named(parent, tmp_path, capsys):
    """Before: skipped as if a tied alias, and randomly initialised when loaded."""
    file = _shard(parent)
    header, data = _read(file)
    del header[TENSOR]
    _write(file, header, data)
    _index(parent, lambda m: m.pop(TENSOR))
    plan = PLAN + "importance: first\n"
    argv = _apply(parent, tmp_path, plan, "--out", str(tmp_path / "out"))
    _fails(argv, ("has no tensor", TENSOR), capsys, tmp_path, parent)


def test_stream_apply_names_a_corrupt_file(parent, tmp_path):
    _bytes(parent, lambda b: b[: len(b) - 100])
    from surgeon.api import stream_apply

    with pytest.raises(ModelLoadError, match="truncated"):
        stream_apply(parent, PLAN, tmp_path / "out")
    assert _left(tmp_path) == []


# --- the output folder ---------------------------------------------------------------------
def test_out_is_the_model_folder(parent, tmp_path, capsys):
    argv = _apply(parent, tmp_path, PLAN, "--out", str(parent), "--force")
    _fails(argv, "is the parent's folder", capsys, tmp_path, parent)


def test_out_inside_the_model_folder(parent, tmp_path, capsys):
    argv = _apply(parent, tmp_path, PLAN, "--out", str(parent / "child"))
    _fails(argv, "inside the parent's folder", capsys, tmp_path, parent)
    assert not (parent / "child").exists()


def test_out_holding_the_model_folder(parent, tmp_path, capsys):
    argv = _apply(parent, tmp_path, PLAN, "--out", str(tmp_path), "--force")
    before = sorted(p.name for p in tmp_path.iterdir())
    _fails(argv, "holds the parent's folder", capsys, tmp_path, parent)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_out_a_symlink_to_the_model_folder(parent, tmp_path, capsys):
    (tmp_path / "link").symlink_to(parent, target_is_directory=True)
    argv = _apply(parent, tmp_path, PLAN, "--out", str(tmp_path / "link"), "--force")
    _fails(argv, "is the parent's folder", capsys, tmp_path, parent, out="link2")
    argv = _apply(parent, tmp_path, PLAN, "--out", str(tmp_path / "link" / "child"))
    _fails(argv, "inside the parent's folder", capsys, tmp_path, parent, out="link2")
    assert (tmp_path / "link").is_symlink() and not (parent / "child").exists()


def test_out_under_a_file(parent, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("not a folder")
    argv = _apply(parent, tmp_path, PLAN, "--out", str(tmp_path / "file.txt" / "out"))
    _fails(argv, "is a file, not a folder", capsys, tmp_path, parent)


def test_out_in_a_missing_folder(parent, tmp_path, capsys):
    argv = _apply(parent, tmp_path, PLAN, "--out", str(tmp_path / "nowhere" / "out"))
    _fails(argv, "does not exist", capsys, tmp_path, parent)


def test_out_exists(parent, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("mine")
    argv = _apply(parent, tmp_path, PLAN, "--out", str(tmp_path / "taken"))
    _fails(argv, "already exists", capsys, tmp_path, parent)
    assert (tmp_path / "taken" / "mine.txt").read_text() == "mine"


def test_out_is_a_file_with_force(parent, tmp_path, capsys):
    (tmp_path / "out.txt").write_text("mine")
    argv = _apply(parent, tmp_path, PLAN, "--out", str(tmp_path / "out.txt"), "--force")
    _fails(argv, "not a folder", capsys, tmp_path, parent)
    assert (tmp_path / "out.txt").read_text() == "mine"


def test_stream_apply_refuses_an_out_inside_the_parent(parent, tmp_path):
    from surgeon.api import stream_apply

    before = _hashes(parent)
    with pytest.raises(SurgeonError, match="inside the parent's folder"):
        stream_apply(parent, PLAN, parent / "child")
    assert _hashes(parent) == before


# --- plans -------------------------------------------------------------------------------
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)
PLANS = {
    "empty file": ("", "the plan is empty"),
    "only a comment": ("# nothing yet\n", "the plan is empty"),
    "empty mapping": ("{}\n", "the plan is empty"),
    "alias bomb": (BOMB + "target: *i\n", "expands to more than"),
    "recursive alias": ("target: &t {x: *t}\n", "contains itself"),
    "too wide": ("target: {hidden_size: 4096}\n", "wider than the parent"),
    "unknown target": ("target: {width: 3}\n", "unknown target 'width'"),
    "not a mapping": ("- 1\n", "a plan is a mapping"),
}


@pytest.mark.parametrize("case", PLANS)
def test_bad_plan(parent, tmp_path, capsys, case):
    text, words = PLANS[case]
    started = time.perf_counter()
    argv = _apply(parent, tmp_path, text, "--out", str(tmp_path / "out"))
    _fails(argv, words, capsys, tmp_path, parent)
    assert time.perf_counter() - started < 10  # a bomb is refused, not expanded


def test_a_plan_that_is_a_folder(parent, tmp_path, capsys):
    (tmp_path / "plans").mkdir()
    argv = ["apply", "--model", str(parent), "--plan", str(tmp_path / "plans")]
    _fails([*argv, "--out", str(tmp_path / "out")], "is a folder", capsys, tmp_path, parent)


def test_a_huge_plan_file(parent, tmp_path, capsys):
    text = "target: {hidden_size: 32}\n" + "#" * 2**21 + "\n"
    argv = _apply(parent, tmp_path, text, "--out", str(tmp_path / "out"))
    _fails(argv, "a plan is a few lines", capsys, tmp_path, parent)


def test_empty_plans_through_the_api():
    model, inputs = zoo.build("llama")
    for plan in ({}, None, ""):
        with pytest.raises(PlanError, match="the plan is empty"):
            surgeon.apply(model, plan, example_inputs=inputs)
    surgeon.load_plan({"importance": "weight"})  # permute only: not empty


def test_a_missing_calibration_file(parent, tmp_path, capsys):
    argv = _apply(parent, tmp_path, PLAN, "--out", str(tmp_path / "out"))
    argv += ["--calibration", str(tmp_path / "none.txt")]
    _fails(argv, "none.txt does not exist", capsys, tmp_path, parent)


def test_a_missing_model(tmp_path, capsys):
    argv = _apply(tmp_path / "nowhere", tmp_path, PLAN, "--out", str(tmp_path / "out"))
    _fails(argv, "neither a folder nor", capsys, tmp_path)


# --- targets a model cannot take ----------------------------------------------------------
@pytest.mark.parametrize("key", ["intermediate_size", "num_heads", "num_kv_heads"])
def test_per_layer_targets_without_layers(tmp_path, capsys, key):
    """Before: ignored, and the child was the parent's size, exit 0."""
    argv = _apply(f"{ZOO}:cnn", tmp_path, f"target: {{{key}: 8}}\n", "--out", str(tmp_path / "out"))
    _fails(argv, (f"target.{key}", "no layers were found"), capsys, tmp_path)


def test_per_layer_targets_without_layers_through_the_api():
    model, inputs = zoo.cnn()
    with pytest.raises(PlanError, match="no layers were found"):
        surgeon.apply(model, {"target": {"intermediate_size": 8}}, example_inputs=inputs)


def test_an_unsupported_op(tmp_path, capsys):
    argv = _apply(f"{ZOO}:unsupported_op", tmp_path, PLAN, "--out", str(tmp_path / "out"))
    _fails(argv, "bessel", capsys, tmp_path)


# --- what must work ----------------------------------------------------------------------
def test_non_ascii_and_spaces_in_every_path(saved, tmp_path, capsys):
    folder = tmp_path / "mödel dir ü"
    shutil.copytree(saved, folder)
    before = _hashes(folder)
    plan = _plan(tmp_path, PLAN, "plän file.yaml")
    out = tmp_path / "chïld out"
    assert main(["apply", "--model", str(folder), "--plan", plan, "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and _hashes(folder) == before
    # a model folder reached through a symlink works too
    (tmp_path / "via link").symlink_to(folder, target_is_directory=True)
    argv = ["apply", "--model", str(tmp_path / "via link"), "--plan", plan]
    assert main([*argv, "--out", str(tmp_path / "second")]) == 0
    assert json.loads((tmp_path / "second" / "config.json").read_text())["hidden_size"] == 32
    assert "Traceback" not in capsys.readouterr().err


def test_force_replaces_in_one_step_and_leaves_nothing(parent, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    argv = _apply(parent, tmp_path, PLAN, "--out", str(out), "--force")
    assert main(argv) == 0
    assert not (out / "old.txt").exists() and (out / "model.safetensors").is_file()
    assert _left(tmp_path) == ["out"]
    # without renameat2: two renames, still nothing left over
    (out / "old.txt").write_text("old")
    monkeypatch.setattr(output, "_exchange", lambda a, b: False)
    from surgeon import hints

    nothing = tmp_path / "hints.json"  # no size measured: no hint
    nothing.write_text('{"sizes": []}')
    monkeypatch.setattr(hints, "HINTS", nothing)
    capsys.readouterr()
    assert main(argv) == 0
    assert not (out / "old.txt").exists() and _left(tmp_path) == ["out"]
    assert "hint: train" not in capsys.readouterr().out  # nothing measured backs a hint


def test_the_hint_is_the_measurement_at_the_nearest_size(parent, tmp_path, capsys, monkeypatch):
    """A causal LM's hint: the lr and weight decay convergence.py chose at the measured
    size nearest in share of the parent's parameters, with the real paths; none where
    the nearest is more than a factor of 2 away (this child is 27% of its parent)."""
    from surgeon import hints

    def table(*shares):
        sizes = [
            {"size": f"s{i}", "parent": "P", "parameters": 1e6, "share": share,
             "surgeon": {"lr": lr, "wd": 0.1}, "surgeon + distillation": {"lr": lr, "wd": 1.0}}
            for i, (share, lr) in enumerate(zip(shares, (1e-4, 3e-3, 3e-2), strict=False))
        ]  # fmt: skip
        path = tmp_path / "hints.json"
        path.write_text(json.dumps({"sizes": sizes}))
        monkeypatch.setattr(hints, "HINTS", path)
        return sizes

    sizes = table(0.9, 0.4, 0.01)
    out = tmp_path / "out"
    assert main(_apply(parent, tmp_path, PLAN, "--out", str(out))) == 0
    summary = json.loads((out / "surgeon.json").read_text())
    share = summary["child_parameters"] / summary["parent_parameters"]
    nearest = min(sizes, key=lambda s: abs(math.log(s["share"] / share)))
    assert nearest["share"] == 0.4 and 0.2 < share < 0.4  # the hand count: 27%
    hint = next(line for line in capsys.readouterr().out.splitlines() if "hint:" in line)
    assert f"lr {nearest['surgeon']['lr']:g}, weight decay 0.1" in hint
    assert f"--child {out} --teacher {parent}" in hint and hint.count("M parameters") == 1
    table(0.9, 0.01)  # the nearest, 0.9, is 3.3 times this child's share
    assert main(_apply(parent, tmp_path, PLAN, "--out", str(out), "--force")) == 0
    assert "hint:" not in capsys.readouterr().out
    sizes = table(0.4, 0.01)
    del sizes[0]["surgeon + distillation"]  # measured plain only: half a hint
    hints.HINTS.write_text(json.dumps({"sizes": sizes}))
    assert main(_apply(parent, tmp_path, PLAN, "--out", str(out), "--force")) == 0
    hint = next(line for line in capsys.readouterr().out.splitlines() if "hint:" in line)
    assert "train it with AdamW at lr 0.0001, weight decay 0.1" in hint
    assert "distilled: not measured near this size" in hint and "surgeon distill" not in hint
    plain = hints.recommended(summary["child_parameters"], summary["parent_parameters"], False)
    distilled = hints.recommended(summary["child_parameters"], summary["parent_parameters"], True)
    assert plain[0] == {"lr": 1e-4, "wd": 0.1} and distilled[0] == hints.FALLBACK


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_replacement_cut_between_its_renames_is_put_back(tmp_path, capsys):
    pid = _dead_pid()
    old = tmp_path / f".out.old-{pid}"
    old.mkdir()
    (old / "model.safetensors").write_text("the user's child")
    partial = tmp_path / f".out.partial-{pid}"
    partial.mkdir()
    done = output.clean_stale(tmp_path / "out")
    assert len(done) == 2 and "restored" in " ".join(done)
    assert (tmp_path / "out" / "model.safetensors").read_text() == "the user's child"
    assert _left(tmp_path) == ["out"]
    assert "surgeon: restored" in capsys.readouterr().err


def test_no_hint_for_a_graph_child(tmp_path, capsys):
    argv = _apply(f"{ZOO}:cnn", tmp_path, "importance: weight\n", "--out", str(tmp_path / "out"))
    assert main(argv) == 0
    assert "hint: train" not in capsys.readouterr().out


def test_per_layer_config_lists_follow_the_layers_and_others_do_not(prepared):
    """Before: eos_token_id [2, 5, 7] of a 3-layer model became [5, 7] / [2, 5, 5, 7]."""
    from surgeon.pipeline import check, resolve

    model, inputs = zoo.build("llama")
    model.config.eos_token_id = [2, 5, 7]
    parent = surgeon.prepare(model, inputs)
    for depth in ([0, 2], [0, 1, 1, 2]):
        config = check(parent, resolve({"depth": depth})).config
        assert config.eos_token_id == [2, 5, 7]
        assert config.num_hidden_layers == len(depth)
    gemma2 = prepared("gemma2")
    types = list(gemma2.model.config.layer_types)
    config = check(gemma2.parent, resolve({"depth": [0, 2, 2]})).config
    assert config.layer_types == [types[0], types[2], types[2]]
    assert gemma2.model.config.layer_types == types


# --- run-time checks ---------------------------------------------------------------------
def test_the_streamed_check_catches_a_wrong_tensor(parent, tmp_path, capsys, monkeypatch):
    import surgeon.emit.shards as shards

    real = shards._blocks

    def wrong(source, cuts, scale):
        for block in real(source, cuts, scale):
            yield block + 1 if block.is_floating_point() else block

    monkeypatch.setattr(shards, "_blocks", wrong)
    argv = _apply(parent, tmp_path, PLAN + "importance: weight\n", "--out", str(tmp_path / "out"))
    _fails(argv, "differs from the same tensor cut in memory", capsys, tmp_path, parent)


def test_the_hf_parity_check_covers_a_padded_mask_and_another_length(prepared, monkeypatch):
    from surgeon.api import subclone
    from surgeon.emit import hf

    llama = prepared("llama")
    inputs = llama.example
    child = subclone(llama.parent, {"target": {"hidden_size": 32}})
    hf._check_same(child.model, child.graph, child.state, llama.model)  # passes as built
    forward = type(child.model).forward
    seq = inputs["input_ids"].shape[1]

    def off_when(test):
        def wrong(self, *args, **kwargs):
            out = forward(self, *args, **kwargs)
            if test(kwargs):
                out.logits = out.logits + 1
            return out

        return wrong

    padded = off_when(
        lambda kw: kw.get("attention_mask") is not None and not kw["attention_mask"].all()
    )
    monkeypatch.setattr(type(child.model), "forward", padded)
    with pytest.raises(InvariantError, match="padded attention mask"):
        hf._check_same(child.model, child.graph, child.state, llama.model)
    shorter = off_when(lambda kw: kw["input_ids"].shape[1] != seq)
    monkeypatch.setattr(type(child.model), "forward", shorter)
    with pytest.raises(InvariantError, match="sequence length of"):
        hf._check_same(child.model, child.graph, child.state, llama.model)


# --- signals and limits, in a separate process ---------------------------------------------
SLOW_WRITER = """
import pathlib, sys, time
import surgeon.emit.shards as shards
real = shards.write_safetensors
def slow(entries, path, bar=None):
    real(entries, path, bar)
    pathlib.Path(sys.argv[1]).write_text("writing")
    time.sleep(120)
shards.write_safetensors = slow
from surgeon.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _start_slow_writer(parent, tmp_path, out: str) -> tuple[subprocess.Popen, Path]:
    marker = tmp_path / f"{out}.marker"
    argv = _apply(parent, tmp_path, PLAN, "--out", str(tmp_path / out))
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(marker), *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, marker


def _wait_mid_write(proc: subprocess.Popen, marker: Path) -> None:
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate()


def test_sigterm_and_sigkill_mid_write(parent, tmp_path, capsys):
    """Two processes at once (the cost is their start): SIGTERM removes its partial
    folder and exits 143 with one line; SIGKILL leaves one, which the next run removes."""
    before = _hashes(parent)
    runs = {
        sig: _start_slow_writer(parent, tmp_path, out)
        for sig, out in ((signal.SIGTERM, "out"), (signal.SIGKILL, "killed"))
    }
    for proc, marker in runs.values():
        _wait_mid_write(proc, marker)
    assert len(list(tmp_path.glob(".out.partial-*"))) == 1  # it is mid-write
    for sig, (proc, _) in runs.items():
        proc.send_signal(sig)
    (term, _), (kill, _) = runs.values()
    _, stderr = term.communicate(timeout=60)
    kill.communicate(timeout=60)
    assert term.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    lines = [ln for ln in re.split(r"[\r\n]", stderr) if ln.startswith("surgeon:")]
    assert lines == ["surgeon: stopped by signal 15: nothing written"], stderr
    assert _left(tmp_path, "out") == []
    assert kill.returncode == -signal.SIGKILL
    assert len(list(tmp_path.glob(".killed.partial-*"))) == 1  # nothing could remove it
    argv = _apply(parent, tmp_path, PLAN, "--out", str(tmp_path / "killed"))
    assert main(argv) == 0  # the next run cleans it
    assert "left by a run that was killed" in capsys.readouterr().err
    assert _left(tmp_path, "killed") == ["killed"] and _hashes(parent) == before


KILLER = """
import os, pathlib, signal, sys
import surgeon.io.output as output
step, at = 0, sys.argv[1]  # `write:N` (the N-th write into the staged folder), or the swap
def kill(here):
    if here == at:
        os.kill(os.getpid(), signal.SIGKILL)
real_open, real_exchange = pathlib.Path.open, output._exchange
def counted_open(path, mode="r", *args, **kwargs):
    f = real_open(path, mode, *args, **kwargs)
    if "w" in mode and ".partial-" in str(path):
        write = f.write
        def counted(data):
            global step
            step += 1
            kill(f"write:{step}")
            return write(data)
        f.write = counted
    return f
def exchange(a, b):
    swapped = real_exchange(a, b)
    kill("after the swap")
    return swapped
pathlib.Path.open, output._exchange = counted_open, exchange
from surgeon.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_sigkill_at_random_points_over_an_existing_child(parent, tmp_path):
    """`--force` runs killed outright at two points (a write into the staged folder,
    picked at seeded random, and after the swap into place): each leaves
    the parent as it was and its output folder whole (the old child or the new one,
    nothing in between), and the next run cleans up and finishes."""
    before = _hashes(parent)
    assert (
        main(
            _apply(parent, tmp_path, "target: {hidden_size: 48}\n", "--out", str(tmp_path / "old"))
        )
        == 0
    )
    assert main(_apply(parent, tmp_path, PLAN, "--out", str(tmp_path / "new"))) == 0
    whole = {"old": _model(tmp_path / "old"), "new": _model(tmp_path / "new")}
    rng = random.Random(0)
    points = [f"write:{rng.randint(1, 12)}", "after the swap"]
    runs = []
    for i, point in enumerate(points):
        shutil.copytree(tmp_path / "old", tmp_path / f"out{i}")
        argv = _apply(parent, tmp_path, PLAN, "--out", str(tmp_path / f"out{i}"), "--force")
        command = [sys.executable, "-c", KILLER, point, *argv]
        runs.append(subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True))
    for i, (point, proc) in enumerate(zip(points, runs, strict=True)):
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL, (point, err)
        expect = "new" if point == "after the swap" else "old"
        assert _model(tmp_path / f"out{i}") == whole[expect], point
        assert (
            main(_apply(parent, tmp_path, PLAN, "--out", str(tmp_path / f"out{i}"), "--force")) == 0
        )
        assert _left(tmp_path, f"out{i}") == [f"out{i}"]
        assert _model(tmp_path / f"out{i}") == whole["new"]
    assert _hashes(parent) == before


def _model(folder: Path) -> dict[str, str]:
    """The hashes of a child's files but its record (`surgeon.json` names its paths)."""
    return {k: v for k, v in _hashes(folder).items() if k != "surgeon.json"}


def _full_disk(folder: Path, free: int):
    """`Path.open` for files written in `folder`: their writes fail with ENOSPC once
    `free` bytes are written in all (a disk that fills up mid-write)."""
    real, left = Path.open, [free]

    def open_(path, mode="r", *args, **kwargs):
        f = real(path, mode, *args, **kwargs)
        if "w" not in mode or not str(Path(path).resolve()).startswith(str(folder)):
            return f
        write = f.write

        def write_until_full(data):
            n = len(data.encode()) if isinstance(data, str) else memoryview(data).nbytes
            if n > left[0]:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            left[0] -= n
            return write(data)

        f.write = write_until_full
        return f

    return open_


@pytest.mark.parametrize("force", [False, True])
def test_a_full_disk_mid_write(parent, tmp_path, capsys, monkeypatch, force):
    """ENOSPC while the weights are written: one line, no partial folder, the parent
    and an existing child (`--force`) as they were."""
    out = tmp_path / "out"
    extra = ("--out", str(out), *(("--force",) if force else ()))
    if force:
        assert main(_apply(parent, tmp_path, "target: {hidden_size: 48}\n", "--out", str(out))) == 0
        old = _hashes(out)
    monkeypatch.setattr(Path, "open", _full_disk(tmp_path.resolve(), free=20_000))
    argv = _apply(parent, tmp_path, PLAN, *extra)
    before = _hashes(parent)
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in re.split(r"[\r\n]", err) if ln.startswith("surgeon:")]
    assert len(lines) == 1 and "No space left on device" in lines[0], err
    assert "Traceback" not in err and _hashes(parent) == before
    assert _left(tmp_path) == (["out"] if force else [])
    if force:
        assert _hashes(out) == old


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="no file size limits")
def test_a_file_size_limit_hit_mid_write(parent, tmp_path, capsys):
    """In this process: a soft RLIMIT_FSIZE, SIGXFSZ ignored so write() fails with EFBIG;
    both restored after."""
    argv = _apply(parent, tmp_path, PLAN, "--out", str(tmp_path / "out"))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))
    try:
        _fails(argv, "File too large", capsys, tmp_path, parent)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


def test_an_interrupted_api_call_leaves_nothing(parent, tmp_path, monkeypatch):
    import surgeon.emit.shards as shards

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(shards, "write_safetensors", interrupted)
    from surgeon.api import stream_apply

    with pytest.raises(KeyboardInterrupt):
        stream_apply(parent, PLAN, tmp_path / "out")
    assert _left(tmp_path) == []
