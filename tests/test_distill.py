"""`surgeon distill`: a child trained from its parent's logits moves towards them; the CLI
refuses bad input in one line and changes none of the user's files; two processes under
torchrun (gloo, CPU) train one model and write it once."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import surgeon
from surgeon.cli import main
from surgeon.distill import distill, pack
from tests import zoo

ROOT = Path(__file__).resolve().parent.parent
TEXT = "the quick brown fox jumps over the lazy dog while five boxing wizards jump quickly "


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine two threads spin-wait
    on each other (the suite's xdist workers use one thread already)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, prepared):
    """A zoo Llama (the teacher), its subclone (the child), each with the letter
    tokenizer, and a text file."""
    root = tmp_path_factory.mktemp("distill")
    llama = prepared("llama")
    teacher = llama.model
    plan = {"target": {"num_layers": 2, "hidden_size": 32}, "importance": "weight"}
    child = surgeon.apply(llama.parent, plan)
    for name, model in (("teacher", teacher), ("child", child)):
        model.save_pretrained(root / name)
        zoo.save_letter_tokenizer(root / name)
    (root / "text.txt").write_text(TEXT * 40)
    return root


def _load(folder):
    from transformers import AutoTokenizer, LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def _kl(student, teacher, blocks) -> float:
    """KL(teacher || student) per token, on `blocks`."""
    with torch.no_grad():
        s = F.log_softmax(student(input_ids=blocks).logits, dim=-1).flatten(0, 1)
        t = F.log_softmax(teacher(input_ids=blocks).logits, dim=-1).flatten(0, 1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean").item()


def test_distilling_lowers_the_kl_to_the_teacher(folders, tmp_path):
    teacher, tokenizer = _load(folders / "teacher")
    child, _ = _load(folders / "child")
    blocks = pack(tokenizer, TEXT * 4, 32)
    before = _kl(child, teacher, blocks)
    metrics = distill(
        child, tokenizer, TEXT * 40, tmp_path / "out", teacher=teacher, alpha=1.0,
        block_size=32, batch_size=4, steps=30, lr=1e-2,
    )  # fmt: skip
    trained, _ = _load(tmp_path / "out")
    after = _kl(trained, teacher, blocks)
    assert after < 0.5 * before, (before, after)
    assert metrics["train_loss"] > 0
    assert (tmp_path / "out" / "tokenizer.json").is_file()


def test_without_a_teacher_it_is_next_token_training(folders, tmp_path):
    child, tokenizer = _load(folders / "child")
    blocks = pack(tokenizer, TEXT * 4, 32)

    def loss(model):
        with torch.no_grad():
            return model(input_ids=blocks, labels=blocks).loss.item()

    before = loss(child)
    distill(child, tokenizer, TEXT * 40, tmp_path / "out", block_size=32, batch_size=4,
            steps=20, lr=1e-2)  # fmt: skip
    assert loss(_load(tmp_path / "out")[0]) < before - 0.5


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_cli_errors_are_one_line_and_touch_nothing(folders, tmp_path, capsys):
    child, teacher, text = folders / "child", folders / "teacher", folders / "text.txt"
    other = tmp_path / "other-vocab"
    model, _ = zoo.build("llama")
    model.resize_token_embeddings(160, mean_resizing=False)
    model.save_pretrained(other)
    short = tmp_path / "short.txt"
    short.write_text("abc")
    (tmp_path / "exists").mkdir()
    before = {f: _digest(f) for f in (child, teacher)}
    capsys.readouterr()
    cases = {
        "--child nowhere: no such folder": ["--child", "nowhere", "--data", str(text)],
        "--teacher nowhere: no such folder": ["--teacher", "nowhere"],
        "--data none.txt: no such file": ["--data", "none.txt"],
        "alpha must be in [0, 1]": ["--alpha", "1.5"],
        "share one tokenizer": ["--teacher", str(other)],
        "the text is too short: 3 tokens": ["--data", str(short)],
        "already exists: choose another --out, or pass --force": [
            "--out", str(tmp_path / "exists")
        ],
    }  # fmt: skip
    for expected, change in cases.items():
        argv = {"--child": str(child), "--teacher": str(teacher), "--data": str(text)}
        argv["--out"] = str(tmp_path / "out")
        argv.update(dict(zip(change[::2], change[1::2], strict=True)))
        code = main(["distill", *[x for kv in argv.items() for x in kv], "--steps", "1"])
        err = capsys.readouterr().err
        assert code == 2, err
        assert expected in err and err.count("\n") == 1, err
        if expected == "share one tokenizer":  # the line docs/training.md shows
            assert err.strip() in (ROOT / "docs" / "training.md").read_text()
    assert {f: _digest(f) for f in (child, teacher)} == before
    assert not (tmp_path / "out").exists()


def test_torchrun_two_processes_write_one_model(folders, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    argv += ["-m", "surgeon", "distill", "--child", str(folders / "child")]
    argv += ["--teacher", str(folders / "teacher"), "--data", str(folders / "text.txt")]
    argv += ["--out", str(out), "--steps", "4", "--batch-size", "2", "--block-size", "32"]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote ") == 1, result.stdout
    assert "4 steps on 2 process(es)" in result.stdout  # one DDP run, not two alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial folders
    assert len(list(out.glob("*.safetensors"))) == 1
    trained, _ = _load(out)
    start, _ = _load(folders / "child")
    moved = [
        (a - b).abs().max().item()
        for a, b in zip(trained.parameters(), start.parameters(), strict=True)
    ]
    assert max(moved) > 0  # trained, not copied


def test_the_fsdp_config_in_examples_is_one_accelerate_reads():
    """Every key of examples/training/fsdp.yaml is an option of `accelerate launch`."""
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser

    config = ClusterConfig.from_yaml_file(ROOT / "examples" / "training" / "fsdp.yaml")
    options = {a.dest for a in launch_command_parser()._actions}
    assert config.distributed_type.value == "FSDP"
    assert config.fsdp_config["fsdp_version"] == 2
    assert set(config.fsdp_config) <= options, set(config.fsdp_config) - options


def test_the_cli_reports_held_out_loss_and_carries_the_record(
    folders, tmp_path, capsys, monkeypatch
):
    """The last tenth of --data is held out: its loss before training is the child's
    own next-token loss on those blocks, computed here by hand; the child's
    surgeon.json is carried into --out with the training added."""
    import json
    import shutil

    child = tmp_path / "child"
    shutil.copytree(folders / "child", child)
    (child / "surgeon.json").write_text(json.dumps({"plan": "p.yaml", "parent_parameters": 10**6}))
    out = tmp_path / "out"
    from surgeon import hints

    nothing = tmp_path / "hints.json"  # no size measured: distill says so, uses its fallback
    nothing.write_text('{"sizes": []}')
    monkeypatch.setattr(hints, "HINTS", nothing)
    argv = ["distill", "--child", str(child), "--data", str(folders / "text.txt")]
    argv += ["--out", str(out), "--steps", "2", "--block-size", "16", "--batch-size", "4"]
    assert main([*argv, "--onnx"]) == 0
    printed = capsys.readouterr()
    record = json.loads((out / "surgeon.json").read_text())
    assert record["plan"] == "p.yaml" and record["distilled"]["steps"] == 2
    model, tokenizer = _load(child)
    blocks = pack(tokenizer, TEXT * 40, 16)
    held = blocks[len(blocks) - len(blocks) // 10 :]
    with torch.no_grad():
        logits = model(input_ids=held).logits[:, :-1]
        by_hand = F.cross_entropy(logits.flatten(0, 1), held[:, 1:].flatten()).item()
    before = record["distilled"]["held_out_loss_before"]
    assert before == pytest.approx(by_hand, rel=1e-4)
    assert f"held-out loss ({len(held)} blocks" in printed.out
    assert "lr and weight decay: no measured recommendation" in printed.err
    assert (out / "model.onnx").is_file() and "greedy generation token-identical" in printed.out
