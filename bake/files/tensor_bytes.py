"""Small tensors as raw bytes in a checkpoint dtype, and a safetensors writer for them.

The bake writes only a few bias vectors, so it never needs torch: float32 values are
rounded here exactly as torch's `.to(dtype)` rounds them (round to nearest even).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from bake.errors import UnsupportedError


def f32_to_bf16_bits(
    x: np.ndarray, out: np.ndarray | None = None, scratch: np.ndarray | None = None
) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even, NaN kept quiet.

    In uint32: u + 0x7FFF + (bit 16 of u), then the top half. No finite or infinite value
    overflows (the largest, -inf 0xFF800000, stays below 2^32); NaNs may wrap and are set
    to 0x7FC0 afterwards. `out` (uint16) receives the bits and `scratch` (uint32) holds the
    sums, both of x's shape, when given (no allocation)."""
    f32 = np.ascontiguousarray(x, dtype=np.float32)
    u = f32.view(np.uint32)
    total = np.right_shift(u, 16, out=scratch)
    total &= 1
    total += 0x7FFF
    total += u
    total >>= 16
    rounded = np.empty(f32.shape, np.uint16) if out is None else out
    np.copyto(rounded, total, casting="unsafe")
    if f32.size and np.isnan(f32.max()):  # max is NaN iff some value is (one cheap pass)
        rounded[np.isnan(f32)] = 0x7FC0
    return rounded


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def encode(values: np.ndarray, tag: str) -> bytes:
    """values (any float) -> little-endian bytes of safetensors dtype `tag` (a value out of
    the dtype's range becomes Inf: writers check what they store, Steering.check_written)."""
    with np.errstate(over="ignore"):
        f32 = np.asarray(values, dtype=np.float64).astype(np.float32)
        f16 = f32.astype("<f2") if tag == "F16" else None
    if tag == "F32":
        return f32.astype("<f4").tobytes()
    if f16 is not None:
        return f16.tobytes()
    if tag == "BF16":
        return f32_to_bf16_bits(f32).astype("<u2").tobytes()
    raise UnsupportedError(f"cannot write a bias in dtype {tag}; supported: F32, F16, BF16")


def decode(raw: bytes, tag: str) -> np.ndarray:
    """Inverse of encode, as float32."""
    if tag == "F32":
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if tag == "F16":
        return np.frombuffer(raw, dtype="<f2").astype(np.float32)
    if tag == "BF16":
        return bf16_bits_to_f32(np.frombuffer(raw, dtype="<u2"))
    raise UnsupportedError(f"cannot read dtype {tag}; supported: F32, F16, BF16")


def round_to(values: np.ndarray, tag: str) -> np.ndarray:
    """values rounded to dtype `tag` and back to float32 (what a baked tensor holds)."""
    return decode(encode(values, tag), tag)


def write_safetensors(
    path: Path,
    tensors: dict[str, tuple[str, tuple[int, ...], bytes]],
    metadata: dict[str, str] | None = None,
) -> int:
    """Write {name: (dtype tag, shape, raw bytes)}; returns the data size in bytes."""
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, (tag, shape, raw) in tensors.items():
        header[name] = {
            "dtype": tag,
            "shape": list(shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        offset += len(raw)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data section aligned to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, _, raw in tensors.values():
            f.write(raw)
    return offset
