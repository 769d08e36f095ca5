"""Resolve what the user typed as MODEL: a local folder, a .gguf file, the embedded toy
refuser, or a Hub id that is already in the local Hugging Face cache (never downloaded here).
"""

from __future__ import annotations

from pathlib import Path

from bake.errors import InputError
from bake.model.checkpoint import Checkpoint, open_checkpoint
from bake.model.gguf_model import GgufModel, is_gguf, open_gguf_model

TOY_NAME = "toy-refuser"


def toy_model_dir() -> Path:
    """The toy refuser shipped inside the package (package data)."""
    from bake.toy_refuser import model_dir

    return model_dir()


def resolve_model(spec: str | Path | None) -> Path:
    """Path of MODEL: a folder, a .gguf file, 'toy-refuser' (the default) or a cached Hub
    id's snapshot folder."""
    if spec is None or str(spec) == TOY_NAME:
        path = toy_model_dir()
        if not (path / "config.json").exists():
            raise InputError(f"the embedded toy model is missing from {path}; reinstall steerbake")
        return path
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir() and not is_gguf(path):
            raise InputError(
                f"{path} is a file; MODEL must be a model folder, a .gguf file or a Hub id"
            )
        return path
    text = str(spec)
    if text.count("/") == 1 and not text.startswith((".", "/")):
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Path(snapshot_download(text, local_files_only=True))
        except (LocalEntryNotFoundError, ValueError, OSError):
            raise InputError(
                f"{text} is not in the local Hugging Face cache; download it first "
                f"(`hf download {text}`) or pass a local folder"
            ) from None
    raise InputError(f"model folder {path} does not exist")


def open_model(spec: str | Path | None) -> Checkpoint | GgufModel:
    """MODEL read from its headers: a checkpoint folder, or a model GGUF (checked: not
    steered already, a known family)."""
    path = resolve_model(spec)
    return open_gguf_model(path) if is_gguf(path) else open_checkpoint(path)
