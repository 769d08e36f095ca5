"""The one GGUF reader, and the GGUF vocabulary steerbake uses.

read_layout parses a GGUF's header (keys and values) and tensor table without decoding
tensor data, for any tensor type (quantized, or a type id gguf-py does not know), and
checks that every tensor's bytes are present and no two overlap; small float tensors
(biases, control-vector directions) are then read by offset. Key and tensor names come from
gguf-py's constants (gguf.Keys, gguf.TENSOR_NAMES); the keys gguf-py has no constant for
(control vectors, steerbake's own) are defined here, once.
"""

from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from bake.errors import InputError, UnsupportedError

_MAX_DIMS = 4  # GGML_MAX_DIMS
_SUPPORTED_VERSIONS = (2, 3)
_V = gguf.GGUFValueType
_SCALAR_FORMATS: dict[int, str] = {  # GGUF scalar value type -> struct format
    _V.UINT8: "B", _V.INT8: "b", _V.UINT16: "H", _V.INT16: "h", _V.UINT32: "I",
    _V.INT32: "i", _V.FLOAT32: "f", _V.BOOL: "?", _V.UINT64: "Q", _V.INT64: "q",
    _V.FLOAT64: "d",
}  # fmt: skip


# --------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class TensorEntry:
    """One row of the tensor table: dims in GGUF order (ne0 first), raw type id."""

    name: str
    dims: tuple[int, ...]
    type_id: int
    offset: int  # relative to the data section

    @property
    def type_name(self) -> str:
        try:
            return gguf.GGMLQuantizationType(self.type_id).name
        except ValueError:
            return f"unknown type {self.type_id}"

    @property
    def known(self) -> bool:
        try:
            return gguf.GGMLQuantizationType(self.type_id) in gguf.GGML_QUANT_SIZES
        except ValueError:
            return False

    def nbytes(self) -> int:
        """Data size from the type's block geometry (known types only)."""
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(self.type_id)]
        n = int(np.prod(self.dims, dtype=np.int64)) if self.dims else 1
        if n % block:
            raise InputError(
                f"tensor {self.name} has {n} elements, not a multiple of its "
                f"{self.type_name} block of {block}; the file is corrupted"
            )
        return n // block * size


@dataclass
class GgufLayout:
    """BASE's header: where each key and tensor lies, and the few values the patch needs."""

    path: Path
    file_size: int
    version: int
    kv_ranges: list[tuple[str, int, int]]  # key, absolute start, end
    values: dict[str, Any]  # scalar and string values (arrays: their length)
    tensors: list[TensorEntry]
    alignment: int
    data_start: int
    sizes: dict[str, int] = field(default_factory=dict)  # padded bytes each tensor occupies

    @property
    def arch(self) -> str:
        return self.string(gguf.Keys.General.ARCHITECTURE) or ""

    def arch_value(self, key: str) -> Any:
        """A per-architecture key, e.g. gguf.Keys.LLM.BLOCK_COUNT ('{arch}.block_count')."""
        return self.values.get(key.format(arch=self.arch))

    def string(self, key: str) -> str | None:
        value = self.values.get(key)
        return value if isinstance(value, str) else None

    def integer(self, key: str) -> int | None:
        value = self.values.get(key)
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else None

    def tensor(self, name: str) -> TensorEntry | None:
        return next((t for t in self.tensors if t.name == name), None)

    def string_array(self, key: str) -> list[bytes] | None:
        """The items of an array-of-strings value (None: no such key, or another type)."""
        start = next((s for k, s, _ in self.kv_ranges if k == key), None)
        if start is None:
            return None
        with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            r = _Reader(m, self.path, self.file_size)
            r.skip(start)
            r.skip(r.scalar("Q"))  # the key
            if r.scalar("I") != _V.ARRAY or r.scalar("I") != _V.STRING:
                return None
            return [r.exact(r.scalar("Q")) for _ in range(r.scalar("Q"))]

    def read_floats(self, t: TensorEntry) -> np.ndarray:
        """A small F32, F16 or BF16 tensor's values as float64, flat (n,)."""
        q = gguf.GGMLQuantizationType
        formats: dict[int, Any] = {q.F32: "<f4", q.F16: "<f2", q.BF16: "<u2"}
        if t.type_id not in formats:
            raise UnsupportedError(f"{self.path}: {t.name} is {t.type_name}, not F32/F16/BF16")
        n = int(np.prod(t.dims, dtype=np.int64))
        dtype = np.dtype(formats[t.type_id])
        with open(self.path, "rb") as f:
            f.seek(self.data_start + t.offset)
            raw = np.frombuffer(f.read(n * dtype.itemsize), dtype=dtype)
        if raw.size != n:
            raise _truncated(self.path)
        with np.errstate(invalid="ignore", over="ignore"):  # NaN and Inf read as they are
            if t.type_id == q.BF16:  # bf16: the high half of a float32
                return (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
            return raw.astype(np.float64)


class _Reader:
    """Sequential little-endian reads over a read-only memory map of the file (only the
    header's pages are touched); names the file when it ends early."""

    def __init__(self, buf: Any, path: Path, size: int) -> None:
        self.buf, self.path, self.size, self.pos = buf, path, size, 0

    def tell(self) -> int:
        return self.pos

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise _truncated(self.path)
        self.pos += n

    def exact(self, n: int) -> bytes:
        start = self.pos
        self.skip(n)
        return bytes(self.buf[start : self.pos])

    def scalar(self, fmt: str) -> Any:
        start = self.pos
        self.skip(struct.calcsize(fmt))
        return struct.unpack_from("<" + fmt, self.buf, start)[0]

    def string(self) -> str:
        return self.exact(self.scalar("Q")).decode("utf-8", errors="replace")


def _not_gguf(path: Path) -> InputError:
    return InputError(
        f"{path} is not a GGUF file (no GGUF magic); pass a .gguf file (a model written "
        "by llama.cpp's converter or `steerbake gguf`, or a control vector)"
    )


def _truncated(path: Path) -> InputError:
    return InputError(
        f"{path} is truncated (it ends inside its header or tensor data); "
        "download or copy the GGUF again"
    )


def read_layout(path: Path) -> GgufLayout:
    """Parse BASE's header and tensor table; checks that every tensor's bytes are present."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist or is not a file; pass a .gguf model file")
    size = path.stat().st_size
    if size < 4:
        raise _not_gguf(path)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        r = _Reader(buf, path, size)
        if r.scalar("I") != gguf.GGUF_MAGIC:
            raise _not_gguf(path)
        version = r.scalar("I")
        if version & 0xFFFF == 0:
            raise UnsupportedError(
                f"{path} is a big-endian GGUF; convert it to little-endian "
                "(gguf-py's gguf_convert_endian) and patch that"
            )
        if version not in _SUPPORTED_VERSIONS:
            raise UnsupportedError(
                f"{path} is GGUF version {version}; steerbake patches "
                f"versions {', '.join(map(str, _SUPPORTED_VERSIONS))}"
            )
        n_tensors, n_kv = r.scalar("Q"), r.scalar("Q")
        if n_tensors > size or n_kv > size:
            raise _truncated(path)
        kv_ranges, values = _read_kvs(r, n_kv)
        tensors = [_read_tensor_info(r) for _ in range(n_tensors)]
        header_end = r.tell()
    alignment = int(values.get(gguf.Keys.General.ALIGNMENT, gguf.GGUF_DEFAULT_ALIGNMENT))
    if alignment <= 0 or alignment & (alignment - 1):
        raise InputError(
            f"{path}: general.alignment {alignment} is not a power of two; the file is corrupted"
        )
    layout = GgufLayout(
        path, size, version, kv_ranges, values, tensors, alignment, padded(header_end, alignment)
    )
    layout.sizes = _tensor_sizes(layout)
    return layout


def _read_kvs(r: _Reader, count: int) -> tuple[list[tuple[str, int, int]], dict[str, Any]]:
    ranges: list[tuple[str, int, int]] = []
    values: dict[str, Any] = {}
    for _ in range(count):
        start = r.tell()
        key = r.string()
        if key in values:
            raise InputError(f"{r.path} has the key {key!r} twice; the file is corrupted")
        values[key] = _read_value(r, r.scalar("I"))
        ranges.append((key, start, r.tell()))
    return ranges, values


def _read_value(r: _Reader, vtype: int) -> Any:
    """A scalar or string value; an array is skipped and stands for its length."""
    if vtype in _SCALAR_FORMATS:
        return r.scalar(_SCALAR_FORMATS[vtype])
    if vtype == _V.STRING:
        return r.string()
    if vtype != _V.ARRAY:
        raise InputError(
            f"{r.path}: unknown value type {vtype} in the header; the file is "
            "corrupted or from a newer GGUF version"
        )
    item_type, n = r.scalar("I"), r.scalar("Q")
    if item_type in _SCALAR_FORMATS:
        r.skip(n * struct.calcsize(_SCALAR_FORMATS[item_type]))
    elif item_type == _V.STRING:
        for _ in range(n):
            r.skip(r.scalar("Q"))
    else:
        for _ in range(n):
            _read_value(r, item_type)
    return n


def _read_tensor_info(r: _Reader) -> TensorEntry:
    name = r.string()
    n_dims = r.scalar("I")
    if not 1 <= n_dims <= _MAX_DIMS:
        raise InputError(
            f"{r.path}: tensor {name!r} has {n_dims} dimensions; the file is corrupted"
        )
    dims = tuple(r.scalar("Q") for _ in range(n_dims))
    return TensorEntry(name, dims, r.scalar("I"), r.scalar("Q"))


def padded(n: int, alignment: int) -> int:
    return n + (-n % alignment)


def _tensor_sizes(layout: GgufLayout) -> dict[str, int]:
    """Padded bytes each tensor occupies in BASE: from its type when known, else the gap to
    the next tensor (or the end of the file). Refuses overlaps and missing bytes."""
    path, data_len = layout.path, layout.file_size - layout.data_start
    by_offset = sorted(layout.tensors, key=lambda t: t.offset)
    sizes: dict[str, int] = {}
    for i, t in enumerate(by_offset):
        if t.name in sizes:
            raise InputError(f"{path} has the tensor {t.name!r} twice; the file is corrupted")
        if t.offset % layout.alignment:
            raise InputError(
                f"{path}: tensor {t.name} is not aligned to {layout.alignment} "
                "bytes; the file is corrupted"
            )
        gap = (by_offset[i + 1].offset if i + 1 < len(by_offset) else data_len) - t.offset
        if t.known:
            need = t.nbytes()
            if t.offset + need > data_len:
                raise _truncated(path)
            if need > gap:
                raise InputError(
                    f"{path}: tensor {t.name} overlaps the next one; the file is corrupted"
                )
            sizes[t.name] = padded(need, layout.alignment)
        else:
            if gap < 0:
                raise _truncated(path)
            sizes[t.name] = padded(gap, layout.alignment)
    return sizes


def check_for_llama(layout: GgufLayout) -> None:
    """What llama.cpp asserts on (aborting the process) instead of reporting: checked here
    first, so a damaged file is one error line. Today: a token listed twice."""
    tokens = layout.string_array(gguf.Keys.Tokenizer.LIST)
    if tokens is not None and len(set(tokens)) != len(tokens):
        raise InputError(
            f"{layout.path}: its vocabulary ({gguf.Keys.Tokenizer.LIST}) lists a token twice; "
            "the file is corrupted (llama.cpp would abort on it): download or convert it again"
        )


# --------------------------------------------------------------------------- vocabulary
STEERBAKE_VERSION_KEY = "steerbake.version"
STEERBAKE_PLAN_KEY = "steerbake.plan"  # JSON of the plan baked into the file
# Which parts of the plan the file's weights carry, comma-separated: "add" (ffn_down biases),
# "ablate" (orthogonalised weights), or "ablate" alone when the additive part of a `both`
# plan ships as a control vector beside the file. Absent in older files: "add".
STEERBAKE_BAKED_KEY = "steerbake.baked"
STEERBAKE_PATCH_BASE_KEY = "steerbake.patch.base"  # file name of the GGUF that was patched
# llama.cpp control vectors (gguf-py has no constants for them)
CONTROL_VECTOR_ARCH = "controlvector"
CONTROL_VECTOR_MODEL_HINT = "controlvector.model_hint"
CONTROL_VECTOR_LAYER_COUNT = "controlvector.layer_count"
CONTROL_VECTOR_PREFIX = "direction."


_FFN_DOWN_BIAS = re.compile(
    re.escape(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.FFN_DOWN] + ".bias").replace(
        re.escape("{bid}"), r"(\d+)"
    )
)


def ffn_down_name(layer: int, kind: str = "bias") -> str:
    """blk.N.ffn_down.<kind>: the MLP down projection of block N (the steering bias slot)."""
    return gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.FFN_DOWN].format(bid=layer) + f".{kind}"


def ffn_down_bias_blocks(layout: GgufLayout) -> list[int]:
    """Blocks N (< the block count) that have a blk.N.ffn_down.bias tensor; found from the
    tensor names, so a corrupted block count cannot make this loop billions of times."""
    blocks = layout.arch_value(gguf.Keys.LLM.BLOCK_COUNT)
    blocks = blocks if isinstance(blocks, int) and not isinstance(blocks, bool) else 0
    found = {int(m.group(1)) for t in layout.tensors if (m := _FFN_DOWN_BIAS.fullmatch(t.name))}
    return sorted(n for n in found if n < blocks)


def baked_parts(layout: GgufLayout) -> list[str]:
    """The parts of a plan a GGUF's weights carry (STEERBAKE_BAKED_KEY): [] when it carries
    none; a file without the key but with a plan or ffn_down biases carries "add"."""
    value = layout.string(STEERBAKE_BAKED_KEY)
    if value is not None:
        return sorted(p for p in value.split(",") if p)
    if STEERBAKE_PLAN_KEY in layout.values or ffn_down_bias_blocks(layout):
        return ["add"]
    return []
