"""`steerbake vectors import`: raw per-layer vectors from other tools -> our vector file;
`steerbake vectors show`: a vector file's metadata and scales.

Which model the vectors are for: --model MODEL gives its architecture, sizes and rounding
dtype, and the file is checked against them. Without --model, only a file that names its
model fully is accepted: a steerbake vector file (its metadata) or a control-vector GGUF
whose model hint is one steerbake family and that records its layer count; its sizes are
then taken from the file, unchecked, which is said in one line. Other files (.npy, .npz,
.pt, plain safetensors) carry no architecture or layer count, and a vector file whose
fingerprint is partly guessed could not be checked against any model: they need --model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bake.artifacts.categories import CategoryVectors, has_categories
from bake.artifacts.vectors import SteeringVectors, read_raw_vectors, read_vector_file
from bake.errors import InputError, warn
from bake.files.jsonio import finite_json
from bake.model.fingerprint import Fingerprint
from bake.options import opt

NEEDS_MODEL = (
    "pass --model MODEL (the model the vectors are for: a folder, a Hub id in the local "
    "cache, a .gguf, or toy-refuser for the embedded toy model)"
)


@dataclass(frozen=True)
class ImportOptions:
    """`vectors import`: the model the vectors belong to, and the method to record."""

    model: str | None = opt(
        None,
        "The model the vectors are for (folder, cached Hub id, .gguf or toy-refuser): its "
        "architecture, sizes and dtype. Needed unless SRC names its model (a steerbake "
        "vector file, a control-vector GGUF).",
    )
    method: str = opt("imported", "Method recorded in the metadata.")


def model_fingerprint(model: str | Path | None) -> Fingerprint:
    """Architecture, hidden size and layer count from MODEL's headers (no weights read)."""
    from bake.model.resolve import open_model

    return open_model(model).fingerprint


def run_vectors_import(
    src: Path, model: str | Path | None, output: Path, method: str = "imported"
) -> SteeringVectors:
    """Read SRC (.npy/.npz/.safetensors/.pt, or a control-vector .gguf) for MODEL (None:
    the model SRC names, see the module doc) and write our vector file at `output`."""
    src = Path(src)
    if src.suffix.lower() == ".safetensors" and src.is_file() and _is_vector_file(src):
        vectors = _reimport(src, model)
    else:
        raw, named = _read_source(src)
        fingerprint, rounding = _target(src, model, named)
        vectors = SteeringVectors.from_raw(
            raw,
            fingerprint,
            method=method,
            provenance={"imported_from": src.name},
            rounding=rounding,
        )
    vectors.save(Path(output))
    return vectors


def _is_vector_file(src: Path) -> bool:
    """Whether SRC is a steerbake vector file (safetensors with `steerbake` metadata)."""
    return read_vector_file(src)[0] is not None


def _reimport(src: Path, model: str | Path | None) -> SteeringVectors:
    """A steerbake vector file, read as it is (directions, scales, diagnostics), checked
    against MODEL when given (rounding then the model's dtype)."""
    vectors = SteeringVectors.load(src)
    provenance = {**vectors.provenance, "imported_from": src.name}
    if model is None:
        _say_unchecked(src, vectors.fingerprint)
        return replace(vectors, provenance=provenance)
    source = _open(model)
    vectors.fingerprint.check(source.fingerprint, f"vector file {src}")
    return replace(vectors, provenance=provenance, rounding=source.dtype)


def _read_source(src: Path) -> tuple[dict[int, np.ndarray], Fingerprint | None]:
    """(layer -> raw vector, the model SRC names fully, else None)."""
    if src.suffix.lower() != ".gguf":
        return read_raw_vectors(src), None
    from bake.artifacts.control_vector import load_control_vector
    from bake.model.arch import ARCHITECTURES

    cv = load_control_vector(src)
    families = [s.model_type for s in ARCHITECTURES.values() if s.gguf_arch == cv.model_hint]
    if len(families) != 1 or cv.layer_count is None:
        return cv.directions, None
    return cv.directions, Fingerprint(families[0], cv.n_embd, cv.layer_count)


def _target(
    src: Path, model: str | Path | None, named: Fingerprint | None
) -> tuple[Fingerprint, str | None]:
    """(fingerprint, rounding dtype) the imported vectors are recorded for."""
    if model is not None:
        source = _open(model)
        return source.fingerprint, source.dtype
    if named is None:
        raise InputError(
            f"{src} does not say which model its vectors are for (no architecture or layer "
            f"count in it); {NEEDS_MODEL}"
        )
    _say_unchecked(src, named)
    return named, None


def _open(model: str | Path) -> Any:
    from bake.model.resolve import open_model

    return open_model(model)


def _say_unchecked(src: Path, fp: Fingerprint) -> None:
    warn(
        f"no --model: the vectors are recorded for the model {src.name} names ({fp.architecture},"
        f" hidden size {fp.hidden_size}, {fp.num_layers} layers), unchecked; pass --model to "
        "check them and record its dtype"
    )


def run_vectors_show(path: Path) -> dict[str, Any]:
    """The file's metadata plus its per-layer scales (rounded to 6 digits); NaN is null."""
    vectors = SteeringVectors.load(path)
    meta = vectors.metadata()
    meta["scales"] = {str(k): round(v, 6) for k, v in sorted(vectors.scales.items())}
    if has_categories(path):  # fit --by-category: the categories and their counts
        categories = CategoryVectors.load(path)
        meta["categories"] = {n: categories.counts.get(n, {}) for n in categories.names}
    return dict(finite_json(meta))
