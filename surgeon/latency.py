"""A latency budget (`target: {latency: {ms_per_token: T}}`): the largest child whose
ONNX decoder generates a token in at most T ms in onnxruntime on this machine.

Latency is measured, not modelled: a candidate child is the parameter budget's child
(`surgeon.budget.solve` with `parameters: P`), built from its fitted config as its
Hugging Face class with random weights (time does not depend on their values), exported
as the decoder with a KV cache that `surgeon export` writes, and timed: after a prefill
of `context` tokens for `batch` sequences, the median of `STEPS` cached one-token steps
(`WARMUP` before them not counted). P is searched by bisection on a log scale between the
smallest child the plan allows and the parent (`PROBES` children measured besides the
smallest), on the assumption that time grows with parameters; every probe is recorded.
Timings vary with the machine's load: the record says what each probe measured."""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import PlanError

if TYPE_CHECKING:
    from .pipeline import Parent, Surgery

__all__ = ["decoder_ms_per_token", "ms_per_token", "solve_latency"]

PROBES = 5  # children measured in the bisection, besides the smallest
STEPS, WARMUP = 16, 4
CONTEXT, BATCH = 128, 1


def solve_latency(parent: Parent, surgery: Surgery, measure=None, calibration=None) -> Surgery:
    """The surgery with its latency budget turned into sizes (`Surgery.budget` records the
    budget, the child's measured time and parameters, and every probe); `PlanError` where
    even the smallest child is slower. `measure(config) -> ms` replaces the timing (tests);
    `calibration`: the batches of the parameter budgets' solver (`solve`)."""
    from .budget import Limit, _smallest, solve
    from .emit.decoder import is_causal_lm
    from .pipeline import check

    plan = surgery.plan
    spec = {"context": CONTEXT, "batch": BATCH, **plan.budget["latency"]}
    if not is_causal_lm(parent.model):
        raise PlanError(
            f"target.latency is measured on a causal language model's ONNX decoder; "
            f"{type(parent.model).__name__} is not one: state target.parameters or memory"
        )
    measure = measure or (lambda config: ms_per_token(_child(parent, config), spec))
    whole = sum(p.numel() for p in parent.model.parameters())
    probes: list[dict] = []

    def probe(count: int) -> tuple[float, Surgery]:
        asked = replace(surgery, plan=replace(plan, budget={"parameters": count}))
        solved = solve(parent, asked, calibration)
        ms = measure(check(parent, solved).config)
        probes.append({"parameters": solved.budget["child_parameters"], "ms_per_token": ms})
        return ms, solved

    low = _smallest(parent, plan, Limit("parameters", whole))
    ms, best = probe(low)
    if ms > spec["ms_per_token"]:
        raise PlanError(
            f"target.latency = {spec['ms_per_token']:g} ms per token: the smallest child this "
            f"plan allows ({low:,} parameters) takes {ms:.3g} ms here (after "
            f"{spec['context']} tokens x {spec['batch']}): ask for more, or fix fewer sizes"
        )
    best_ms, lo, hi = ms, math.log(low), math.log(whole - 1)
    for _ in range(PROBES):
        mid = (lo + hi) / 2
        try:
            ms, solved = probe(round(math.exp(mid)))
        except PlanError:  # no child of that count: look lower
            hi = mid
            continue
        if ms <= spec["ms_per_token"]:
            lo, best, best_ms = mid, solved, ms
        else:
            hi = mid
    record = {
        "latency": plan.budget["latency"],
        "child_parameters": best.budget["child_parameters"],
        "child_ms_per_token": best_ms,
        "share": best_ms / spec["ms_per_token"],
        "probes": probes,
        "chosen_by": best.budget.get("chosen_by"),
    }
    return replace(best, budget=record)


def _child(parent: Parent, config: Any) -> torch.nn.Module:
    """The child's class from its config, float32, random weights, on the CPU."""
    with torch.device("cpu"):
        model = type(parent.model)(config)
    return model.float().eval()


def ms_per_token(model: torch.nn.Module, spec: dict, threads: int | None = None) -> float:
    """Median ms of one cached decode step of `model`'s ONNX decoder in onnxruntime, after
    a prefill of `spec["context"]` tokens for `spec["batch"]` sequences."""
    from .emit.decoder import export_decoder
    from .emit.onnx import onnx_ready

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        export_decoder(onnx_ready(model), path)
        return decoder_ms_per_token(path, model.config.vocab_size, spec, threads)


def decoder_ms_per_token(path: Path, vocab: int, spec: dict, threads: int | None = None) -> float:
    """`ms_per_token` of the ONNX decoder at `path` (as `surgeon export` writes it)."""
    from .generate import OnnxDecoder

    batch, context = spec.get("batch", BATCH), spec.get("context", CONTEXT)
    decoder = OnnxDecoder(path, threads)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, (batch, context))
    mask = np.ones((batch, context), np.int64)
    logits, past = decoder.step(ids, mask)
    times = []
    for _ in range(WARMUP + STEPS):
        token = logits[:, -1:].argmax(-1)
        mask = np.ones((batch, mask.shape[1] + 1), np.int64)
        start = time.perf_counter()
        logits, past = decoder.step(token, mask, past)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[WARMUP:])
