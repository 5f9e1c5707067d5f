"""Generate text with onnxruntime from a decoder that `surgeon apply --onnx` or
`surgeon export` wrote (see `surgeon.emit.decoder` for its inputs and outputs), or with
llama.cpp from the GGUF that `surgeon export --gguf` wrote (`generate_gguf`).

`generate(folder, prompt)` reads the tokenizer and the end-of-sequence token from the
folder; `OnnxDecoder` is the loop on token ids, batched with left padding, greedy or
sampled (temperature, top-k, top-p)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import ModelLoadError, SurgeonError, first_line

__all__ = ["OnnxDecoder", "generate", "generate_gguf"]


class OnnxDecoder:
    """An onnxruntime session on a decoder with a KV cache. The cache's per-layer shapes
    are read from the file's own inputs."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # noqa: BLE001 - onnxruntime's own error types
            raise ModelLoadError(f"cannot load {path}: {first_line(e)}") from e
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = [n for n in inputs if n.startswith("past_key_values.")]
        if "input_ids" not in inputs or not self.past_names:
            raise ModelLoadError(
                f"{path} is not a decoder with a KV cache (no input_ids / past_key_values "
                "inputs): export it with `surgeon export` from a causal language model"
            )
        self.takes_positions = "position_ids" in inputs
        # (kv_heads, head_dim) of each past input, fixed in the file
        self.past_shapes = [tuple(inputs[n].shape[i] for i in (1, 3)) for n in self.past_names]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, past=None):
        """One forward pass: `input_ids` (B, T) new tokens, `attention_mask` (B, P + T)
        over past and new, `past` the previous step's present (None: a prefill).
        Returns (logits (B, T, V), present)."""
        batch, new = input_ids.shape
        if past is None:
            past = [np.zeros((batch, h, 0, d), np.float32) for h, d in self.past_shapes]
        feed = {
            "input_ids": input_ids.astype(np.int64),
            "attention_mask": attention_mask.astype(np.int64),
        }
        if self.takes_positions:
            positions = np.clip(attention_mask.cumsum(-1) - 1, 0, None)[:, -new:]
            feed["position_ids"] = positions.astype(np.int64)
        feed.update(zip(self.past_names, past, strict=True))
        out = self.session.run(self.output_names, feed)
        return out[0], out[1:]

    def generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int = 32,
        *,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int = 0,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> list[list[int]]:
        """The new tokens of each prompt (a list of token ids), stopping at
        `max_new_tokens` or at an end-of-sequence token (kept in the output)."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise SurgeonError("generate needs at least one prompt of at least one token")
        eos = set([] if eos_token_id is None else np.atleast_1d(eos_token_id).tolist())
        rng = np.random.default_rng(seed)
        width = max(len(p) for p in prompts)
        ids = np.full((len(prompts), width), pad_token_id, np.int64)
        mask = np.zeros((len(prompts), width), np.int64)
        for row, prompt in enumerate(prompts):  # left padding: every row ends at its last token
            ids[row, width - len(prompt) :] = prompt
            mask[row, width - len(prompt) :] = 1
        out: list[list[int]] = [[] for _ in prompts]
        done = np.zeros(len(prompts), bool)
        past = None
        for _ in range(max_new_tokens):
            logits, past = self.step(ids, mask, past)
            scores = logits[:, -1].astype(np.float64)
            if do_sample:
                nxt = _sample(scores, temperature, top_k, top_p, rng)
            else:
                nxt = scores.argmax(-1)
            nxt = np.where(done, pad_token_id, nxt)
            for row, token in enumerate(nxt.tolist()):
                if not done[row]:
                    out[row].append(token)
                    done[row] = token in eos
            if done.all():
                break
            ids = nxt[:, None].astype(np.int64)
            mask = np.concatenate([mask, np.ones_like(ids)], 1)
        return out


def _sample(scores, temperature: float, top_k: int, top_p: float, rng) -> np.ndarray:
    """One token per row from softmax(scores / temperature), cut to the `top_k` best and
    to the smallest set holding `top_p` of the probability."""
    scores = scores / max(temperature, 1e-6)
    if top_k and top_k < scores.shape[-1]:
        kth = np.sort(scores, -1)[:, -top_k][:, None]
        scores = np.where(scores < kth, -np.inf, scores)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if top_p < 1.0:
        order = np.argsort(-probs, -1)
        ranked = np.take_along_axis(probs, order, -1)
        keep = ranked.cumsum(-1) - ranked < top_p  # the best token is always kept
        ranked = np.where(keep, ranked, 0.0)
        probs = np.zeros_like(probs)
        np.put_along_axis(probs, order, ranked, -1)
        probs /= probs.sum(-1, keepdims=True)
    return np.array([rng.choice(len(p), p=p) for p in probs])


def generate(
    folder: str | Path,
    prompt: str,
    max_new_tokens: int = 32,
    *,
    int8: bool = False,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
) -> str:
    """The text that the ONNX decoder in `folder` (`model.onnx`, or `model.int8.onnx`
    with `int8`) writes after `prompt`, tokenized with the folder's tokenizer."""
    folder = Path(folder)
    path = folder / ("model.int8.onnx" if int8 else "model.onnx")
    if not path.is_file():
        raise ModelLoadError(
            f"{path} does not exist: write it with `surgeon export --model {folder}`"
            + (" --int8" if int8 else "")
        )
    from .frontends.load import load_tokenizer

    tokenizer = load_tokenizer(str(folder))
    if tokenizer is None:
        raise ModelLoadError(f"{folder} has no tokenizer: generate needs one to read the prompt")
    ids = tokenizer(prompt)["input_ids"]
    if not ids:
        raise SurgeonError("the prompt is empty after tokenization")
    eos, pad = _special_tokens(folder, tokenizer)
    new = OnnxDecoder(path).generate(
        [ids],
        max_new_tokens,
        eos_token_id=eos,
        pad_token_id=pad,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
    )[0]
    return tokenizer.decode(new, skip_special_tokens=True)


def _special_tokens(folder: Path, tokenizer) -> tuple[list[int] | int | None, int]:
    """End-of-sequence token(s) from generation_config.json (else config.json, else the
    tokenizer), and a padding token."""
    eos = None
    for name in ("generation_config.json", "config.json"):
        file = folder / name
        if eos is None and file.is_file():
            eos = json.loads(file.read_text()).get("eos_token_id")
    if eos is None:
        eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    return eos, pad if pad is not None else 0


def generate_gguf(
    path: str | Path,
    prompt: str,
    max_new_tokens: int = 32,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
) -> str:
    """The text that llama.cpp writes after `prompt` from the GGUF at `path` (a file, or a
    folder with `model.gguf`), tokenized by llama.cpp with the tokenizer the file carries;
    stops at its end-of-sequence token."""
    from .emit.gguf import load_llama

    path = Path(path)
    if path.is_dir():
        path = path / "model.gguf"
    if not path.is_file():
        raise ModelLoadError(
            f"{path} does not exist: write it with `surgeon export --model FOLDER --gguf`"
        )
    runtime = load_llama(path, 512)  # a small cache, not the trained context's (128k)
    ids = runtime.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
    if not ids:
        raise SurgeonError("the prompt is empty after tokenization")
    if len(ids) + max_new_tokens > runtime.n_ctx():
        runtime = load_llama(path, len(ids) + max_new_tokens)
    runtime.set_seed(seed)
    sampling = (
        dict(temp=temperature, top_k=top_k, top_p=top_p) if do_sample else dict(temp=0.0, top_k=1)
    )
    new: list[int] = []
    for token in runtime.generate(ids, repeat_penalty=1.0, reset=True, **sampling):
        if token == runtime.token_eos() or len(new) == max_new_tokens:
            break
        new.append(int(token))
    return runtime.detokenize(new).decode("utf-8", errors="replace")
