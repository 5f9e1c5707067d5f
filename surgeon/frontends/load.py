"""Find and build the model a user names: a Hugging Face folder, or a Python factory."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ModelLoadError, first_line
from . import Inputs, as_inputs
from .graph import built_on_meta

__all__ = ["has_tokenizer", "load_model", "load_tokenizer"]


def load_model(spec: str, weights: bool = True) -> tuple[nn.Module, Inputs | None]:
    """Build the model named by `spec`; returns `(model, example_inputs or None)`.

    `spec` is a folder saved by Hugging Face `save_pretrained` (with `config.json`), or
    `module.path:factory` / `path/to/file.py:factory`, where `factory()` returns a module
    or a `(module, example_inputs)` pair. `weights=False`: a folder's model is built from
    its config on the meta device, reading no weight (enough to trace and analyse it).
    """
    path = Path(spec)
    if path.is_dir():
        return _load_hf_folder(path, weights), None
    if ":" not in spec and re.fullmatch(r"[\w.-]+/[\w.-]+", spec) and not path.exists():
        raise ModelLoadError(
            f"model {spec!r} is not a folder here; if it is a Hugging Face Hub id, surgeon "
            f"does not download: `huggingface-cli download {spec} --local-dir DIR` (or "
            "save_pretrained), then pass DIR"
        )
    if ":" not in spec:
        raise ModelLoadError(
            f"model {spec!r} is neither a folder nor 'module:factory': pass a Hugging Face "
            "folder (with config.json) or e.g. 'mypkg.models:build' / 'models.py:build'"
        )
    return _load_factory(spec)


def _load_hf_folder(folder: Path, weights: bool = True) -> nn.Module:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(
            f"{folder} has no config.json: pass a folder written by save_pretrained()"
        )
    try:
        import transformers
    except ImportError as e:
        raise ModelLoadError(
            "loading a Hugging Face folder needs: pip install 'surgeon[hf]'"
        ) from e
    try:
        architectures = json.loads(config_file.read_text()).get("architectures") or []
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read {config_file}: {first_line(e)}") from e
    cls = getattr(transformers, architectures[0], None) if architectures else None
    if cls is None:
        cls = transformers.AutoModel
    try:
        if weights:
            return cls.from_pretrained(folder, local_files_only=True).eval()
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        make = cls.from_config if cls is transformers.AutoModel else cls
        return built_on_meta(lambda: make(config)).eval()
    except Exception as e:  # noqa: BLE001 - any loading failure becomes one clear line
        raise ModelLoadError(f"cannot load {folder} with {cls.__name__}: {first_line(e)}") from e


def _load_factory(spec: str) -> tuple[nn.Module, Inputs | None]:
    where, _, name = spec.rpartition(":")
    try:
        if where.endswith(".py"):
            file = Path(where)
            if not file.is_file():
                raise ModelLoadError(f"no such file: {where}")
            module_name = f"_surgeon_user_{file.stem}"
            module_spec = importlib.util.spec_from_file_location(module_name, file)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module
            folder = str(file.resolve().parent)
            if folder not in sys.path:  # so the file's own sibling imports work
                sys.path.insert(0, folder)
            module_spec.loader.exec_module(module)
        else:
            if "" not in sys.path:  # like `python -m`: modules of the working folder import
                sys.path.insert(0, "")
            module = importlib.import_module(where)
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"cannot import {where!r}: {first_line(e)}") from e
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ModelLoadError(f"{where!r} has no callable {name!r}")
    try:
        made: Any = factory()
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"{spec}() failed: {first_line(e)}") from e
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module):
        return made[0], as_inputs(made[1])
    if isinstance(made, nn.Module):
        return made, None
    raise ModelLoadError(
        f"{spec}() returned {type(made).__name__}: return an nn.Module or (module, example_inputs)"
    )


def has_tokenizer(spec: str) -> bool:
    """Whether `spec` is a folder with tokenizer files (checked without loading them)."""
    path = Path(spec)
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    return path.is_dir() and any((path / n).is_file() for n in names)


def load_tokenizer(spec: str):
    """The tokenizer saved in a Hugging Face folder, or None (factories have none)."""
    path = Path(spec)
    if not has_tokenizer(spec):
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"cannot load the tokenizer in {path}: {first_line(e)}") from e
