"""A folder's traced and analysed parent, kept on disk (issue 33): a second `surgeon apply`
on the same parent (another size, another budget) skips tracing and analysing it, and
only builds its class on the meta device.

The key is what the graph and the analysis depend on besides the tensors' values
(`surgeon.io.stamps` tells each so that processes compare): the config as built (its
JSON with every default but the folder's path, unless the model's code names it, and
the private settings of it and its sub-configs, such as the attention implementation),
the model's tensors (names, shapes, dtypes, ties), its class and the code of its modules'
classes and of the Python modules that define them, transformers' run-time registries
(attention, masks, rotary tables) and the files of its shared modules, the example
inputs' structure, shapes and dtypes (traced on the meta device, their values are never
read), which tensors the folder stores (the others are computed), the versions of
Python, torch and transformers, every source file of surgeon, and the op-rule table. A
plan's own rules (`prepare_folder(..., rules=)`) are never kept. What no key here sees:
a function of torch or a helper outside the model's modules patched in the session (the
in-process trace memo does not see it either).

The file (`surgeon.io.graph_pickle`) holds the graph's nodes with the metadata surgeon
reads (`val`, `nn_module_stack`, `stack_trace`; not the others export writes), its code
generator (pytree specs), the graph module's attributes but `ep.module()`'s in-place
`train` and `eval` (which raise), the constants the trace made, the parameter table,
the example inputs, the buffers computed from the config, the trace's warnings (given
again on every load) and the analysis. Loaded, the graph is bound to the model built from
the folder's config, as a traced graph is. A file that cannot be read, or names a class
a graph does not hold, is no cache; one that cannot be written is skipped; the 64 most
recently written are kept. `surgeon apply --no-cache` neither reads nor writes them."""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import graph_pickle, stamps
from .measures import cache_folder, write_kept

__all__ = ["load_prepared", "prepared_key", "save_prepared"]

FORMAT = 2
KEPT = 64  # files kept, the least recently written removed first
_META = ("val", "nn_module_stack", "stack_trace")  # what surgeon reads of a node's metadata


def prepared_key(model: nn.Module, inputs: Any, stored: dict[str, str]) -> str | None:
    """The key of `model`'s (built from a folder's config on the meta device) trace on
    `inputs` and its analysis; None where it cannot be told."""
    from ..frontends import memo
    from ..frontends.graph import as_inputs

    try:
        told = memo._inputs(as_inputs(inputs).to("meta")) if inputs is not None else None
        parts = (
            FORMAT,
            _config(model.config, memo.reads_path(model)),
            memo._tensors(model),
            torch.get_default_dtype(),
            f"{type(model).__module__}.{type(model).__qualname__}",
            stamps.code_stamp(model),
            stamps.registries_stamp(),
            stamps.transformers_stamp(),
            told,
            sorted(stored.items()),
            sys.version,
            torch.__version__,
            getattr(sys.modules.get("transformers"), "__version__", None),
            stamps.surgeon_stamp(),
            stamps.rules_stamp(),
        )
    except Exception:  # noqa: BLE001 - what cannot be told is traced every time
        return None
    return hashlib.sha256(stamps.describe(parts).encode()).hexdigest()[:32]


def _config(config: Any, where: bool = False, depth: int = 0) -> str:
    """The config's JSON (defaults included) and the private settings of plain values of
    it and of its sub-configs; the folder's path left out unless `where` (the model's
    code reads it: `memo.reads_path`)."""
    from ..frontends import memo

    data = json.loads(config.to_json_string(use_diff=False))
    data = data if where else memo.without_path(data)
    private = {
        k: v
        for k, v in vars(config).items()
        if k.startswith("_")
        and (where or k not in memo._WHERE)
        and isinstance(v, (type(None), bool, int, float, str))
    }
    subs = {
        k: _config(v, where, depth + 1)
        for k, v in vars(config).items()
        if hasattr(v, "to_json_string") and depth < 3
    }
    return stamps.describe((json.dumps(data, sort_keys=True), private, subs))


def save_prepared(
    key: str | None, model: nn.Module, graph, analysis, buffers: dict, caught: list
) -> None:
    """Keep `graph` (of `model`, whose key `key` is), `analysis` and the computed
    `buffers` under `key`; nothing is written where any of it cannot be."""
    if key is None:
        return
    from ..frontends import memo

    try:
        gm = graph.module
        nodes = list(gm.graph.nodes)
        index = {n: i for i, n in enumerate(nodes)}
        attributes, extras, constants = memo.parts(graph, model)
        head = {
            "nodes": [
                (n.name, n.op, n.target, n.args, n.kwargs, n.type, _kept_meta(n)) for n in nodes
            ],
            "codegen": gm.graph._codegen,
            "tracer": getattr(gm.graph, "_tracer_cls", None),
            "name": type(gm).__name__,
            "attributes": {k: v for k, v in attributes.items() if not callable(v)},
            "extras": extras,
            "constants": constants,
            "params": graph.params,
            "inputs": graph.inputs,
            "frontend": graph.frontend,
            "warnings": [(str(w.message), w.category, w.filename, w.lineno) for w in caught],
        }
        body = {"analysis": analysis, "buffers": buffers}
        blobs = [graph_pickle.dumps(x, index, graph) for x in (head, body)]
        write_kept(_path(key), lambda f: pickle.dump(blobs, f, protocol=5), keep=KEPT)
    except Exception:  # noqa: BLE001 - what cannot be kept is traced next time
        return


def load_prepared(key: str | None, model: nn.Module):
    """`(graph, analysis, buffers)` kept under `key`, the graph bound to `model`'s
    tensors; None when nothing usable is kept."""
    if key is None:
        return None
    from ..frontends import memo
    from ..frontends.graph import Graph

    try:
        path = _path(key)
        if not path.is_file():
            return None
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's pytree, unpickled
            blobs = graph_pickle.loads(f.read())
            head = graph_pickle.loads(blobs[0])
        fx_graph, nodes = graph_pickle.rebuilt(head["nodes"], head["codegen"], head["tracer"])
        module = memo.bound(
            fx_graph, head["name"], head["attributes"], head["extras"], head["constants"], model
        )
        graph = Graph(module, head["params"], head["inputs"], head["frontend"])
        body = graph_pickle.loads(blobs[1], nodes, graph)
        caught = [warnings.WarningMessage(c(m), c, f, n) for m, c, f, n in head["warnings"]]
    except Exception:  # noqa: BLE001 - a kept file that cannot be used is no cache
        return None
    memo.replay(caught)
    return graph, body["analysis"], body["buffers"]


def _kept_meta(node) -> dict:
    return {k: node.meta[k] for k in _META if k in node.meta}


def _path(key: str) -> Path:
    return cache_folder() / "prepared" / f"{key}.pkl"
