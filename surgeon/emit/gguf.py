"""llama.cpp's GGUF from a causal LM's Hugging Face folder, written by llama.cpp's own
converter and checked in llama.cpp itself (llama-cpp-python): its greedy tokens against
transformers' `generate`.

The converter (`convert_hf_to_gguf.py` with its `conversion` and `gguf-py` packages) is
not in llama-cpp-python's wheel: `python -m surgeon.emit.gguf` copies it out of the
source distribution of the installed llama-cpp-python, the same llama.cpp that runs the
file, into `<environment>/share/surgeon/llama.cpp` (or `$SURGEON_LLAMA_CPP`).

The check, for f32, f16 and bf16: llama.cpp's greedy tokens after each prompt are
transformers' own, except at a near-tie: where transformers' logit for the token
llama.cpp chose is within `NEAR_TIE` of its top logit (relative to the largest logit
magnitude), the runs part ways legitimately and the rest of that prompt is not compared.
A quantized file (q8_0) changes the function by design: its share of positions where
llama.cpp's next token is transformers' own, fed transformers' tokens, is reported."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..errors import InvariantError, ModelLoadError, SurgeonError

__all__ = [
    "TYPES",
    "check_gguf",
    "converter",
    "emit_gguf",
    "gguf_name",
    "install_converter",
    "llama_greedy",
    "load_llama",
    "next_token_agreement",
    "write_gguf",
]

TYPES = ("f16", "f32", "bf16", "q8_0")
EXACT = ("f16", "f32", "bf16")
NEAR_TIE = 1e-2
_FILES = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def gguf_name(outtype: str) -> str:
    """`model.gguf` for f16 (the default), `model.<type>.gguf` for the others."""
    return "model.gguf" if outtype == "f16" else f"model.{outtype}.gguf"


def _home() -> Path:
    default = Path(sys.prefix) / "share" / "surgeon" / "llama.cpp"
    return Path(os.environ.get("SURGEON_LLAMA_CPP", default))


def converter() -> Path:
    """llama.cpp's `convert_hf_to_gguf.py`, or `SurgeonError` saying how to get it."""
    script = _home() / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise SurgeonError(
            f"llama.cpp's converter is not at {script}: install it with "
            f"`pip install llama-cpp-python sentencepiece && python -m surgeon.emit.gguf`"
        )
    return script


def install_converter() -> Path:
    """Copy the converter out of the source distribution of the installed llama-cpp-python
    (downloaded by pip from the package index, or taken from pip's cache)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        wanted = f"llama-cpp-python=={version('llama-cpp-python')}"
    except PackageNotFoundError:
        raise SurgeonError(
            "llama-cpp-python is not installed: `pip install llama-cpp-python`"
        ) from None
    home = _home()
    with tempfile.TemporaryDirectory() as tmp:
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
        pip += ["--no-binary", ":all:", wanted, "-d", tmp]
        if subprocess.run(pip, capture_output=True, text=True).returncode:
            raise SurgeonError(f"pip could not download the source of {wanted}")
        (archive,) = Path(tmp).glob("*.tar.gz")
        with tarfile.open(archive) as tar:
            vendor = re.compile(r"^[^/]+/vendor/llama\.cpp/")
            members = []
            for member in tar.getmembers():
                inside = vendor.sub("", member.name)
                if inside != member.name and inside.startswith(_FILES):
                    member.name = inside
                    members.append(member)
            staging = home.with_name(home.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            tar.extractall(staging, members=members, filter="data")
    shutil.rmtree(home, ignore_errors=True)
    staging.replace(home)
    return home / "convert_hf_to_gguf.py"


# Config fields transformers 5 no longer writes and llama.cpp's converter (made for
# transformers 4, it reads the config through transformers' AutoConfig) still reads:
# old name -> where the value is now. (GPT-NeoX's `rotary_pct` cannot be given back this
# way: transformers 5's config class takes it in and drops the name.)
LEGACY_FIELDS = {"n_ctx": ("n_positions",)}


def write_gguf(folder: Path, out: Path, outtype: str = "f16") -> None:
    """Convert the Hugging Face folder into `out` with llama.cpp's converter; a refusal
    (an architecture or tokenizer it does not know) is one line. Where the config lacks
    a field the converter reads under its transformers-4 name (`LEGACY_FIELDS`), the
    converter reads a copy of the folder (links to its files) whose config has it too."""
    if outtype not in TYPES:
        raise SurgeonError(f"GGUF type {outtype!r} is not one of {', '.join(TYPES)}")
    script = converter()
    with tempfile.TemporaryDirectory() as tmp:
        source = _with_legacy_fields(folder, Path(tmp))
        run = subprocess.run(
            [sys.executable, str(script), str(source), "--outfile", str(out)]
            + ["--outtype", outtype],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
    if run.returncode or not out.is_file():
        reason = _reason(run.stderr).replace(str(source), str(folder))
        raise SurgeonError(f"llama.cpp's converter refused {folder}: {reason}")


def _with_legacy_fields(folder: Path, tmp: Path) -> Path:
    """`folder`, or a folder in `tmp` of links to its files whose config.json also holds
    the `LEGACY_FIELDS` it lacks."""
    config = json.loads((folder / "config.json").read_text())
    added = {}
    for old, path in LEGACY_FIELDS.items():
        value = config
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if old not in config and value is not None:
            added[old] = value
    if not added:
        return folder
    for file in folder.iterdir():
        if file.is_file() and file.name != "config.json":
            (tmp / file.name).symlink_to(file.resolve())
    (tmp / "config.json").write_text(json.dumps({**config, **added}, indent=2))
    return tmp


def emit_gguf(model: nn.Module, folder: Path, tokenizer, outtype: str = "f16") -> dict:
    """Write `folder`/`gguf_name(outtype)` for the causal LM `model` saved in `folder`,
    checked in llama.cpp (`check_gguf` on the export check's prompts) before it is moved
    into the folder; returns the check's figures and `gguf` (the file's name)."""
    from .decoder import CHECK_PROMPTS, NEW_TOKENS, is_causal_lm

    if not is_causal_lm(model):
        raise SurgeonError(f"{type(model).__name__} is no causal LM: llama.cpp runs decoders")
    if tokenizer is None:
        raise ModelLoadError(f"{folder} has no tokenizer: llama.cpp's GGUF carries one")
    staging = folder / ".surgeon-gguf.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        path = staging / gguf_name(outtype)
        write_gguf(folder, path, outtype)
        prompts = [tokenizer(p)["input_ids"] for p in CHECK_PROMPTS]
        result = check_gguf(model, path, outtype, prompts, NEW_TOKENS)
        path.replace(folder / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"gguf": path.name, "gguf_type": outtype, **result}


def _reason(stderr: str) -> str:
    """The converter's own words: its error line, or the exception its traceback ends in."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("ERROR:"):
            return line.split(":", 2)[-1].strip()
    return lines[-1][:300] if lines else "it stopped without saying why"


def load_llama(path: Path, context: int, logits_all: bool = False):
    """llama.cpp's model; where it refuses the file, its own reason (from its log, which
    goes to the process's standard error and is caught in a file here)."""
    try:
        from llama_cpp import Llama
    except ImportError:
        raise SurgeonError(
            "llama-cpp-python is not installed: `pip install llama-cpp-python`"
        ) from None
    with tempfile.TemporaryFile(mode="w+") as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            runtime = Llama(
                model_path=str(path), n_ctx=context, verbose=True, logits_all=logits_all, seed=0
            )
            from llama_cpp._logger import set_verbose

            set_verbose(False)  # from here on, llama.cpp's errors only
            runtime.verbose = False
            return runtime
        except ValueError:
            os.dup2(saved, 2)
            log.seek(0)
            said = re.findall(r"error loading model: (.+)", log.read())
            reason = said[0].strip() if said else "it gives no reason"
            raise ModelLoadError(f"llama.cpp cannot load {path.name}: {reason}") from None
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def llama_greedy(path: Path, prompt: list[int], new_tokens: int, runtime=None) -> list[int]:
    """`new_tokens` greedy tokens of llama.cpp after `prompt` (token ids), never stopping
    at an end-of-sequence token."""
    runtime = runtime or load_llama(path, len(prompt) + new_tokens)
    got: list[int] = []
    for token in runtime.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
        got.append(int(token))
        if len(got) == new_tokens:
            break
    return got


def check_gguf(
    model: nn.Module, path: Path, outtype: str, prompts: list[list[int]], new_tokens: int
) -> dict:
    """Greedy generation in llama.cpp against transformers (see the module's docstring);
    `InvariantError` naming the first difference that is no near-tie."""
    from .decoder import greedy_reference

    wants = greedy_reference(model, prompts, new_tokens)
    context = max(len(p) for p in prompts) + new_tokens
    if outtype not in EXACT:
        return {"gguf_next_token_agreement": next_token_agreement(path, prompts, wants, context)}
    runtime = load_llama(path, context)
    compared, ties = 0, 0
    for i, (prompt, want) in enumerate(zip(prompts, wants, strict=True)):
        got = llama_greedy(path, prompt, new_tokens, runtime)
        at = next((j for j, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
        if at is None and len(got) == len(want):
            compared += len(want)
            continue
        if at is None:  # llama.cpp stopped early
            raise InvariantError(
                f"llama.cpp ({outtype}) gave {len(got)} of {len(want)} tokens for prompt {i}"
            )
        with torch.no_grad():
            logits = model(torch.tensor([prompt + want[:at]])).logits[0, -1].float()
        gap = float(logits.max() - logits[got[at]]) / float(logits.abs().max())
        if gap > NEAR_TIE:
            raise InvariantError(
                f"greedy generation in llama.cpp ({outtype}) differs from transformers' "
                f"generate at new token {at} of prompt {i} (no near-tie: {gap:.1e} of the "
                f"logit scale apart)"
            )
        compared, ties = compared + at, ties + 1
    return {"gguf_tokens_compared": compared, "gguf_near_ties": ties}


def next_token_agreement(path: Path, prompts, wants, context: int) -> float:
    """The share of positions where llama.cpp, fed transformers' greedy tokens, picks
    transformers' next token."""
    import numpy as np

    runtime = load_llama(path, context, logits_all=True)
    agree = total = 0
    for prompt, want in zip(prompts, wants, strict=True):
        runtime.reset()
        runtime.eval(prompt + want[:-1])
        scores = np.asarray(runtime.scores[: runtime.n_tokens])
        picks = scores[len(prompt) - 1 :].argmax(-1)
        agree += int((picks == np.asarray(want)).sum())
        total += len(want)
    return agree / total


if __name__ == "__main__":
    print(f"llama.cpp's converter: {install_converter()}")
