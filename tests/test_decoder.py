"""ONNX deployment of a causal LM: `surgeon export` writes a decoder with a KV cache in
Optimum's layout, checked against PyTorch; `surgeon generate` and `OnnxDecoder` run it.
One export (the zoo Llama's shrunk child, one layer: export time grows with depth) is
shared by every test here; every zoo decoder and SmolLM2 are checked by
benchmarks/onnx_decoders.py."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from surgeon.api import subclone
from surgeon.cli import main
from surgeon.emit.decoder import check_decoder, greedy_reference
from surgeon.errors import InvariantError
from surgeon.generate import OnnxDecoder, generate
from tests import zoo
from tests.helpers import shrink_plan

pytestmark = pytest.mark.xdist_group("decoder")  # one worker exports the decoder once


@pytest.fixture(scope="module")
def exported(prepared, tmp_path_factory):
    """(folder with config, tokenizer, model.onnx and model.int8.onnx; the child; the
    export's printed report)."""
    folder = tmp_path_factory.mktemp("decoder") / "child"
    child = subclone(prepared("llama").parent, {**shrink_plan("llama"), "depth": [0]}).model
    child.save_pretrained(folder)
    zoo.save_letter_tokenizer(folder)
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", "--model", str(folder), "--int8"]) == 0
    return folder, child.eval(), printed.getvalue()


def test_export_writes_optimum_names_and_dynamic_axes(exported):
    folder, child, printed = exported
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    inputs = {i.name: dims(i) for i in model.graph.input}
    outputs = {o.name: dims(o) for o in model.graph.output}
    kv = child.config.num_key_value_heads
    head = child.config.hidden_size // child.config.num_attention_heads
    assert inputs == {
        "input_ids": ["batch_size", "sequence_length"],
        "attention_mask": ["batch_size", "total_sequence_length"],
        "position_ids": ["batch_size", "sequence_length"],
        "past_key_values.0.key": ["batch_size", kv, "past_sequence_length", head],
        "past_key_values.0.value": ["batch_size", kv, "past_sequence_length", head],
    }
    present = ["batch_size", kv, "past_sequence_length + sequence_length", head]
    assert outputs == {
        "logits": ["batch_size", "sequence_length", zoo.VOCAB],
        "present.0.key": present,
        "present.0.value": present,
    }
    assert "greedy generation token-identical to transformers' generate (128 tokens)" in printed
    assert not (folder / ".surgeon-export.partial").exists()


def test_batched_left_padded_generation_matches_transformers(exported):
    folder, child, _ = exported
    prompts = [[5, 9, 17, 3, 40, 41, 8], [77, 12]]  # the second is left-padded by 5
    got = OnnxDecoder(folder / "model.onnx").generate(prompts, 32)
    assert got == greedy_reference(child, prompts, 32)
    assert got[1] == greedy_reference(child, prompts[1:], 32)[0]  # padding changes nothing


def test_eos_stops_a_row_and_is_kept(exported):
    folder, child, _ = exported
    free = greedy_reference(child, [[5, 9, 17]], 12)[0]
    eos = free[4]
    got = OnnxDecoder(folder / "model.onnx").generate([[5, 9, 17]], 12, eos_token_id=eos)
    assert got == [free[: free.index(eos) + 1]]


def test_sampling_is_seeded_and_top_k_1_is_greedy(exported):
    folder, child, _ = exported
    decoder = OnnxDecoder(folder / "model.onnx")
    prompt = [[5, 9, 17, 3]]

    def sample(**kw):
        return decoder.generate(prompt, 16, do_sample=True, **kw)[0]

    assert sample(seed=1, temperature=5.0) == sample(seed=1, temperature=5.0)
    assert sample(seed=1, temperature=5.0) != sample(seed=2, temperature=5.0)
    assert sample(seed=3, top_k=1) == greedy_reference(child, prompt, 16)[0]
    assert sample(seed=4, top_p=1e-9) == greedy_reference(child, prompt, 16)[0]


def test_check_refuses_a_decoder_that_computes_something_else(exported):
    folder, child, _ = exported
    import copy

    other = copy.deepcopy(child)
    with torch.no_grad():
        other.model.norm.weight.mul_(1.01)
    with pytest.raises(InvariantError, match="logits differ from PyTorch by .* prefill"):
        check_decoder(other, folder / "model.onnx")


def test_cli_generate_greedy_matches_transformers(exported, capsys):
    folder, child, _ = exported
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("hello")["input_ids"]
    out = child.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False)
    new = out[0, len(ids) :].tolist()  # stops at the folder's eos, as generate must
    capsys.readouterr()
    argv = ["generate", "--onnx", str(folder), "--prompt", "hello", "--max-new-tokens", "10"]
    assert main(argv) == 0
    assert capsys.readouterr().out == tokenizer.decode(new, skip_special_tokens=True) + "\n"
    assert generate(folder, "hello", 10) == tokenizer.decode(new, skip_special_tokens=True)


def test_int8_is_smaller_and_close_to_the_float_child(exported):
    """The dynamic int8 copy: smaller, int8 weights, and its logits within 5% of the
    PyTorch child's scale (measured: 1.0%), the same greedy picks."""
    folder, child, _ = exported
    fp32 = sum(f.stat().st_size for f in folder.glob("model.onnx*"))
    int8 = (folder / "model.int8.onnx").stat().st_size
    assert int8 < fp32  # a tiny model: ONNX's own structure is most of either file
    quantized = onnx.load(str(folder / "model.int8.onnx")).graph.initializer
    weights = {t.name: t.data_type for t in quantized if len(t.dims) == 2}
    assert weights and set(weights.values()) <= {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    ids = np.array([[5, 9, 17, 3, 8, 20]])
    logits, present = OnnxDecoder(folder / "model.int8.onnx").step(ids, np.ones_like(ids))
    assert present[0].shape[2] == 6
    with torch.no_grad():
        want = child(torch.from_numpy(ids)).logits.numpy()
    assert np.abs(logits - want).max() < 0.05 * np.abs(want).max()
    assert (logits.argmax(-1) == want.argmax(-1)).all()


def test_cli_errors_are_one_line(exported, tmp_path, capsys):
    folder, _, _ = exported
    cases = [
        (["export", "--model", str(folder)], "model.onnx exists: pass --force"),
        (["generate", "--onnx", str(tmp_path), "--prompt", "a"], "model.onnx does not exist"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_a_model_without_a_kv_cache_is_refused_in_one_line(tmp_path):
    from surgeon.emit.decoder import export_decoder
    from surgeon.errors import SurgeonError

    model, _ = zoo.build("bert")
    with pytest.raises(SurgeonError, match="BertForMaskedLM.forward takes no KV cache"):
        export_decoder(model, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_onnxruntime_genai_runs_the_folder_as_written(exported):
    """The export writes genai_config.json: onnxruntime-genai loads the folder as it is,
    and its greedy tokens are transformers' own for three prompts, computed here."""
    import json

    import onnxruntime_genai as og

    folder, child, printed = exported
    config = json.loads((folder / "genai_config.json").read_text())
    assert config["model"]["decoder"]["num_key_value_heads"] == child.config.num_key_value_heads
    assert "onnxruntime-genai" in printed
    from transformers import AutoTokenizer

    runtime = og.Model(str(folder))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    for text in ("the quick brown", "zz", "hello world"):  # no "a": the pad token's id
        prompt = tokenizer(text)["input_ids"]
        params = og.GeneratorParams(runtime)
        params.set_search_options(max_length=len(prompt) + 16, do_sample=False)
        generator = og.Generator(runtime, params)
        generator.append_tokens(prompt)
        got = []
        while not generator.is_done():
            generator.generate_next_token()
            got.append(int(generator.get_next_tokens()[0]))
        want = greedy_reference(child, [prompt], 16)[0]
        assert got == want[: len(got)] and (len(got) == 16 or got[-1] == child.config.eos_token_id)


def _llama_greedy(runtime, prompt: list[int], new_tokens: int) -> list[int]:
    """llama.cpp's own greedy sampler, `new_tokens` tokens after `prompt`."""
    got = []
    for token in runtime.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
        got.append(int(token))
        if len(got) == new_tokens:
            return got
    return got


def test_llama_cpp_runs_the_gguf_as_transformers_does(exported, capsys):
    """`surgeon export --gguf` converts the folder with llama.cpp's own converter: llama.cpp
    loads the file, and its greedy tokens are transformers' own, computed here, for three
    prompts (f32: no near-tie can excuse a difference)."""
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    folder, child, _ = exported
    assert main(["export", "--model", str(folder), "--gguf", "--gguf-type", "f32"]) == 0
    assert "llama.cpp: greedy generation token-identical" in capsys.readouterr().out
    assert not (folder / ".surgeon-gguf.partial").exists()
    runtime = Llama(model_path=str(folder / "model.f32.gguf"), n_ctx=64, verbose=False)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    for text in ("the quick brown", "zz", "hello world"):
        prompt = tokenizer(text)["input_ids"]
        assert _llama_greedy(runtime, prompt, 16) == greedy_reference(child, [prompt], 16)[0]


def test_a_gguf_without_a_tokenizer_is_refused_in_one_line(exported, tmp_path, capsys):
    folder, child, _ = exported
    child.save_pretrained(tmp_path)  # no tokenizer
    assert main(["export", "--model", str(tmp_path), "--gguf"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if line.startswith("surgeon:")] == [
        f"surgeon: error: {tmp_path} has no tokenizer: llama.cpp's GGUF carries one"
    ]
    assert not list(tmp_path.glob("*.gguf")) and not (tmp_path / ".surgeon-gguf.partial").exists()


def test_apply_gguf_writes_a_checked_gguf_beside_the_child(exported, tmp_path, capsys):
    """`surgeon apply --gguf` on a folder: the child folder gets the GGUF, which llama.cpp
    runs as transformers runs the child folder (greedy tokens computed here)."""
    from llama_cpp import Llama

    parent, _, _ = exported
    plan = tmp_path / "plan.yaml"
    plan.write_text("target: {hidden_size: 16, intermediate_size: 24}\n")
    out = tmp_path / "child"
    args = ["apply", "--model", str(parent), "--plan", str(plan), "--out", str(out)]
    assert main([*args, "--gguf", "--gguf-type", "f32"]) == 0
    assert "llama.cpp: greedy generation token-identical" in capsys.readouterr().out
    from transformers import AutoModelForCausalLM

    child = AutoModelForCausalLM.from_pretrained(out).eval()
    assert child.config.hidden_size == 16
    runtime = Llama(model_path=str(out / "model.f32.gguf"), n_ctx=32, verbose=False)
    prompt = [7, 4, 11, 11, 14]  # "hello"
    assert _llama_greedy(runtime, prompt, 8) == greedy_reference(child, [prompt], 8)[0]


def test_generate_runs_a_gguf_greedily_as_transformers_does(exported, capsys):
    """`surgeon generate --gguf` tokenizes with the file's own tokenizer (llama.cpp's), and
    writes the text of transformers' greedy tokens for those ids."""
    from llama_cpp import Llama

    folder, child, _ = exported
    if not (folder / "model.f32.gguf").exists():
        assert main(["export", "--model", str(folder), "--gguf", "--gguf-type", "f32"]) == 0
    capsys.readouterr()
    path = str(folder / "model.f32.gguf")
    assert main(["generate", "--gguf", path, "--prompt", "hello", "--max-new-tokens", "8"]) == 0
    runtime = Llama(model_path=path, n_ctx=32, verbose=False)
    ids = runtime.tokenize(b"hello", add_bos=True, special=False)
    want = greedy_reference(child, [ids], 8)[0]
    eos = child.config.eos_token_id
    want = want[: want.index(eos)] if eos in want else want
    text = runtime.detokenize(want).decode("utf-8", errors="replace")
    assert capsys.readouterr().out == text + "\n"


def test_the_converter_reads_the_config_fields_it_knows_by_their_old_names(tmp_path):
    """transformers 5 writes GPT-2's context length as `n_positions` only; llama.cpp's
    converter reads `n_ctx`: it is given a folder of links whose config has both, and the
    user's folder is left as it was."""
    import json

    from surgeon.emit.gguf import _with_legacy_fields

    folder, staging = tmp_path / "child", tmp_path / "staging"
    folder.mkdir(), staging.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": 64}))
    (folder / "model.safetensors").write_bytes(b"weights")
    seen = _with_legacy_fields(folder, staging)
    assert json.loads((seen / "config.json").read_text())["n_ctx"] == 64
    assert (seen / "model.safetensors").read_bytes() == b"weights"
    assert json.loads((folder / "config.json").read_text()) == {
        "model_type": "gpt2",
        "n_positions": 64,
    }
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert _with_legacy_fields(folder, staging) == folder  # nothing to add: the folder itself


def test_a_gguf_check_lets_a_near_tie_pass_and_stops_at_anything_else(exported, monkeypatch):
    """The check's tolerance, against transformers' own logits computed here: a token
    llama.cpp picks that transformers scores within NEAR_TIE of its top (relative to the
    largest logit) ends the comparison of that prompt; one further away is an error."""
    import surgeon.emit.gguf as gguf

    _, child, _ = exported
    prompt, at = [7, 4, 11, 11, 14], 3
    want = greedy_reference(child, [prompt], 8)[0]
    with torch.no_grad():
        logits = child(torch.tensor([prompt + want[:at]])).logits[0, -1]
    other = int(logits.argsort(descending=True)[1])  # transformers' runner-up
    gap = float(logits.max() - logits[other]) / float(logits.abs().max())
    got = [*want[:at], other, *want[at + 1 :]]
    monkeypatch.setattr(gguf, "load_llama", lambda *args, **kwargs: None)
    monkeypatch.setattr(gguf, "llama_greedy", lambda *args: got)
    monkeypatch.setattr(gguf, "NEAR_TIE", 2 * gap)
    result = gguf.check_gguf(child, Path("x.gguf"), "f16", [prompt], 8)
    assert result == {"gguf_tokens_compared": at, "gguf_near_ties": 1}
    monkeypatch.setattr(gguf, "NEAR_TIE", gap / 2)
    with pytest.raises(InvariantError, match=f"at new token {at} of prompt 0 \\(no near-tie"):
        gguf.check_gguf(child, Path("x.gguf"), "f16", [prompt], 8)


def test_the_latency_clock_times_a_cached_step_of_the_decoder(exported):
    """A latency budget's clock (surgeon/latency.py) on the exported decoder: a cached
    step after a prefill, fed the present the prefill returned, runs and takes a
    positive time (its value is the machine's: benchmarks measure, tests do not)."""
    from surgeon.latency import decoder_ms_per_token

    folder, child, _ = exported
    path, vocab = folder / "model.onnx", child.config.vocab_size
    assert 0 < decoder_ms_per_token(path, vocab, {"context": 4, "batch": 2}, threads=1) < 1000
