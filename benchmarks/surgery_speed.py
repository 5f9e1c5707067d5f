"""Speed and memory of streaming surgery against a plain hand-written baseline.

Parents: SmolLM2-135M from its cached folder; a 1.2 B Llama-3.2-1B-shaped checkpoint with
random float32 weights, written once as 1 GB shards; and an 8 B Llama-3.1-8B-shaped one
in bfloat16 (16 GB), generated one shard at a time (never a whole model in memory). A
child of about a quarter of the parent's size is built by each method, each run in a
fresh process:

- `surgeon apply` with `weight` importance (the data-free default: reads every byte
  once to score it) and with `first` (reads only the kept slices); both stream:
  analyse on the meta device, read tensors from the files;
- `surgeon (weight), second plan`: the same, after an untimed `surgeon apply` of the
  parent to another size (half its layers and widths) has kept its measures
  (`SURGEON_CACHE` fresh for each round): a re-cut;
- the baseline a person would write: read only the kept slices of each kept tensor
  (safetensors' `get_slice`: the leading indices of every cut axis, the kept layers),
  save them with safetensors' `save_file`, and a config with the new sizes;
- `under load`: `surgeon (weight)` and the baseline again while a background process
  per core spins (`while True: pass`); their slowdown is wall under load / wall without.

Before every run, what earlier runs wrote is flushed to disk (`sync`) and the parent's
files are read once, so every method starts with them in the page cache (as far as it
holds them: the 8 B parent's 15 GiB may not fit beside the rest). Methods take turns for
`--repeat` rounds; the table shows medians (every run is in the JSON). Peak anonymous
memory is `RssAnon` of `/proc/PID/status`, polled every 10 ms (pages of memory-mapped
files are file-backed and do not count).

    .venv/bin/python benchmarks/surgery_speed.py [--parents NAME ...] [--repeat 3] [--json FILE]

Writes benchmarks/results/surgery_speed.json (commit, date, load average before, a write
probe of the disk (1 GiB of zeros, written as the methods write), rows and every run);
measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import commit, smollm2_folder  # benchmarks/common.py: a script's folder is on sys.path

ROOT = Path(__file__).resolve().parent.parent
BIG = dict(
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    tie_word_embeddings=True,
    max_position_embeddings=4096,
)
EIGHT_B = dict(  # Llama-3.1-8B's sizes
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    tie_word_embeddings=False,
    max_position_embeddings=8192,
    rope_theta=500000.0,
)
CHILDREN = {  # about a quarter of each parent
    "smollm2-135m": dict(
        num_layers=15, hidden_size=384, intermediate_size=768, num_heads=6, num_kv_heads=2
    ),
    "llama-1.2b": dict(
        num_layers=12, hidden_size=1024, intermediate_size=4096, num_heads=16, num_kv_heads=4
    ),
    "llama-8b": dict(
        num_layers=24, hidden_size=2048, intermediate_size=7168, num_heads=16, num_kv_heads=4
    ),
}


LOADED = ", under load"
SECOND = ", second plan"
METHODS = (
    "surgeon (weight)",
    "surgeon (first)",
    "surgeon (weight)" + SECOND,
    "hand-written baseline",
    "surgeon (weight)" + LOADED,
    "hand-written baseline" + LOADED,
)


@contextlib.contextmanager
def busy(on: bool):
    """A process per core spinning for the duration (when `on`)."""
    spin = [sys.executable, "-c", "while True: pass"]
    procs = [subprocess.Popen(spin) for _ in range(os.cpu_count() if on else 0)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def make_big(folder: Path) -> Path:
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**BIG))
    tmp = folder.with_name(folder.name + ".partial")
    model.save_pretrained(tmp, max_shard_size="1GB")
    tmp.rename(folder)
    return folder


def make_8b(folder: Path, shard_bytes: int = 2 * 10**9) -> Path:
    """Llama-3.1-8B's shapes in bfloat16, random normal weights (std 0.02, norms 1),
    written one shard at a time with an index, as `save_pretrained` names them."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    config = LlamaConfig(**EIGHT_B, dtype="bfloat16")
    h, f, v, d = config.hidden_size, config.intermediate_size, config.vocab_size, config.head_dim
    q, kv = config.num_attention_heads * d, config.num_key_value_heads * d
    layer = {
        "input_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (q, h),
        "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h),
        "self_attn.o_proj.weight": (h, q),
        "post_attention_layernorm.weight": (h,),
        "mlp.gate_proj.weight": (f, h),
        "mlp.up_proj.weight": (f, h),
        "mlp.down_proj.weight": (h, f),
    }
    shapes = {"model.embed_tokens.weight": (v, h)}
    for i in range(config.num_hidden_layers):
        shapes |= {f"model.layers.{i}.{k}": s for k, s in layer.items()}
    shapes |= {"model.norm.weight": (h,), "lm_head.weight": (v, h)}
    tmp = folder.with_name(folder.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        nbytes = 2 * torch.Size(shape).numel()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    weight_map, total = {}, 0
    for k, names in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name in names:
            shape = shapes[name]
            if len(shape) == 1:
                tensors[name] = torch.ones(shape, dtype=torch.bfloat16)
            else:
                tensors[name] = (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)
            weight_map[name] = file
            total += tensors[name].nbytes
        save_file(tensors, str(tmp / file), metadata={"format": "pt"})
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def warm(folder: Path) -> None:
    """Write out what earlier runs left to write (`sync`: no run waits on another's
    writes), then read the parent's files once: each method finds them in the page cache
    as far as it holds them."""
    os.sync()
    for file in folder.glob("*.safetensors"):
        with file.open("rb") as f:
            while f.read(64 * 2**20):
                pass


def measure(cmd: list[str]) -> dict:
    """Wall time and peak RssAnon of a command, polled from /proc."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    peak = 0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("RssAnon:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{cmd[:3]} failed: {proc.stderr.read()[-2000:]}")
    return {"seconds": wall, "peak_rss_anon": peak}


def baseline(parent: Path, out: Path, child: dict) -> None:
    """The hand-written way: read only the kept slices (leading indices of every cut
    axis, the kept layers) with safetensors' `get_slice`, save them, Llama names."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(parent)
    n = config.num_hidden_layers
    keep = child["num_layers"]
    start = keep // 2
    layers = [i for i in range(n) if not start <= i < start + n - keep]
    hd = config.head_dim
    sizes = {
        config.hidden_size: child["hidden_size"],
        config.intermediate_size: child["intermediate_size"],
        config.num_attention_heads * hd: child["num_heads"] * hd,
        config.num_key_value_heads * hd: child["num_kv_heads"] * hd,
    }
    new = {}
    for file in sorted(parent.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                new_name = name
                if ".layers." in name:
                    prefix, rest = name.split(".layers.", 1)
                    index, rest = rest.split(".", 1)
                    if int(index) not in layers:
                        continue
                    new_name = f"{prefix}.layers.{layers.index(int(index))}.{rest}"
                part = f.get_slice(name)
                shape = part.get_shape()
                keep_axes = tuple(
                    slice(
                        0, sizes[n] if n in sizes and not (a == 0 and n == config.vocab_size) else n
                    )
                    for a, n in enumerate(shape)
                )
                new[new_name] = part[keep_axes].contiguous()
    out.mkdir(parents=True)
    save_file(new, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.num_hidden_layers = keep
    config.hidden_size = child["hidden_size"]
    config.intermediate_size = child["intermediate_size"]
    config.num_attention_heads = child["num_heads"]
    config.num_key_value_heads = child["num_kv_heads"]
    config.save_pretrained(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parents", nargs="+", choices=list(CHILDREN), default=list(CHILDREN))
    p.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--json", default=str(ROOT / "benchmarks/results/surgery_speed.json"))
    p.add_argument("--baseline", nargs=3, help=argparse.SUPPRESS)  # parent out child-json
    args = p.parse_args()
    if args.baseline:
        parent, out, child = args.baseline
        baseline(Path(parent), Path(out), json.loads(child))
        return
    load = os.getloadavg()[0]
    make = {
        "smollm2-135m": smollm2_folder,
        "llama-1.2b": lambda: make_big(ROOT / ".cache" / "llama-1.2b-random"),
        "llama-8b": lambda: make_8b(ROOT / ".cache" / "llama-8b-random"),
    }
    parents = {name: make[name]() for name in args.parents}
    runs = []
    for name, folder in parents.items():
        for round_ in range(args.repeat):
            for method in METHODS:
                warm(folder)
                runs.append({"parent": name, "method": method, "round": round_})
                with busy(method.endswith(LOADED)):
                    runs[-1].update(run_once(method.removesuffix(LOADED), folder, CHILDREN[name]))
    rows = summarise(runs, parents)
    out = {
        "commit": commit(),
        "date": datetime.date.today().isoformat(),
        "load_average_before": load,
        "write_probe": write_probe(ROOT / ".cache"),
    }
    Path(args.json).write_text(json.dumps({**out, "rows": rows, "runs": runs}, indent=2) + "\n")
    print_table(rows, parents)


def write_probe(where: Path, size: int = 2**30) -> dict:
    """How fast this disk takes a plain write, as every method writes (no fsync): the
    seconds to write `size` bytes of zeros to a new file in 16 MiB blocks, 3 times, right
    after the runs. Both surgeon and the baseline mostly write, and the kernel throttles
    writes while earlier ones are flushed, so their times move with it."""
    block = bytes(16 * 2**20)
    times = []
    for _ in range(3):
        with tempfile.NamedTemporaryFile(dir=where) as f:
            started = time.perf_counter()
            for _ in range(size // len(block)):
                f.write(block)
            f.flush()
            times.append(time.perf_counter() - started)
    middle = statistics.median(times)
    return {
        "bytes": size,
        "seconds": [round(t, 2) for t in times],
        "mb_per_s": round(size / middle / 1e6),
    }


def run_once(method: str, folder: Path, child: dict) -> dict:
    with tempfile.TemporaryDirectory(dir=ROOT / ".cache") as tmp:
        out = Path(tmp) / "child"
        os.environ["SURGEON_CACHE"] = str(Path(tmp) / "cache")  # kept measures: this run's
        if method == "hand-written baseline":
            cmd = [sys.executable, __file__, "--baseline", str(folder), str(out)]
            r = measure([*cmd, json.dumps(child)])
        else:
            importance = method.split("(")[1].split(")")[0]
            if method.endswith(SECOND):  # another size first, its measures kept
                half = {k: max(v // 2, 1) for k, v in child.items()}
                subprocess.run(
                    apply(folder, Path(tmp), half, importance, "first"),
                    check=True, stdout=subprocess.DEVNULL,
                )  # fmt: skip
                os.sync()  # its writes are not the timed run's
            r = measure(apply(folder, Path(tmp), child, importance, "child"))
        r["child_bytes"] = safetensors_bytes(out)
    return r


def apply(folder: Path, tmp: Path, target: dict, importance: str, out: str) -> list[str]:
    """`surgeon apply` of `folder` to `target` into `tmp/out` (the surgeon of this tree:
    `python -m` from its root, not an installed one)."""
    plan = tmp / f"{out}.yaml"
    plan.write_text(json.dumps({"target": target, "depth": "middle", "importance": importance}))
    cmd = [sys.executable, "-m", "surgeon", "apply", "--model", str(folder)]
    return [*cmd, "--plan", str(plan), "--out", str(tmp / out)]


def summarise(runs: list[dict], parents: dict) -> list[dict]:
    rows = []
    for name, folder in parents.items():
        size = safetensors_bytes(folder)
        mine = [r for r in runs if r["parent"] == name]
        for method in dict.fromkeys(r["method"] for r in mine):
            these = [r for r in mine if r["method"] == method]
            rows.append(
                {
                    "parent": name,
                    "method": method,
                    "seconds": statistics.median(r["seconds"] for r in these),
                    "seconds_all": [round(r["seconds"], 2) for r in these],
                    "peak_rss_anon": statistics.median(r["peak_rss_anon"] for r in these),
                    "parent_bytes": size,
                    "child_bytes": these[0]["child_bytes"],
                }
            )
    return rows


def print_table(rows: list[dict], parents: dict) -> None:
    print(
        f"{'parent':<14} {'method':<35} {'wall':>7} {'runs':>18} {'peak RssAnon':>13} "
        f"{'/ parent':>9} {'vs baseline':>12}"
    )
    for row in rows:
        base = next(r for r in rows if r["parent"] == row["parent"] and "baseline" in r["method"])
        anon = row["peak_rss_anon"]
        runs = "/".join(f"{s:.1f}" for s in row["seconds_all"])
        print(
            f"{row['parent']:<14} {row['method']:<35} {row['seconds']:>6.1f}s {runs:>18} "
            f"{anon / 2**30:>11.2f} G {anon / row['parent_bytes']:>8.2f}x "
            f"{row['seconds'] / base['seconds']:>11.2f}x"
        )
    for row in rows:
        if row["method"].endswith(LOADED):
            alone = same_method(rows, row, row["method"].removesuffix(LOADED))
            row["slowdown"] = row["seconds"] / alone["seconds"]
    for row in rows:
        if row["method"].startswith("surgeon") and "slowdown" in row:
            base = same_method(rows, row, "hand-written baseline" + LOADED)
            print(
                f"{row['parent']}: under load surgeon is {row['slowdown']:.2f}x slower, the "
                f"baseline {base['slowdown']:.2f}x: ratio {row['slowdown'] / base['slowdown']:.2f}"
            )
    sizes = (f"{k} {safetensors_bytes(v) / 2**30:.2f} GiB" for k, v in parents.items())
    print("parent sizes: " + ", ".join(sizes) + "; wall and peak are medians over the runs")


def same_method(rows: list[dict], row: dict, method: str) -> dict:
    return next(r for r in rows if r["parent"] == row["parent"] and r["method"] == method)


def safetensors_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


if __name__ == "__main__":
    main()
