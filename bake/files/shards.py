"""safetensors files as bytes: the header (the first 8 + N bytes: tensor names, dtypes,
shapes, offsets), and memory-mapped byte ranges of tensors."""

from __future__ import annotations

import itertools
import json
import math
import mmap
import struct
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bake.errors import InputError

_MAX_HEADER = 100 * 1024 * 1024


# safetensors dtype tag -> bytes per element
DTYPE_SIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
TORCH_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


@dataclass
class ShardHeader:
    """A parsed safetensors header: tensors, metadata and where the data begins."""

    path: Path
    tensors: dict[str, dict[str, Any]]
    metadata: dict[str, str]
    data_start: int  # byte offset of the data section: 8 + header length


def read_header(path: Path) -> ShardHeader:
    """Parse and sanity-check a safetensors header; a bad one names the file and the fix."""
    fix = "the file is damaged or incomplete: download or copy it again"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise InputError(f"{path}: not a safetensors file (shorter than 8 bytes); {fix}")
            (n,) = struct.unpack("<Q", raw_len)
            if n == 0 or n > _MAX_HEADER or 8 + n > size:
                raise InputError(f"{path}: corrupted safetensors header (length {n}); {fix}")
            header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: corrupted safetensors header ({e}); {fix}") from None
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: corrupted safetensors header (not a JSON object); {fix}")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise InputError(f"{path}: corrupted safetensors header (__metadata__); {fix}")
    spans = sorted((_span(path, name, t, size - 8 - n), name) for name, t in header.items())
    for (prev, prev_name), (span, name) in itertools.pairwise(spans):
        if span[0] < prev[1]:
            raise InputError(
                f"{path}: corrupted safetensors header: tensors {prev_name!r} and {name!r} "
                f"overlap (bytes {prev[0]}-{prev[1]} and {span[0]}-{span[1]}); {fix}"
            )
    return ShardHeader(path, header, metadata, 8 + n)


def _span(path: Path, name: str, t: Any, data_len: int) -> tuple[int, int]:
    """(begin, end) of a tensor's bytes in the data section, checked: inside it, and
    end - begin = prod(shape) * the dtype's size."""
    try:
        begin, end = t["data_offsets"]
        shape = t["shape"]
        ok = (
            all(type(x) is int and x >= 0 for x in (begin, end, *shape))
            and begin <= end <= data_len
            and end - begin == math.prod(shape) * DTYPE_SIZES[t["dtype"]]
        )
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(
            f"{path}: corrupted safetensors header at tensor {name!r}; the file is damaged or "
            "incomplete: download or copy it again"
        )
    return begin, end


class MappedShards:
    """Memory-mapped safetensors shards of one folder; raw(name) is a tensor's bytes."""

    def __init__(self, headers: dict[str, ShardHeader], stack: ExitStack) -> None:
        self.maps: dict[str, mmap.mmap] = {}
        self.paths = {shard: header.path for shard, header in headers.items()}
        self.where: dict[str, tuple[str, int, int]] = {}  # tensor -> (shard, begin, end)
        for shard, header in headers.items():
            f = stack.enter_context(open(header.path, "rb"))  # noqa: SIM115
            self.maps[shard] = stack.enter_context(
                mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            )
            for name, t in header.tensors.items():
                begin, end = t["data_offsets"]
                self.where[name] = (shard, header.data_start + begin, header.data_start + end)

    def raw(self, name: str) -> memoryview:
        shard, begin, end = self.where[name]
        return memoryview(self.maps[shard])[begin:end]


def release_pages(
    mapping: mmap.mmap, start: int, length: int, advice: str = "MADV_DONTNEED"
) -> None:
    """madvise from the page holding `start` up to the page holding start + length, that one
    excluded (a next read may still need it; length 0: to the end): with MADV_DONTNEED the
    pages leave this process's mapping (the page cache keeps them), so streaming a mapped
    file keeps memory flat. A hint: never an error, a no-op where the platform lacks it."""
    option = getattr(mmap, advice, None)
    if option is None or not hasattr(mapping, "madvise"):
        return
    first = start // mmap.PAGESIZE * mmap.PAGESIZE
    end = len(mapping) if length == 0 else (start + length) // mmap.PAGESIZE * mmap.PAGESIZE
    if end > first:
        with suppress(OSError, ValueError):
            mapping.madvise(option, first, end - first)
