"""Why parent-derived inits wanted a strong weight decay: the child's scale against the
parent's, and rescale variants compared before any training.

For each child size of `benchmarks/convergence.py` (its splits, calibration and sizes),
surgeon's init is built with `rescale: none` and `rescale: paper`, and two variants are
made from the `none` child by hand (not surgeon options; candidates):
- `normE`: every RMSNorm weight that reads the residual stream times sqrt(E d / d'), where
  E is the kept residual dimensions' share of the energy (sum of squares over the
  calibration tokens) of that norm's input in the parent, d / d' the width ratio: the
  normalised values on the kept dimensions then have the parent's scale on average;
- `normE+fanE`: also each output projection (`o_proj`, `down_proj`) times sqrt(1 / E'),
  E' its kept inputs' share of its input energy in the parent.
Reported: held-out loss on the validation split (no training), and E of the final norm.

    .venv/bin/python benchmarks/init_scale.py [--sizes extreme,demo,paper] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import convergence as C  # noqa: E402

OUT = Path("benchmarks/results/init_scale.json")


def loss(model, windows) -> float:
    with torch.no_grad():
        losses = [model(input_ids=b, labels=b).loss.item() for b in windows.split(8)]
    return sum(losses) / len(losses)


def energies(parent, modules: dict, batches) -> dict:
    """Per module: the sum over calibration tokens of its input squared, per feature."""
    acc = {}

    def hook(name):
        def record(module, args):
            x = args[0].detach().pow(2).flatten(0, -2).sum(0)
            acc[name] = acc.get(name, 0) + x

        return record

    hooks = [m.register_forward_pre_hook(hook(n)) for n, m in modules.items()]
    with torch.no_grad():
        for b in batches:
            parent(input_ids=b)
    for h in hooks:
        h.remove()
    return acc


def variants(parent, split, size: str) -> dict:
    from surgeon.api import subclone

    target = dict(zip(C.TARGET_KEYS, C.SIZES[size], strict=True))
    cal = [
        {"input_ids": w, "attention_mask": torch.ones_like(w)}
        for w in split["calibration"].split(4)
    ]
    val = split["validation"]
    out = {}
    for rescale in ("none", "paper"):
        plan = {"target": target, "recipe": "surgeon", "rescale": rescale}
        child = subclone(parent, plan, calibration=cal)
        out[rescale] = loss(child.model, val)
        if rescale == "none":
            base = child
        print(size, rescale, round(out[rescale], 3), flush=True)
    state, a = base.state, base.state.analysis
    keep = state.positions(a.stream_of(None))
    ratio = a.hidden_size / len(keep)
    P = parent.model
    modules = {"norm": P.norm}
    for p in state.kept_layers():
        layer = P.layers[p]
        modules |= {f"{p}.in": layer.input_layernorm, f"{p}.post": layer.post_attention_layernorm}
        modules |= {f"{p}.down": layer.mlp.down_proj, f"{p}.o": layer.self_attn.o_proj}
    energy = energies(parent, modules, split["calibration"][:8].split(4))

    def share(name, index):
        return (energy[name][index].sum() / energy[name].sum()).item()

    def kept_inputs(name):
        return state.positions(a.dims.tensors[name][a.dims.fan_in[name]])

    for variant in ("normE", "normE+fanE"):
        m = copy.deepcopy(base.model)
        with torch.no_grad():
            m.model.norm.weight.mul_((share("norm", keep) * ratio) ** 0.5)
            for i, p in enumerate(state.kept_layers()):
                layer = m.model.layers[i]
                for k, norm in (
                    ("in", layer.input_layernorm),
                    ("post", layer.post_attention_layernorm),
                ):
                    norm.weight.mul_((share(f"{p}.{k}", keep) * ratio) ** 0.5)
                if variant == "normE+fanE":
                    for k, lin, part in (
                        ("down", layer.mlp.down_proj, "mlp.down_proj"),
                        ("o", layer.self_attn.o_proj, "self_attn.o_proj"),
                    ):
                        index = kept_inputs(f"model.layers.{p}.{part}.weight")
                        lin.weight.mul_(share(f"{p}.{k}", index) ** -0.5)
        out[variant] = loss(m, val)
        print(size, variant, round(out[variant], 3), flush=True)
    out["final_norm_kept_energy"] = share("norm", keep)
    out["width_ratio"] = ratio
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="extreme,demo,paper")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from surgeon.demo.smollm2 import smollm2

    parent, tokenizer = smollm2()
    split = C.splits(tokenizer)
    results = json.loads(OUT.read_text())["sizes"] if OUT.exists() else {}
    results["parent"] = {"validation": loss(parent, split["validation"])}
    for size in args.sizes.split(","):
        results[size] = variants(parent, split, size)
        OUT.write_text(json.dumps({
            "protocol": C.PROTOCOL, "commit": C.commit(), "date": datetime.date.today().isoformat(),
            "what": "held-out loss on convergence.py's validation split, no training",
            "sizes": results,
        }, indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
