"""Every example plan runs on the zoo's Llama, from Python and from the command line, and
the plan schema in docs/ is the one the code checks against."""

import json
from pathlib import Path

import pytest
import torch

import surgeon
from surgeon.cli import main
from surgeon.frontends import as_inputs, output_tensors
from surgeon.plan import SCHEMA
from tests import zoo

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


class _Chars:
    """A character tokenizer (the zoo's models have no real one)."""

    def __call__(self, text):
        return {"input_ids": [ord(c) % zoo.VOCAB for c in text]}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_plan_builds_a_child_that_runs(path):
    model, example = zoo.build("llama")
    plan = surgeon.load_plan(path)
    child = surgeon.apply(
        model,
        str(path),
        example_inputs=None if plan.importance == "activation" else example,
        tokenizer=_Chars(),
    )
    layers = plan.sizes.get("num_layers", len(plan.depth) if isinstance(plan.depth, tuple) else 3)
    assert child.config.num_hidden_layers == layers
    assert child.config.hidden_size == plan.sizes.get("hidden_size", 64)
    logits = output_tensors(as_inputs(example).call(child))[0]
    assert logits.shape == (2, 8, zoo.VOCAB) and torch.isfinite(logits).all()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_plan_validates_from_the_cli(path, capsys):
    assert main(["validate", str(path), "--model", "tests.zoo:llama"]) == 0
    assert "valid for LlamaForCausalLM" in capsys.readouterr().out


def test_plan_schema_in_docs_is_current():
    written = json.loads((ROOT / "docs" / "plan.schema.json").read_text())
    assert written == SCHEMA, "regenerate: surgeon schema > docs/plan.schema.json"


def test_demo_plan_fits_smollm2():
    """The plan `make demo` runs, checked against SmolLM2-135M's shape on the meta device."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from surgeon.api import dry_run

    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
        use_cache=False,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    described = dry_run(model, ROOT / "examples" / "smollm2" / "plan.yaml")
    assert described == (  # SmolLM2-135M's published count: 134.5 M, embeddings tied
        "num_layers 30 -> 15, hidden_size 576 -> 384, intermediate_size 1536 -> 1024, "
        "num_heads 9 -> 6, num_kv_heads 3 -> 2, head_dim 64; "
        "parameters 134,515,008 -> 42,479,232 (31.6%)"
    )
