"""`steerbake vectors import`: raw per-layer vectors from other tools -> our vector file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bake.artifacts.vectors import SteeringVectors, read_raw_vectors
from bake.model.fingerprint import Fingerprint


def model_fingerprint(model: str | Path | None) -> Fingerprint:
    """Architecture, hidden size and layer count from MODEL's config (no weights read)."""
    from bake.model.checkpoint import open_checkpoint
    from bake.model.resolve import resolve_model

    ckpt = open_checkpoint(resolve_model(model))
    return Fingerprint(ckpt.model_type, ckpt.hidden_size, ckpt.num_layers)


def import_vectors(
    src: Path, model: str | Path | None, method: str = "imported"
) -> SteeringVectors:
    """Read SRC (.npy/.npz/.safetensors/.pt, or a control-vector .gguf) for MODEL."""
    src = Path(src)
    fingerprint = model_fingerprint(model)
    raw: dict[int, np.ndarray]
    if src.suffix.lower() == ".gguf":
        from bake.artifacts.control_vector import read_control_vector

        raw = read_control_vector(src)
    else:
        raw = read_raw_vectors(src)
    return SteeringVectors.from_raw(
        raw, fingerprint, method=method, provenance={"imported_from": src.name}
    )
