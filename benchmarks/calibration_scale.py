"""Calibrating a parent one layer at a time against loading it and calibrating in memory.

For each parent (SmolLM2-135M from its cached folder, and the 1.2 B Llama-shaped
checkpoint with random weights of benchmarks/surgery_speed.py, given SmolLM2's tokenizer),
`recipe: surgeon` (activation importance, influence depth; `--samples` x 256 calibration
tokens of Python's docs, 32 x 256 by default) cuts a child of about a quarter of the
parent's size, each method in a fresh process:

- `layer by layer`: `surgeon apply` on the folder (traced on the meta device, each
  layer's tensors read from the files, the batches run through one layer at a time);
- `layer by layer, torchrun 2`: the same under `torchrun --nproc_per_node 2` (one thread
  per rank: the batches split between the ranks, the sums all-reduced);
- `in memory`: `from_pretrained` the whole parent, then `surgeon.apply` on it.

Wall time, and peak anonymous memory (`RssAnon` of every process of the run, summed,
polled every 10 ms: pages of memory-mapped files do not count). Every child is compared
with the in-memory one, tensor by tensor. `--zoo` instead checks, in this process, that
the layer-by-layer scores, influence, chosen layers and child bytes equal the in-memory
ones on every Hugging Face zoo model and on SmolLM2-135M (32 x 256 tokens).

    .venv/bin/python benchmarks/calibration_scale.py [--skip-1b] [--device cuda] [--json F]
    .venv/bin/python benchmarks/calibration_scale.py --zoo
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from surgery_speed import CHILDREN, make_big, safetensors_bytes, warm  # noqa: E402

METHODS = ("in memory", "layer by layer", "layer by layer, torchrun 2")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skip-1b", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--samples", type=int, default=32, help="calibration sequences of 256")
    p.add_argument("--methods", default=";".join(METHODS), help="separated by ;, of: %(default)s")
    p.add_argument("--only", help="one parent: smollm2-135m or llama-1.2b")
    p.add_argument("--zoo", action="store_true", help="check equality instead of timing")
    p.add_argument("--json")
    p.add_argument("--in-memory", nargs=3, help=argparse.SUPPRESS)  # parent plan out
    args = p.parse_args()
    if args.in_memory:
        in_memory(*args.in_memory)
        return
    if args.zoo:
        rows = check_zoo()
    else:
        chosen = [(n, f) for n, f in parents(args.skip_1b) if args.only in (None, n)]
        methods = args.methods.split(";")
        rows = [run(n, f, args.device, args.samples, methods) for n, f in chosen]
        rows = [r for group in rows for r in group]
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def parents(skip_1b: bool) -> list[tuple[str, Path]]:
    from surgeon.demo.smollm2 import DEFAULT_CACHE, smollm2

    smollm2()  # converts once
    out = [("smollm2-135m", ROOT / DEFAULT_CACHE)]
    if not skip_1b:
        big = make_big(ROOT / ".cache" / "llama-1.2b-random")
        out.append(("llama-1.2b", with_tokenizer(big, ROOT / DEFAULT_CACHE)))
    return out


def with_tokenizer(folder: Path, tokenizer: Path) -> Path:
    """The random 1.2 B parent has no tokenizer: a folder of links to its files and to
    SmolLM2's tokenizer (vocabulary 49152, within the parent's 128256)."""
    out = folder.with_name(folder.name + "+tokenizer")
    out.mkdir(exist_ok=True)
    files = [*folder.iterdir(), tokenizer / "tokenizer.json", tokenizer / "tokenizer_config.json"]
    for file in files:
        if not (out / file.name).exists():
            (out / file.name).symlink_to(file.resolve())
    return out


def run(name: str, folder: Path, device: str, samples: int, methods: list[str]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(dir=ROOT / ".cache") as tmp:
        plan = Path(tmp) / "plan.yaml"
        calibration = {"samples": samples, "seq_len": 256, "batch_size": 4}
        settings = {"recipe": "surgeon", "device": device, "calibration": calibration}
        plan.write_text(json.dumps({"target": CHILDREN[name], **settings}))
        for method in methods:
            out = Path(tmp) / method.replace(" ", "_").replace(",", "")
            warm(folder)
            r = measure(command(method, folder, plan, out))
            summary = json.loads((out / "surgeon.json").read_text())
            r.update(parent=name, method=method, device=device, layers=summary["layers_kept"])
            r.update(calibration_tokens=samples * 256, torch_threads=threads(method))
            r.update(load_average_1min=os.getloadavg()[0])
            r["parent_bytes"] = safetensors_bytes(folder)
            r["influence"] = summary["influence"]
            rows.append(r)
        for r in rows:
            mem = Path(tmp) / "in_memory"
            r["same_child_as_in_memory"] = mem.is_dir() and same_tensors(mem, outdir(tmp, r))
        print_table(rows)
    return rows


def threads(method: str) -> int:
    return 1 if "torchrun" in method else (os.cpu_count() or 1)


def outdir(tmp: str, row: dict) -> Path:
    return Path(tmp) / row["method"].replace(" ", "_").replace(",", "")


def command(method: str, folder: Path, plan: Path, out: Path) -> list[str]:
    python = sys.executable
    if method == "in memory":
        return [python, __file__, "--in-memory", str(folder), str(plan), str(out)]
    apply = ["-m", "surgeon", "apply", "--model", str(folder), "--plan", str(plan)]
    if method == "layer by layer":
        return [python, *apply, "--out", str(out)]
    torchrun = str(Path(python).with_name("torchrun"))
    return [torchrun, "--nproc_per_node", "2", *apply, "--out", str(out)]


def in_memory(parent: str, plan: str, out: str) -> None:
    """Load the whole parent, calibrate in memory (what `surgeon apply` did before)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from surgeon.api import subclone

    model = AutoModelForCausalLM.from_pretrained(parent).eval()
    tokenizer = AutoTokenizer.from_pretrained(parent)
    child = subclone(model, plan, tokenizer=tokenizer)
    child.model.save_pretrained(out)
    summary = {"layers_kept": child.state.layers, "influence": child.state.influence}
    (Path(out) / "surgeon.json").write_text(json.dumps(summary))


def measure(cmd: list[str]) -> dict:
    """Wall time and peak RssAnon of a command and all its child processes, summed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if "torchrun" in cmd[0]:
        env["OMP_NUM_THREADS"] = "1"  # one thread per rank: the ranks share the cores
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_anon(proc.pid))
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{cmd[:4]} failed: {proc.stderr.read().decode()[-2000:]}")
    return {"seconds": wall, "peak_rss_anon": peak}


def tree_anon(pid: int) -> int:
    """RssAnon of a process and its descendants, in bytes (0 for those already gone)."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                total += int(line.split()[1]) * 1024
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += tree_anon(int(child))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


def same_tensors(a: Path, b: Path) -> bool:
    import torch

    from surgeon.io.shards import Shards

    x, y = Shards(a), Shards(b)
    return x.index.keys() == y.index.keys() and all(
        torch.equal(x.tensor(k), y.tensor(k)) for k in x.index
    )


def print_table(rows: list[dict]) -> None:
    """One row per run; `x mem` is wall / the in-memory run's (1.0 when there is none)."""
    print(
        f"{'parent':<14} {'method':<28} {'wall s':>8} {'x mem':>6} {'anon GiB':>9} "
        f"{'x parent':>9} {'same child':>10}"
    )
    for r in rows:
        same = [x for x in rows if x["parent"] == r["parent"] and x["method"] == "in memory"]
        base = same[0] if same else r
        print(
            f"{r['parent']:<14} {r['method']:<28} {r['seconds']:>8.1f} "
            f"{r['seconds'] / base['seconds']:>6.2f} {r['peak_rss_anon'] / 2**30:>9.2f} "
            f"{r['peak_rss_anon'] / r['parent_bytes']:>9.2f} "
            f"{str(r['same_child_as_in_memory']):>10}"
        )


# -- equality on the zoo and SmolLM2 -------------------------------------------------------


def check_zoo() -> list[dict]:
    from tests import zoo

    rows = []
    for name in zoo.HF_NAMES:
        model, example = zoo.build(name)
        rows.append(compare(name, model, zoo_batches(example)))
        print_check(rows[-1])
    rows.append(compare("smollm2-135m", *smollm2_and_batches()))
    print_check(rows[-1])
    return rows


def zoo_batches(example: dict) -> list[dict]:
    import torch

    from tests import zoo

    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(3):
        batch = dict(example)
        key = "input_ids" if "input_ids" in batch else "pixel_values"
        shape = example[key].shape
        if key == "input_ids":
            batch[key] = torch.randint(3, zoo.VOCAB, shape, generator=g)
        else:
            batch[key] = torch.randn(shape, generator=g)
        out.append(batch)
    return out


def smollm2_and_batches():
    from surgeon.demo.smollm2 import smollm2
    from surgeon.io.calibration import resolve_calibration
    from surgeon.plan import CALIBRATION

    model, tokenizer = smollm2()
    return model, resolve_calibration(model, None, tokenizer, CALIBRATION, True)


def compare(name: str, model, batches: list) -> dict:
    """In memory vs one layer at a time from the saved folder: scores, influence, layers
    and the child's bytes."""
    import torch

    from surgeon.api import stream_subclone, subclone
    from surgeon.emit.shards import emit_shards
    from tests.helpers import shrink_plan

    if name == "smollm2-135m":
        plan = {"target": dict(CHILDREN[name]), "recipe": "surgeon"}
    else:
        plan = {**shrink_plan(name), "recipe": "surgeon"}
        plan["target"]["num_layers"] = 2
    with tempfile.TemporaryDirectory(dir=ROOT / ".cache") as tmp:
        t0 = time.perf_counter()
        mem = subclone(model, plan, batches[0], batches)
        t1 = time.perf_counter()
        model.save_pretrained(Path(tmp) / "parent", max_shard_size="100MB")
        cut = stream_subclone(Path(tmp) / "parent", plan, batches)
        t2 = time.perf_counter()
        (Path(tmp) / "streamed").mkdir()
        emit_shards(cut, Path(tmp) / "streamed")
        mem.model.save_pretrained(Path(tmp) / "in_memory")
        same = same_tensors(Path(tmp) / "in_memory", Path(tmp) / "streamed")
    a, b = keyed(mem.state), keyed(cut.state)
    worst = max(float(((a[k] - b[k]).abs() / a[k].abs().clamp_min(1e-30)).max()) for k in a)
    inf = [
        abs(x - y) / abs(x) for x, y in zip(mem.state.influence, cut.state.influence, strict=True)
    ]
    return {
        "model": name,
        "groups": len(a),
        "same_groups": a.keys() == b.keys(),
        "max_score_rel_diff": worst,
        "max_influence_rel_diff": max(inf),
        "same_layers": mem.state.layers == cut.state.layers,
        "same_child_bytes": same,
        "seconds_in_memory": t1 - t0,
        "seconds_layer_by_layer": t2 - t1,
        "torch_threads": torch.get_num_threads(),
    }


def keyed(state) -> dict:
    groups = state.analysis.groups
    return {(groups[g].role, *groups[g].members): s for g, s in state.scores.items()}


def print_check(r: dict) -> None:
    print(
        f"{r['model']:<14} groups {r['groups']:>4}  same {r['same_groups']!s:<5}  "
        f"score rel diff {r['max_score_rel_diff']:.1e}  influence {r['max_influence_rel_diff']:.1e}"
        f"  layers {r['same_layers']!s:<5}  child bytes {r['same_child_bytes']!s:<5}  "
        f"{r['seconds_in_memory']:.1f} s / {r['seconds_layer_by_layer']:.1f} s",
        flush=True,
    )


if __name__ == "__main__":
    main()
