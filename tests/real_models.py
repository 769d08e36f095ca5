"""Paths of the real GGUF models that `make models` (scripts/fetch_models.py) puts in the cache.

The model names, files and hashes live in that script's MANIFEST, loaded here by path.
A missing model fails the test that asks for it (never a skip): `make test` fetches them
first, so a missing file means the cache was not filled.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "fetch_models.py"


def _load_fetch_models() -> ModuleType:
    name = "steerbake_fetch_models"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _SCRIPT)
    assert spec is not None and spec.loader is not None, _SCRIPT
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


fetch_models = _load_fetch_models()
MANIFEST: list[dict[str, Any]] = fetch_models.MANIFEST
MODEL_NAMES: list[str] = [entry["name"] for entry in MANIFEST]


def models_cache() -> Path:
    """$STEERBAKE_MODELS, default ~/.cache/steerbake/models (as scripts/fetch_models.py)."""
    return fetch_models.cache_dir()


def model_info(name: str) -> dict[str, Any]:
    """The manifest entry (file, arch, layers, hidden_size, sha256, ...) of model `name`."""
    return fetch_models.model_entry(name)


def real_model(name: str) -> Path:
    """The cached GGUF of model `name` (manifest name or file name); fails if not fetched.

    The file must carry a matching `.sha256-ok` stamp (size, mtime and sha256 recorded by
    fetch_models when it checked the hash), so a truncated or replaced file fails too.
    """
    entry = model_info(name)
    cache = models_cache()
    path = cache / entry["file"]
    if not path.is_file():
        pytest.fail(f"{entry['file']} is not in {cache}: run make models", pytrace=False)
    if not fetch_models.is_verified(path, entry):
        pytest.fail(
            f"{entry['file']} is not in {cache}: run make models "
            "(the file is there but its sha256 stamp does not match it)",
            pytrace=False,
        )
    return path
