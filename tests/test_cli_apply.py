"""`surgeon apply` and `surgeon validate`: a child folder on success; on bad input one
line, exit 2, no traceback, and nothing written."""

import json

import pytest
import torch

import surgeon
from surgeon.cli import main
from tests import zoo

GOOD = "target: {hidden_size: 32, intermediate_size: 48, num_heads: 2, num_kv_heads: 1}\n"


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parent") / "llama"
    model, _ = zoo.build("llama")
    model.save_pretrained(folder)
    return folder


def _plan(tmp_path, text, name="plan.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_apply_writes_a_checked_child(parent, tmp_path, capsys):
    out = tmp_path / "child"
    plan = _plan(tmp_path, GOOD)
    assert main(["apply", "--model", str(parent), "--plan", plan, "--out", str(out)]) == 0
    summary = json.loads((out / "surgeon.json").read_text())
    assert summary["child"]["hidden_size"] == 32 and summary["child"]["num_kv_heads"] == 1
    assert summary["onnx_max_relative_difference"] is None  # --onnx: the bfloat16 test below
    assert summary["streamed"]  # a data-free plan on a safetensors folder never loads it
    from transformers import LlamaForCausalLM

    child = LlamaForCausalLM.from_pretrained(out)
    assert child.config.hidden_size == 32
    assert sum(p.numel() for p in child.parameters()) == summary["child_parameters"]
    assert not list(tmp_path.glob(".child.*"))
    # --force replaces it, and only then
    (out / "mine.txt").write_text("x")
    assert main(["apply", "--model", str(parent), "--plan", plan, "--out", str(out)]) == 2
    assert (out / "mine.txt").is_file()
    assert (
        main(["apply", "--model", str(parent), "--plan", plan, "--out", str(out), "--force"]) == 0
    )
    assert not (out / "mine.txt").exists()


def test_a_folder_with_a_tokenizer_streams_every_plan(tmp_path, monkeypatch):
    """With a tokenizer, `recipe: auto` means calibration on text: the parent is still
    streamed, calibrated one layer at a time. A data-free plan never loads the tokenizer:
    its files are copied."""
    import surgeon.frontends.load

    folder = tmp_path / "llama"
    model, _ = zoo.build("llama")
    model.save_pretrained(folder)
    zoo.save_letter_tokenizer(folder)
    runs = {"data-free": "recipe: data-free\n", "auto": ""}
    load_tokenizer = surgeon.frontends.load.load_tokenizer
    for name, extra in runs.items():
        out = tmp_path / name
        if name == "data-free":  # loading it would cost seconds for nothing
            monkeypatch.setattr(surgeon.frontends.load, "load_tokenizer", None)
        else:
            monkeypatch.setattr(surgeon.frontends.load, "load_tokenizer", load_tokenizer)
        plan = _plan(tmp_path, "target: {num_layers: 1}\n" + extra)
        assert main(["apply", "--model", str(folder), "--plan", plan, "--out", str(out)]) == 0
        summary = json.loads((out / "surgeon.json").read_text())
        assert summary["streamed"]
        assert summary["calibration_batches"] == (0 if name == "data-free" else 8)
        assert (summary["influence"] is None) == (name == "data-free")
        assert (out / "tokenizer.json").is_file()
    assert (tmp_path / "data-free" / "tokenizer.json").read_bytes() == (
        folder / "tokenizer.json"
    ).read_bytes()


def test_a_bfloat16_folder_gives_a_bfloat16_child_and_a_float32_onnx(tmp_path, capsys):
    """Streamed, calibrated or not. onnxruntime lacks bfloat16 kernels, so the ONNX file is
    a float32 copy, checked against the float32 child (`emit_any_onnx`, which both paths
    call, is exported once here: a decoder with a KV cache)."""
    from surgeon.io.shards import Shards

    folder = tmp_path / "llama"
    model, _ = zoo.build("llama")
    model.to(torch.bfloat16).save_pretrained(folder)
    for recipe in ("data-free", "paper"):  # streamed; and calibrated one layer at a time
        out = tmp_path / recipe
        small = "calibration: {samples: 4, seq_len: 16, batch_size: 2}\n"  # traced at 2 x 16
        one_layer = GOOD.replace("}", ", num_layers: 1}")  # export time grows with depth
        plan = _plan(tmp_path, one_layer + f"recipe: {recipe}\n" + small)
        argv = ["apply", "--model", str(folder), "--plan", plan, "--out", str(out)]
        argv += ["--onnx"] if recipe == "data-free" else []  # one float32 export is enough
        if recipe == "paper":
            text = tmp_path / "text.txt"
            text.write_text("the quick brown fox jumps over the lazy dog " * 200)
            zoo.save_letter_tokenizer(folder)
            argv += ["--calibration", str(text)]
        assert main(argv) == 0
        summary = json.loads((out / "surgeon.json").read_text())
        assert summary["streamed"] and summary["calibration_batches"] == (recipe == "paper") * 2
        if recipe == "data-free":
            printed = capsys.readouterr().out
            assert "onnx: model.onnx, a decoder with a KV cache: logits within" in printed
            assert (out / "model.onnx").is_file()
            assert summary["onnx_max_relative_difference"] < 1e-4
            assert summary["onnx"]["greedy_tokens_compared"] == 4 * 32
        shards = Shards(out)
        assert {shards.tensor(n).dtype for n in shards.index} == {torch.bfloat16}


def test_a_folder_with_emit_graph_writes_a_graph_that_loads(tmp_path):
    """A graph child of a Hugging Face folder (`emit: graph`, as `layout: per_layer`
    children are) is saved as `model.pt`; loaded again, at every width and reordered, it
    computes the parent's logits. (torch.export's guards function did not pickle.)"""
    from surgeon.frontends.hf import synthetic_inputs

    model, _ = zoo.build("llama")
    model.save_pretrained(tmp_path / "parent")
    plan = _plan(tmp_path, "target: {}\nimportance: weight\nemit: graph\n")
    out = tmp_path / "child"
    argv = ["apply", "--model", str(tmp_path / "parent"), "--plan", plan, "--out", str(out)]
    assert main(argv) == 0
    graph = torch.load(out / "model.pt", weights_only=False)
    inputs = synthetic_inputs(model)  # the shapes surgeon traced the folder at
    with torch.no_grad():
        got = graph(*inputs.args, **inputs.kwargs)["logits"]
        torch.testing.assert_close(got, model(**inputs.kwargs).logits, atol=1e-5, rtol=1e-5)


def test_apply_on_a_factory_writes_a_graph(tmp_path):
    out = tmp_path / "child"
    plan = _plan(tmp_path, "target: {hidden_size: 32, num_layers: 2}\n")
    assert (
        main(["apply", "--model", "tests/zoo.py:nanogpt", "--plan", plan, "--out", str(out)]) == 0
    )
    graph = torch.load(out / "model.pt", weights_only=False)
    assert graph(torch.randint(0, zoo.VOCAB, (3, 5))).shape == (3, 5, zoo.VOCAB)
    full = _plan(tmp_path, "target: {}\n")  # every width kept, reordered by importance
    argv = ["apply", "--model", "tests/zoo.py:nanogpt", "--plan", full, "--out", str(out)]
    assert main([*argv, "--force"]) == 0
    graph = torch.load(out / "model.pt", weights_only=False)
    parent, _ = zoo.nanogpt()
    ids = torch.randint(0, zoo.VOCAB, (3, 5))
    with torch.no_grad():
        torch.testing.assert_close(graph(ids), parent(ids), atol=1e-5, rtol=1e-5)


def test_validate(parent, tmp_path, capsys):
    plan = _plan(tmp_path, GOOD)
    assert main(["validate", plan]) == 0
    assert main(["validate", plan, "--model", str(parent)]) == 0
    out = capsys.readouterr().out
    sizes = "num_layers 3, hidden_size 64 -> 32, intermediate_size 96 -> 48, num_heads 4 -> 2"
    assert f"valid for LlamaForCausalLM: child {sizes}, num_kv_heads 2 -> 1" in out
    model, _ = zoo.build("llama")  # the counts: the parent's, and the child's as built
    child = surgeon.apply(model, GOOD, example_inputs=zoo.build("llama")[1])
    old, new = (sum(p.numel() for p in m.parameters()) for m in (model, child))
    assert f"parameters {old:,} -> {new:,} ({new / old:.1%})" in out


def test_hugging_face_config_names_are_read_as_the_plans(parent, tmp_path, capsys):
    hf = _plan(tmp_path, "target: {num_hidden_layers: 2, num_attention_heads: 2}\n", "hf.yaml")
    own = _plan(tmp_path, "target: {num_layers: 2, num_heads: 2}\n", "own.yaml")
    for plan in (hf, own):
        assert main(["validate", plan, "--model", str(parent)]) == 0
    first, second = capsys.readouterr().out.splitlines()
    assert first.split(": ", 1)[1] == second.split(": ", 1)[1]


BAD_PLANS = [
    ("targets: {}\n", "unknown key 'targets' in the plan"),
    ("target: [1]\n", "target must be a mapping"),
    ("target: {hidden_size: -3}\n", "target.hidden_size must be a positive integer, got -3"),
    ("target: {hidden_size: 0}\n", "must be a positive integer, got 0"),
    ("target: {hidden_size: big}\n", "got 'big'"),
    ("target: {hidden_size: true}\n", "got True"),
    ("target: {parameters: 60M}\n", "got '60M' (write 60_000_000)"),
    ("target: {parameters: 1.5e6}\n", "got '1.5e6' (write 1_500_000)"),
    ("target: {parameters: 2.5B}\n", "got '2.5B' (write 2_500_000_000)"),
    ("target: {parameters: 16.1k}\n", "got '16.1k' (write 16_100)"),
    ("target: {parameters: '60_000_000'}\n", "(write 60_000_000 without quotes)"),
    ("target: {parameters: 1,000,000}\n", "a number is written without commas: 1_000_000"),
    ("target: {memory: {bytes: 500b}}\n", "bytes must be a positive integer, got '500b'"),
    ("target: {layers: 2}\n", "unknown target 'layers'"),
    ("target: {hidden_size: 65}\n", "wider than the parent (64)"),
    ("target: {num_heads: 3, num_kv_heads: 2}\n", "num_heads 2 or 4, or num_kv_heads 1 or 3"),
    ("target: {num_heads: 3}\n", "with 2 key/value heads, num_heads 2 or 4 (or set num_kv_heads)"),
    ("target: {hiden_size: 32}\n", "unknown target 'hiden_size' (did you mean hidden_size?)"),
    ("target: {num_attention_heads: 2, num_heads: 2}\n", "num_attention_heads and num_heads are"),
    ("importanc: weight\n", "unknown key 'importanc' in the plan (did you mean importance?)"),
    ("target: {hidden_size: 62}\n", "hidden size (62) is not a multiple of the number of"),
    ("target: {hidden_size: 62}\n", "sizes it accepts nearby: hidden_size 60 or 64"),
    ("target: {num_heads: 6, num_kv_heads: 1}\n", "needs 6 query heads per KV group"),
    ("target: {num_kv_heads: 3, num_heads: 3}\n", "wider than the parent (2)"),
    ("target: {head_dim: 8}\n", "rotary embeddings couple it"),
    ("target: {num_layers: 4}\n", "deeper than the parent (3)"),
    ("importance: magic\n", "importance 'magic' is not one of"),
    ("rescale: half\n", "rescale 'half' is not one of"),
    ("depth: random\n", "depth must be one of middle"),
    ("depth: [2, 0]\n", "layers keep the parent's order"),
    ("depth: [0, 7]\n", "depth lists layer 7; the parent has 3"),
    ("passes: [{prune: {}}]\n", "unknown pass 'prune' in passes[0]; valid passes: score"),
    ("passes: [{slice: {hidden_size: 32}}, {score: {}}]\n", "pass order impossible"),
    ("passes: [{score: {}}]\ntarget: {hidden_size: 32}\n", "use the short form or the long"),
    ("passes: [{score: {}, slice: {}}]\n", "must name exactly one pass"),
    ("target: [\n", "not valid YAML"),
    ("- 1\n- 2\n", "a plan is a mapping"),
    ("calibration: {foo: 1}\n", "unknown key 'foo' in calibration"),
    ("emit: onnx\n", "emit 'onnx' is not one of"),
    ("importance: activation\ncalibration: {seq_len: 0}\n", "calibration.seq_len must be"),
]


def _fails_cleanly(argv, message, capsys, tmp_path):
    before = set(tmp_path.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("surgeon:")]
    assert len(lines) == 1 and lines[0].startswith("surgeon: error: "), err
    assert "Traceback" not in err
    assert message in lines[0], lines[0]
    assert set(tmp_path.iterdir()) == before  # nothing written, nothing half-written


@pytest.mark.parametrize("text, message", BAD_PLANS)
def test_bad_plans(parent, tmp_path, capsys, text, message):
    plan = _plan(tmp_path, text)
    before_plan = (tmp_path / "plan.yaml").read_bytes()
    _fails_cleanly(
        ["apply", "--model", str(parent), "--plan", plan, "--out", str(tmp_path / "child")],
        message,
        capsys,
        tmp_path,
    )
    assert (tmp_path / "plan.yaml").read_bytes() == before_plan


def test_bad_arguments(parent, tmp_path, capsys):
    plan = _plan(tmp_path, GOOD)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 100)
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    child = str(tmp_path / "child")
    cases = [
        (
            ["--model", str(tmp_path / "nowhere"), "--plan", plan, "--out", child],
            "neither a folder nor 'module:factory'",
        ),
        (["--model", str(existing), "--plan", plan, "--out", child], "has no config.json"),
        (
            ["--model", str(parent), "--plan", str(tmp_path / "none.yaml"), "--out", child],
            "none.yaml does not exist",
        ),
        (
            [
                "--model",
                str(parent),
                "--plan",
                plan,
                "--out",
                child,
                "--calibration",
                str(tmp_path / "missing.txt"),
            ],
            "missing.txt does not exist",
        ),
        (
            ["--model", str(parent), "--plan", plan, "--out", child, "--calibration", str(binary)],
            "cannot read calibration file",
        ),
        (
            ["--model", str(parent), "--plan", plan, "--out", str(existing)],
            "already exists: choose another --out, or pass --force",
        ),
        (
            ["--model", str(parent), "--plan", plan, "--out", str(tmp_path / "no" / "child")],
            "does not exist",
        ),
        (
            [
                "--model",
                "tests/zoo.py:nanogpt",
                "--plan",
                _plan(tmp_path, "emit: hf\n", "e.yaml"),
                "--out",
                child,
            ],
            "emit: hf needs a Hugging Face parent",
        ),
        (
            [
                "--model",
                "tests/zoo.py:nanogpt",
                "--plan",
                _plan(tmp_path, "importance: activation\n", "a.yaml"),
                "--out",
                child,
            ],
            "needs the model's tokenizer",
        ),
        (
            [
                "--model",
                "tests/zoo.py:nanogpt",
                "--plan",
                _plan(tmp_path, "target: {num_layers: 2}\ndepth: influence\n", "i.yaml"),
                "--out",
                child,
            ],
            "needs the model's tokenizer",
        ),
        (
            ["--model", "tests.zoo:untraceable", "--plan", plan, "--out", child],
            "cannot trace _Untraceable",
        ),
    ]
    for argv, message in cases:
        _fails_cleanly(["apply", *argv], message, capsys, tmp_path)
    assert (existing / "keep.txt").read_text() == "mine"


def test_the_summary_and_record_say_what_was_kept(parent, tmp_path, capsys):
    """`apply` prints each size parent -> child and the kept layers; surgeon.json holds
    the kept positions, and they are the ones the child's weights were taken from: the
    child's tensors equal the parent's sliced by hand with those lists."""
    import json

    from safetensors.torch import load_file

    plan = GOOD + "num_layers: 2\nimportance: weight\nrescale: none\n"
    plan = plan.replace("target: {", "target: {num_layers: 2, ").replace("num_layers: 2\n", "")
    out = tmp_path / "out"
    assert (
        main(["apply", "--model", str(parent), "--plan", _plan(tmp_path, plan), "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "num_layers         3 -> 2" in printed and "hidden_size        64 -> 32" in printed
    record = json.loads((out / "surgeon.json").read_text())
    kept = record["kept"]
    assert f"layers kept       {kept['layers'][0]}" in printed
    old, new = load_file(parent / "model.safetensors"), load_file(out / "model.safetensors")
    hidden = torch.tensor(kept["hidden_size"])
    torch.testing.assert_close(
        new["model.embed_tokens.weight"], old["model.embed_tokens.weight"][:, hidden]
    )
    for j, i in enumerate(kept["layers"]):
        ffn = torch.tensor(kept["per_layer"][j]["intermediate_size"])
        heads = torch.tensor(kept["per_layer"][j]["num_heads"])
        rows = (heads[:, None] * 16 + torch.arange(16)).flatten()  # head_dim 16
        down = old[f"model.layers.{i}.mlp.down_proj.weight"][hidden][:, ffn]
        q = old[f"model.layers.{i}.self_attn.q_proj.weight"][rows][:, hidden]
        torch.testing.assert_close(new[f"model.layers.{j}.mlp.down_proj.weight"], down)
        torch.testing.assert_close(new[f"model.layers.{j}.self_attn.q_proj.weight"], q)
    assert len(kept["per_layer"][0]["num_kv_heads"]) == 1


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("surgeon 0.")
