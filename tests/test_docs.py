"""Every Python example in the README and docs runs, and prints what the text says."""

import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("path", [p for p in DOCS if _python_blocks(p)], ids=lambda p: p.name)
def test_python_examples_run_and_print_what_they_claim(path):
    for block in _python_blocks(path):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, str(path), "exec"), {})
        printed = out.getvalue().splitlines()
        claims = [c.strip() for c in re.findall(r"print\(.*\)\s*#\s*(.*)", block)]
        assert len(printed) == len(claims)
        for line, claim in zip(printed, claims, strict=True):
            assert line == claim


def test_yaml_plans_in_docs_are_valid_plans():
    from surgeon import load_plan

    blocks = [b for p in DOCS for b in re.findall(r"```yaml\n(.*?)```", p.read_text(), flags=re.S)]
    assert blocks
    for block in blocks:
        plan = load_plan(block)
        assert plan.sizes or plan.budget or plan.drop_blocks  # each states a destination


def test_the_readme_walkthrough_runs_as_written(tmp_path, monkeypatch, capsys):
    """The README's "Your own model" commands, each through the CLI, on a zoo Llama
    folder with a tokenizer: its variables set to that folder, a plan of its size and a
    text file; `--steps 2000` runs as 2. Every command succeeds."""
    import shlex

    from surgeon.cli import main
    from tests import zoo

    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Your own model.*?```sh\n(.*?)```", readme, flags=re.S).group(1)
    model, _ = zoo.build("llama")
    model.save_pretrained(tmp_path / "parent")
    zoo.save_letter_tokenizer(tmp_path / "parent")
    plan = "target: {num_layers: 1, hidden_size: 32, num_heads: 2}\n"  # 1 layer: faster exports
    (tmp_path / "plan.yaml").write_text(plan)
    (tmp_path / "text.txt").write_text("the quick brown fox jumps over the lazy dog " * 200)
    values = {"MODEL": "parent", "PLAN": "plan.yaml", "TEXT": "text.txt"}
    monkeypatch.chdir(tmp_path)
    ran = []
    for line in block.splitlines():
        line = line.split(" #")[0].strip()
        name, _, value = line.partition("=")
        if name in values:
            assert value, line  # an assignment the test replaces
            continue
        assert line.startswith("surgeon "), line
        for key, value in values.items():
            line = line.replace(f"${key}", value)
        argv = shlex.split(line.replace("--steps 2000", "--steps 2"))[1:]
        assert main(argv) == 0, (line, capsys.readouterr().err)
        ran.append(argv[0])
    steps = ["inspect", "validate", "apply", "distill", "export", "generate"]
    assert ran == [*steps, "export", "generate"]
    assert (tmp_path / "trained" / "model.onnx").is_file()
    assert (tmp_path / "trained" / "model.gguf").is_file()
