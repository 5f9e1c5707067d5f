"""The command line: output on success; one line, exit 2 and no traceback on bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from surgeon.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_inspect_prints_table_and_json(capsys):
    assert main(["inspect", "--model", "tests/zoo.py:nanogpt"]) == 0
    out = capsys.readouterr().out
    assert "tied         transformer.wte.weight = lm_head.weight" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("transformer.h.")]
    assert rows == [["transformer.h.0-2", "256", "4", "4", "16"]]  # three alike: one row
    assert "ffn           256 3 layers" in out  # the groups by role
    assert main(["inspect", "--model", "tests/zoo.py:nanogpt", "--groups"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [r[1:4] for r in rows if r[1:2] == ["ffn"] and r[0].isdigit()] == [
        ["ffn", "256", str(i)] for i in range(3)
    ]
    assert main(["inspect", "--model", "tests.zoo:llama", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"] == "LlamaForCausalLM"
    assert summary["tied"] == [["model.embed_tokens.weight", "lm_head.weight"]]
    assert summary["parameters"] == 100_800
    assert (summary["num_layers"], summary["hidden_size"]) == (3, 64)
    assert summary["layers"][0]["num_kv_heads"] == 2
    assert summary["rotary"][0]["tensors"] == ["model.rotary_emb.inv_freq"]


def _without_ids(report):
    """A report without group ids (numbered in trace order, which may differ)."""
    if isinstance(report, dict):
        return {k: _without_ids(v) for k, v in report.items() if k not in ("id", "group")}
    if isinstance(report, list):
        return [_without_ids(v) for v in report]
    return report


def test_inspect_and_validate_read_a_folder_on_the_meta_device(tmp_path, capsys):
    """Structure only: the report is the loaded model's, and no weight file is read (they
    are deleted here), so a parent of any size is inspected in seconds."""
    from surgeon import inspect
    from tests import zoo

    model, example = zoo.build("qwen2")
    model.save_pretrained(tmp_path / "qwen2")
    for weights in (tmp_path / "qwen2").glob("*.safetensors"):
        weights.unlink()
    assert main(["inspect", "--model", str(tmp_path / "qwen2"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"] == "Qwen2ForCausalLM"
    assert summary["parameters"] == sum(p.numel() for p in model.parameters())
    loaded = json.loads(json.dumps(inspect(model).to_dict()))
    assert _without_ids(summary) == _without_ids(loaded)
    plan = tmp_path / "plan.yaml"
    plan.write_text("target: {intermediate_size: 48, num_layers: 2}\n")
    assert main(["validate", str(plan), "--model", str(tmp_path / "qwen2")]) == 0
    printed = capsys.readouterr().out
    assert "valid for Qwen2ForCausalLM: child num_layers 3 -> 2" in printed
    assert "intermediate_size 96 -> 48" in printed


@pytest.mark.parametrize(
    "model, message",
    [
        ("does-not-exist", "neither a folder nor 'module:factory'"),
        ("HuggingFaceTB/SmolLM2-135M", "surgeon does not download: `huggingface-cli download"),
        ("missing.py:build", "no such file: missing.py"),
        ("tests.zoo:no_such_factory", "has no callable 'no_such_factory'"),
        ("no_such_module_xyz:build", "cannot import 'no_such_module_xyz'"),
        ("tests.zoo:untraceable", "cannot trace _Untraceable"),
        ("tests.zoo:unsupported_op", "no rule for op aten.special_bessel_j0.default"),
        ("tests", "has no config.json"),
    ],
)
def test_bad_models_give_one_line_and_exit_2(model, message, capsys):
    assert main(["inspect", "--model", model]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("surgeon: error: ")
    assert message in err


def test_console_script_prints_no_traceback():
    exe = Path(sys.executable).with_name("surgeon")
    result = subprocess.run(
        [str(exe), "inspect", "--model", "tests.zoo:untraceable"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stdout == ""


def test_the_command_exits_after_its_exit_handlers_and_output(tmp_path):
    """`surgeon` ends without the interpreter's teardown: its output still reaches a pipe
    whole, its exit code is main's, and the exit handlers (the user's) run; under a
    tracer (a debugger, coverage) it exits as Python does."""
    marker, teardown = tmp_path / "ran", tmp_path / "teardown"
    script = (
        "import atexit, pathlib, sys\n"
        f"atexit.register(pathlib.Path({str(marker)!r}).write_text, 'ran')\n"
        f"held = open({str(teardown)!r}, 'w')\n"
        "held.write('torn down')  # buffered: written when the teardown closes it\n"
        "if sys.argv[1] == 'traced':\n"
        "    sys.settrace(lambda *args: None)\n"
        "sys.argv = ['surgeon', *sys.argv[2:]]\n"
        "import runpy\n"
        "runpy.run_module('surgeon', run_name='__main__')  # as `python -m surgeon`\n"
    )
    runs = [("fast", ["schema"], 0), ("fast", ["validate", str(tmp_path / "none.yaml")], 2)]
    for how, args, code in [*runs, ("traced", ["schema"], 0)]:
        marker.unlink(missing_ok=True)
        teardown.unlink(missing_ok=True)
        result = subprocess.run(
            [sys.executable, "-c", script, how, *args], cwd=ROOT, capture_output=True,
            text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == code, result.stderr
        assert marker.read_text() == "ran"
        torn = teardown.read_text() == "torn down"
        assert torn == (how == "traced")  # a tracer: the normal exit
        if code:
            assert "does not exist" in result.stderr
        else:  # the whole schema, through a pipe
            assert "properties" in json.loads(result.stdout)


def test_inspect_with_calibration_text(tmp_path, capsys):
    """A folder with a tokenizer: residual ratios and importance in the report."""
    from tests import zoo

    model, _ = zoo.build("llama")
    folder = tmp_path / "llama"
    model.save_pretrained(folder)
    zoo.save_letter_tokenizer(folder)
    text = tmp_path / "text.txt"
    text.write_text("abcdefghijklmnopqrstuvwxyz" * 400)
    assert main(["inspect", "--model", str(folder), "--calibration", str(text), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["residual_ratio"]) == 6
    assert all(len(layer["residual_ratio"]) == 2 for layer in report["layers"])
    assert report["importance"]
    assert main(["inspect", "--model", "tests.zoo:llama", "--calibration", str(text)]) == 2
    assert "needs the model's tokenizer" in capsys.readouterr().err


def test_a_multimodal_folder_goes_through_the_cli_on_text_it_derives(tmp_path):
    """A vision-language folder: its config's vocabulary is its text model's, so surgeon
    derives text inputs itself, and the permute-only child it writes computes the
    parent's logits on text."""
    import torch

    from tests import zoo
    from tests.helpers import permuted_through_the_cli

    model, _ = zoo.build("llava")
    child = permuted_through_the_cli(model, tmp_path)
    ids = torch.randint(3, 100, (2, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, got = model(input_ids=ids).logits, child(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_the_same_parent_and_plan_write_byte_identical_folders(tmp_path):
    """Two `surgeon apply` runs on one folder and plan: every file the same, byte for byte
    (weights, config, ONNX), except surgeon.json, whose timing differs."""
    import hashlib

    from tests import zoo

    model, _ = zoo.build("llama")
    model.save_pretrained(tmp_path / "parent")
    plan = tmp_path / "plan.yaml"
    # one layer: the ONNX export, most of the time, grows with depth
    plan.write_text("target: {num_layers: 1, hidden_size: 32, intermediate_size: 48}\n")
    digests = []
    for run in ("a", "b"):
        out = tmp_path / run
        argv = ["apply", "--model", str(tmp_path / "parent"), "--plan", str(plan)]
        assert main([*argv, "--out", str(out), "--onnx"]) == 0
        files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "surgeon.json")
        digests.append(
            {p.relative_to(out): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
        )
    assert any(str(name).endswith(".onnx") for name in digests[0])
    assert digests[0] == digests[1]
