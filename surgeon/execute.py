"""Running a traced parent on calibration batches: whole, or one layer at a time.

A `Runner` executes the graph in segments, in graph order. A parent in memory is one
segment: each batch runs through the whole graph. A parent streamed from its files is cut
after each layer (the layer spans the analysis found), as llm-compressor's sequential
pipeline cuts a model into per-layer subgraphs: every batch runs through one segment
before the next segment starts, the segment's tensors are read from the files (and
moved to the device) once for all batches and dropped after it, and the values that
later segments read (the residual stream, rotary tables, masks) are kept between
segments, per batch. Only the nodes the measurement watches, and what they depend on,
run: a measurement that watches no logits never computes them.

Under `torchrun` (torch.distributed initialised) each rank runs its share of the batches
and `reduce` sums the running sums of all ranks, so every rank ends with the same result.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.fx._pytree as fx_pytree
from torch import fx

from .errors import NotStreamable, PlanError
from .frontends.graph import Graph, Inputs, as_inputs, bind_placeholders

__all__ = [
    "Runner",
    "check_device",
    "flat_inputs",
    "process_group",
    "rank",
    "reduce",
    "share",
    "world_size",
]

# The values kept between layers (the residual stream, per batch) stay in memory up to
# this many bytes; the batches past it are written to a temporary folder until their turn.
SPILL_BYTES = 4 * 2**30

Visit = Callable[[int, fx.Node, torch.Tensor], None]  # (batch index, node, its value)


def flat_inputs(graph: Graph, inputs: Inputs) -> list[Any]:
    """The graph's placeholders' values for a call `model(*args, **kwargs)`."""
    codegen = graph.module.graph._codegen
    info = getattr(codegen, "pytree_info", None)
    if info is not None and info.in_spec is not None:
        return fx_pytree.tree_flatten_spec((inputs.args, dict(inputs.kwargs)), info.in_spec)
    return bind_placeholders(graph.module, inputs)


class Runner:
    """Runs `graph` on batches. `source(name)` gives a parent tensor by its name (None:
    the graph module's own tensors); `cuts` are the nodes after which a segment ends."""

    def __init__(
        self,
        graph: Graph,
        source: Callable[[str], torch.Tensor] | None = None,
        cuts: Iterable[fx.Node] = (),
        device: str | torch.device = "cpu",
    ):
        self.graph = graph
        self.source = source
        self.device = _local(torch.device(device))
        self.segments = _segments(graph.graph, set(cuts))
        self._interpreter = _Interpreter(graph.module, self.device)
        self.spill_bytes = SPILL_BYTES

    def run(
        self, batches: Iterable[Any], watched: set[fx.Node], visit: Visit, progress: str = ""
    ) -> None:
        """Call `visit(batch index, node, value)` for every watched node on every batch
        of this rank's share, in graph order within a batch. A value is dropped after its
        last use: keep a reference to keep it."""
        batches = share(list(batches))
        needed = _ancestors(watched)
        last_use = _last_uses(self.graph.graph, needed)
        envs = [self._placeholders(b, needed) for b in batches]
        segments = [[n for n in s if n in needed] for s in self.segments]
        segments = [s for s in segments if s]
        bar = _bar(progress and f"{progress} ({len(envs)} batches)", len(segments))
        with _Spill(self.graph.graph, self.spill_bytes) as spill:
            for nodes in segments:
                tensors = self._tensors(nodes)  # read once for all batches, dropped after
                for k in range(len(envs)):
                    env = spill.load(envs, k)
                    env.update(tensors)
                    for node in nodes:
                        value = self._interpreter.step(node, env)
                        if node in watched:
                            visit(k, node, value)
                        for done in last_use.get(node, ()):
                            env.pop(done, None)
                    for i in tensors:  # a tensor read again later is read then
                        env.pop(i, None)
                    spill.keep(envs, k)
                if bar is not None:
                    bar.update(1)
                del tensors
        if bar is not None:
            bar.close()

    def _placeholders(self, batch: Any, needed: set[fx.Node]) -> dict[fx.Node, Any]:
        values = flat_inputs(self.graph, as_inputs(batch))
        nodes = [n for n in self.graph.graph.nodes if n.op == "placeholder"]
        return {
            n: v.to(self.device) if isinstance(v, torch.Tensor) else v
            for n, v in zip(nodes, values, strict=False)
            if n in needed
        }

    def _tensors(self, nodes: list[fx.Node]) -> dict[fx.Node, torch.Tensor]:
        """The parent tensors the nodes read, on the device, in the traced dtype."""
        out = {}
        for node in nodes:
            for i in node.all_input_nodes:
                if i.op == "get_attr" and i not in out:
                    out[i] = self._tensor(i.target)
        return out

    def _tensor(self, name: str) -> torch.Tensor:
        params = self.graph.params
        if self.source is not None and name in params:
            t = self.source(params.canonical(name))
            t = t.to(self.device, params[name].dtype)
        else:
            t = self._interpreter.fetch_attr(name)
            t = t.to(self.device) if isinstance(t, torch.Tensor) else t
        if isinstance(t, torch.Tensor) and t.is_meta:
            raise NotStreamable(f"{name} has no value on the meta device or in the files")
        return t


class _Spill:
    """The values kept between segments, per batch, in memory up to `budget` bytes (all
    batches together); the batches past it wait in files of a temporary folder."""

    def __init__(self, graph: fx.Graph, budget: int):
        self.nodes = {n.name: n for n in graph.nodes}
        self.budget, self.used, self.folder = budget, 0, None

    def __enter__(self) -> _Spill:
        return self

    def __exit__(self, *exc) -> None:
        if self.folder is not None:
            self.folder.cleanup()

    def load(self, envs: list, k: int) -> dict:
        if isinstance(envs[k], Path):
            saved = torch.load(envs[k], weights_only=False)
            envs[k].unlink()
            envs[k] = {self.nodes[name]: value for name, value in saved.items()}
        return envs[k]

    def keep(self, envs: list, k: int) -> None:
        """After batch k ran a segment: its values stay, or go to a file over budget."""
        if k == 0:
            self.used = 0
        size = sum(_nbytes(v) for v in envs[k].values())
        if self.used + size <= self.budget:
            self.used += size
            return
        if self.folder is None:
            self.folder = tempfile.TemporaryDirectory(prefix="surgeon-stream-")
        path = Path(self.folder.name) / f"batch-{k}.pt"
        torch.save({n.name: v for n, v in envs[k].items()}, path)
        envs[k] = path


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


class _Interpreter(fx.Interpreter):
    """Runs one node at a time on a given environment; factory ops (`arange`, `ones`,
    `_to_copy`) run on the device, whatever device the graph was traced on (the meta
    device, for a parent streamed from its files)."""

    def __init__(self, module: fx.GraphModule, device: torch.device):
        super().__init__(module, garbage_collect_values=False)
        self.device = device

    def step(self, node: fx.Node, env: dict[fx.Node, Any]) -> Any:
        self.env = env
        value = self.run_node(node)
        env[node] = value
        return value

    def call_function(self, target, args, kwargs):
        args, kwargs = fx.node.map_aggregate((args, kwargs), self._on_device)
        return super().call_function(target, args, kwargs)

    def _on_device(self, a: Any) -> Any:
        return self.device if isinstance(a, torch.device) else a


def _segments(graph: fx.Graph, cuts: set[fx.Node]) -> list[list[fx.Node]]:
    """The graph's computing nodes in order, in runs that end at each cut."""
    segments: list[list[fx.Node]] = [[]]
    for node in graph.nodes:
        if node.op in ("placeholder", "get_attr", "output"):
            continue
        segments[-1].append(node)
        if node in cuts:
            segments.append([])
    return [s for s in segments if s]


def _ancestors(nodes: set[fx.Node]) -> set[fx.Node]:
    seen, frontier = set(nodes), list(nodes)
    while frontier:
        for i in frontier.pop().all_input_nodes:
            if i not in seen:
                seen.add(i)
                frontier.append(i)
    return seen


def _last_uses(graph: fx.Graph, needed: set[fx.Node]) -> dict[fx.Node, list[fx.Node]]:
    """For each node that runs, the values whose last reader it is (freed after it; a
    value nothing that runs reads is freed right after it is computed and watched)."""
    last: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        if node in needed:
            last.setdefault(node, node)
            for i in node.all_input_nodes:
                last[i] = node
    out: dict[fx.Node, list[fx.Node]] = {}
    for value, user in last.items():
        out.setdefault(user, []).append(value)
    return out


def _bar(desc: str, total: int):
    if not desc or rank() != 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="segment")  # a layer, or what is between


@contextlib.contextmanager
def memory_bound() -> Iterator[None]:
    """One intra-op thread for the duration: for loops that stream weights through
    memory (the `weight` reductions, cutting and writing blocks). They gain little from
    more threads (a core nearly saturates this machine's memory bandwidth) and lose much
    when another process keeps a core busy: OpenMP's threads spin-wait on the one that
    is descheduled. Measured here (2 cores, a busy machine): the `weight` reductions of
    two layers of the 1.2 B parent take 12.1 s on 2 threads, 1.3 s on 1 (docs/calibration.md).
    The calibration forward passes (compute-bound matrix products) keep torch's threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- devices and ranks -------------------------------------------------------------------


def check_device(device: str) -> torch.device:
    """The device a plan or `--device` names; `PlanError` when it is not one, or absent."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise PlanError(f"device {device!r} is not a device (cpu, cuda, cuda:1, ...)") from e
    if d.type == "cuda" and not torch.cuda.is_available():
        raise PlanError(f"device {device}: no GPU is visible to torch here; use device: cpu")
    if d.type not in ("cpu", "cuda"):
        raise PlanError(f"device {device}: surgeon runs layers on cpu or cuda")
    return d


def _local(device: torch.device) -> torch.device:
    """`cuda` under torchrun: this rank's own GPU."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank() -> int:
    """This process's rank under torchrun (0 without it)."""
    return _world()[0]


def world_size() -> int:
    """How many ranks run (1 without torchrun)."""
    return _world()[1]


def share(batches: list[Any]) -> list[Any]:
    """This rank's batches: every world-size-th one, from its rank on."""
    r, world = _world()
    return batches[r::world]


def reduce(*tensors: torch.Tensor) -> None:
    """Sum each tensor over the ranks, in place (nothing to do in one process)."""
    import torch.distributed as dist

    if _world()[1] == 1:
        return
    cuda = dist.get_backend() == "nccl"
    for t in tensors:
        moved = t.to(_local(torch.device("cuda"))) if cuda else t
        dist.all_reduce(moved)
        if moved is not t:
            t.copy_(moved)


@contextlib.contextmanager
def process_group(device: str = "cpu") -> Iterator[None]:
    """Under torchrun (WORLD_SIZE > 1): join the ranks (NCCL for a GPU, gloo otherwise)
    for the duration; otherwise nothing."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield
        return
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()
