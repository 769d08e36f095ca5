"""llama.cpp control-vector GGUFs: read and write.

Layout (FACTS.md, DESIGN.md): `general.architecture = "controlvector"`,
`controlvector.model_hint` (the llama.cpp architecture the vector was made for),
`controlvector.layer_count`, and one F32 1-D tensor `direction.N` per steered block.
llama.cpp adds `direction.N` to the output of decoder block N (0-based, HF `model.layers[N]`),
so `direction.N` here is exactly the vector a hook adds to block N's output. Block 0 cannot be
reached: llama.cpp's loader rejects index 0 (its buffer starts at block 1) and ignores
`direction.{n_layer}`.

Vectors from llama.cpp's own cvector-generator are named one block later than where they
were measured (it writes the vector measured at block il as `direction.(il+1)`); the file
still means "add to block N's output", which is what this module returns.

The key names live in bake.files.gguf_file (gguf-py has no constants for them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from bake.errors import InputError
from bake.files.gguf_file import (
    CONTROL_VECTOR_ARCH,
    CONTROL_VECTOR_LAYER_COUNT,
    CONTROL_VECTOR_MODEL_HINT,
    CONTROL_VECTOR_PREFIX,
    GgufLayout,
    TensorEntry,
    read_layout,
)

ARCHITECTURE = CONTROL_VECTOR_ARCH
KEY_ARCHITECTURE = gguf.Keys.General.ARCHITECTURE
KEY_MODEL_HINT = CONTROL_VECTOR_MODEL_HINT
KEY_LAYER_COUNT = CONTROL_VECTOR_LAYER_COUNT
TENSOR_PREFIX = CONTROL_VECTOR_PREFIX
BLOCK0_REASON = (
    "llama.cpp adds direction.N to the output of block N only for N >= 1 (its control-vector "
    "buffer starts at block 1), so block 0 cannot be steered by a control vector"
)


def direction_name(block: int) -> str:
    """Tensor name of the vector added to block `block`'s output."""
    return f"{TENSOR_PREFIX}{block}"


@dataclass
class ControlVector:
    """A control-vector file's content: block -> (n_embd,) float32 vector, plus its keys."""

    directions: dict[int, np.ndarray]
    model_hint: str | None
    layer_count: int | None

    @property
    def n_embd(self) -> int:
        return int(next(iter(self.directions.values())).shape[0])


def write_control_vector(
    path: Path, vectors: Mapping[int, np.ndarray], model_hint: str, layer_count: int
) -> None:
    """Write `vectors` (block N -> (d,) vector added to block N's output) as `direction.N`.

    model_hint: llama.cpp architecture name (e.g. "qwen3"); layer_count: the model's number
    of decoder blocks. Refuses block 0 (unreachable in llama.cpp) and blocks outside the
    model. Written to a temporary file and renamed into place.
    """
    from bake.files.fileio import atomic_write_path

    arrays = _checked_vectors(vectors, layer_count)
    with atomic_write_path(Path(path)) as tmp:
        writer = gguf.GGUFWriter(str(tmp), ARCHITECTURE)
        writer.add_string(KEY_MODEL_HINT, model_hint)
        writer.add_uint32(KEY_LAYER_COUNT, int(layer_count))
        for block in sorted(arrays):
            writer.add_tensor(direction_name(block), arrays[block])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


def _checked_vectors(vectors: Mapping[int, np.ndarray], layer_count: int) -> dict[int, np.ndarray]:
    if not vectors:
        raise InputError("no vectors to write: the control vector would be empty")
    if 0 in vectors:
        raise InputError(
            f"the plan steers block 0, but {BLOCK0_REASON}; choose layers >= 1 "
            "(the tuner skips block 0 for families without a GGUF bias slot)"
        )
    arrays: dict[int, np.ndarray] = {}
    sizes = set()
    for block, v in vectors.items():
        if not 1 <= block < layer_count:
            raise InputError(f"block {block} is outside the model's blocks 0-{layer_count - 1}")
        arr = np.ascontiguousarray(np.asarray(v, dtype=np.float32).reshape(-1))
        if not np.all(np.isfinite(arr)):
            raise InputError(f"block {block}'s vector has NaN or Inf values; fix the plan")
        arrays[int(block)] = arr
        sizes.add(arr.shape[0])
    if len(sizes) != 1:
        raise InputError(
            f"the vectors have different lengths {sorted(sizes)}; all must equal "
            "the model's hidden size"
        )
    return arrays


def read_control_vector(path: Path) -> dict[int, np.ndarray]:
    """block N -> (n_embd,) float32 vector added to block N's output (N >= 1)."""
    return load_control_vector(path).directions


def load_control_vector(path: Path) -> ControlVector:
    """Parse and check a control-vector GGUF the way llama.cpp's loader does: every tensor
    is `direction.N` with an integer N >= 1, F32, 1-D, all of one length."""
    path = Path(path)
    layout = read_layout(path)
    arch = layout.string(KEY_ARCHITECTURE)
    tensors = layout.tensors
    if arch not in (None, ARCHITECTURE) and not any(
        t.name.startswith(TENSOR_PREFIX) for t in tensors
    ):
        raise InputError(
            f"{path} is a GGUF model (architecture {arch!r}), not a control "
            "vector; pass a control-vector .gguf (direction.N tensors)"
        )
    if not tensors:
        raise InputError(f"{path} holds no direction.N tensors: it is an empty control vector")
    directions: dict[int, np.ndarray] = {}
    for t in tensors:
        block = _block_of(t.name, path)
        directions[block] = _checked_direction(layout, t)
    lengths = {v.shape[0] for v in directions.values()}
    if len(lengths) != 1:
        raise InputError(
            f"{path}: direction tensors have different lengths {sorted(lengths)}; "
            "the file is inconsistent"
        )
    return ControlVector(
        dict(sorted(directions.items())),
        layout.string(KEY_MODEL_HINT),
        layout.integer(KEY_LAYER_COUNT),
    )


def _block_of(name: str, path: Path) -> int:
    suffix = name[len(TENSOR_PREFIX) :] if name.startswith(TENSOR_PREFIX) else ""
    if not suffix.isdigit():
        raise InputError(
            f"{path}: tensor {name!r} is not direction.N with a layer number N; "
            "llama.cpp would refuse this control vector too"
        )
    block = int(suffix)
    if block == 0:
        raise InputError(
            f"{path}: has direction.0, but {BLOCK0_REASON}; llama.cpp refuses "
            "this file: drop direction.0 or re-export the vector for blocks >= 1"
        )
    return block


def _checked_direction(layout: GgufLayout, t: TensorEntry) -> np.ndarray:
    """direction.N as (n_embd,) float32: F32, 1-D, finite (what llama.cpp accepts)."""
    path = layout.path
    if t.type_id != gguf.GGMLQuantizationType.F32:
        raise InputError(
            f"{path}: {t.name} is {t.type_name}, control vectors must be "
            "F32 (llama.cpp refuses other types)"
        )
    if len(t.dims) != 1:
        raise InputError(
            f"{path}: {t.name} has {len(t.dims)} dimensions, control vectors are "
            "1-D (one vector per block)"
        )
    values = layout.read_floats(t).astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise InputError(f"{path}: {t.name} has NaN or Inf values")
    return values
