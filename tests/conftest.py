"""Session-wide fixtures: each zoo parent is built, traced and analysed once
(`surgeon.prepare`) and reused by every test and plan that needs it; at the end of the
session every shared parent is checked to be exactly as it was built.

`make test` runs the suite on one pytest-xdist worker per core; each worker then uses one
torch thread, so the workers do not fight over the cores (the models are tiny: threads
within an op gain nothing)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `from tests import zoo` from any working folder
    sys.path.insert(0, str(ROOT))

import surgeon  # noqa: E402
from tests import zoo  # noqa: E402
from tests.helpers import fingerprint  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
# what `surgeon apply` keeps of a folder's measures goes to a folder of the session's,
# never to the user's cache
if "SURGEON_CACHE" not in os.environ:
    import tempfile

    os.environ["SURGEON_CACHE"] = tempfile.mkdtemp(prefix="surgeon-test-cache-")


@dataclass
class Prepared:
    """A zoo model, its example inputs, and the parent prepared from them. Tests must not
    change `model` (build your own with `zoo.build` to change it)."""

    name: str
    model: Any
    example: Any
    parent: surgeon.Parent
    fingerprint: str


_PREPARED: dict[str, Prepared] = {}


def prepare(name: str) -> Prepared:
    if name not in _PREPARED:
        model, example = zoo.build(name)
        parent = surgeon.prepare(model, example)
        _PREPARED[name] = Prepared(name, model, example, parent, fingerprint(model))
    return _PREPARED[name]


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items):
    """Tests of one zoo model run on one xdist worker (`--dist loadgroup`), so each
    worker prepares only the parents it uses; so do the tests of a module that share a
    module-scoped fixture (a model built and traced once), where no zoo model groups them."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        names = [
            v
            for v in params.values()
            if isinstance(v, str)
            and v in zoo.NAMES + zoo.MOE_NAMES + zoo.ENC_DEC_NAMES + zoo.STREAM_NAMES
        ]
        if names:
            item.add_marker(pytest.mark.xdist_group(names[0]))
        elif item.get_closest_marker("xdist_group") is None and (group := _module_group(item)):
            item.add_marker(pytest.mark.xdist_group(group))
    # groups first: a group is a worker's unit of work and the longest ones, so single
    # tests, handed to whichever worker is free, even out the end
    items.sort(key=lambda item: item.get_closest_marker("xdist_group") is None)


def _module_group(item) -> str | None:
    """The module's name and the params of its module-scoped fixtures that `item` uses
    (one instance of the fixture each); None where it uses none."""
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    scoped = [name for name, ds in defs.items() if any(d.scope == "module" for d in ds)]
    if not scoped:
        return None
    params = getattr(getattr(item, "callspec", None), "params", {})
    return ":".join([item.module.__name__] + [str(params[n]) for n in scoped if n in params])


@pytest.fixture(scope="session")
def prepared():
    """`prepared(name)`: the shared `Prepared` zoo parent called `name`."""
    yield prepare
    changed = [p.name for p in _PREPARED.values() if fingerprint(p.model) != p.fingerprint]
    assert not changed, f"tests changed the shared parents {changed}"
