"""`steerbake vectors import`: raw per-layer vectors from other tools -> our vector file;
`steerbake vectors show`: a vector file's metadata and scales."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bake.artifacts.vectors import SteeringVectors, read_raw_vectors
from bake.model.fingerprint import Fingerprint
from bake.options import opt


@dataclass(frozen=True)
class ImportOptions:
    """`vectors import`: the model the vectors belong to, and the method to record."""

    model: str | None = opt(
        None,
        "Model folder, Hub id in the local cache, or 'toy-refuser' (the default). Gives "
        "architecture and sizes.",
    )
    method: str = opt("imported", "Method recorded in the metadata.")


def model_fingerprint(model: str | Path | None) -> Fingerprint:
    """Architecture, hidden size and layer count from MODEL's headers (no weights read)."""
    from bake.model.resolve import open_model

    return open_model(model).fingerprint


def run_vectors_import(
    src: Path, model: str | Path | None, output: Path, method: str = "imported"
) -> SteeringVectors:
    """Read SRC (.npy/.npz/.safetensors/.pt, or a control-vector .gguf) for MODEL and write
    our vector file at `output`."""
    from bake.model.resolve import open_model

    src = Path(src)
    source = open_model(model)
    raw: dict[int, np.ndarray]
    if src.suffix.lower() == ".gguf":
        from bake.artifacts.control_vector import read_control_vector

        raw = read_control_vector(src)
    else:
        raw = read_raw_vectors(src)
    vectors = SteeringVectors.from_raw(
        raw,
        source.fingerprint,
        method=method,
        provenance={"imported_from": src.name},
        rounding=source.dtype,
    )
    vectors.save(Path(output))
    return vectors


def run_vectors_show(path: Path) -> dict[str, Any]:
    """The file's metadata plus its per-layer scales (rounded to 6 digits)."""
    vectors = SteeringVectors.load(path)
    meta = vectors.metadata()
    meta["scales"] = {str(k): round(v, 6) for k, v in sorted(vectors.scales.items())}
    return meta
