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
        assert plan.sizes  # each documented plan states a destination
