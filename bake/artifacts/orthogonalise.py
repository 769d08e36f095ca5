"""Weight orthogonalisation, the one implementation that the bake, the GGUF writer and
`verify --static` share, so the bytes one writes are the bytes the other recomputes.

A writer of the residual stream, stored [out, in] (out = d_model), folds the projection of
its output y <- y - a r r^T y as

    W' = (I - a r r^T) W = W - a r c,   c = r^T W  (in,)        bias: b' = b - a r (r . b)

and the token embedding, stored [vocab, d], as E' = E (I - a r r^T) = E - a (E r) r^T.
Everything is computed in float64 from the stored values, then rounded once to float32 and
from there to the tensor's own dtype (F32, F16 or BF16), round to nearest even: the single
rounding path `round_bits`. Tensors stream in chunks of rows fixed by their shape alone
(about CHUNK_BYTES of float64), so memory stays flat in model size and every consumer sees
the same chunks; c is accumulated over the same chunks in the same order. Inside a chunk the
element-wise work (W - a r c, the embedding's update, the rounding) runs over blocks of about
BLOCK_ELEMENTS in reused per-thread buffers that stay in a core's L2 cache; every element is
computed alone, so the blocking changes no bit.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from bake.errors import UnsupportedError
from bake.files.tensor_bytes import f32_to_bf16_bits

# float64 bytes of one chunk of rows, the unit of c's accumulation (and of the embedding's
# E r): fixed, since the order of those sums decides the last bits, so the bytes written
CHUNK_BYTES = 1024 * 1024
# elements of one block of element-wise work: its float64, two uint32 and uint16 buffers
# (18 bytes an element, ~1.2 MiB) stay in a core's 2 MiB L2 cache (pass 2 measured on a
# 2048 x 5632 bf16 matrix, one core: ~2.8 ns per element at 32-64K, ~3.8 at 16K, ~3.1 at
# 128K, against ~6 ns for whole chunks in fresh arrays)
BLOCK_ELEMENTS = 64 * 1024
ELEMENT_TYPES: dict[str, np.dtype[Any]] = {
    "F32": np.dtype("<u4"),
    "F16": np.dtype("<u2"),
    "BF16": np.dtype("<u2"),
}


@dataclass(frozen=True)
class Projection:
    """y <- y - a r r^T y: a unit direction r (d,) float64 and a strength a (1 removes r)."""

    direction: np.ndarray
    strength: float

    @classmethod
    def of(cls, u: np.ndarray, strength: float) -> Projection:
        """From a stored unit direction u (float32): renormalised in float64."""
        r = np.asarray(u, dtype=np.float64).reshape(-1)
        return cls(r / np.linalg.norm(r), float(strength))


def to_float32(bits: np.ndarray, tag: str, out: np.ndarray | None = None) -> np.ndarray:
    """Element bit patterns of dtype `tag` (uint32 for F32, uint16 otherwise) -> float32,
    exact (every F16 and BF16 value is a float32 value); into `out` (uint32 scratch of
    bits' shape, viewed as float32) when given."""
    if tag == "F32":
        return bits.view("<f4")
    if tag not in ("F16", "BF16"):
        raise UnsupportedError(f"cannot orthogonalise a {tag} tensor; supported: F32, F16, BF16")
    f32 = np.empty(bits.shape, np.float32) if out is None else out.view(np.float32)
    if tag == "F16":
        np.copyto(f32, bits.view("<f2"))
    else:  # BF16: the bits are the top half of the float32's
        words = f32.view(np.uint32)
        np.copyto(words, bits)
        words <<= 16
    return f32


def to_float64(bits: np.ndarray, tag: str, out: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """Element bits of dtype `tag` -> float64 in `out` (exact), through `scratch` (uint32 of
    bits' shape)."""
    np.copyto(out, to_float32(bits, tag, scratch))
    return out


def round_bits(
    values: np.ndarray,
    tag: str,
    out: np.ndarray | None = None,
    scratch: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """float64 -> float32 -> dtype `tag`, each step round to nearest even; returns the bit
    patterns (what the tensor stores). The only rounding of an orthogonalised value. `out`
    (element bits, values' shape) receives them and `scratch` (two uint32 of values' shape)
    holds the float32 and the rounding sums, when given."""
    if scratch is None:
        f32 = values.astype(np.float32)
    else:
        f32 = scratch[0].view(np.float32)
        np.copyto(f32, values, casting="same_kind")
    if tag == "BF16":
        return f32_to_bf16_bits(f32, out, None if scratch is None else scratch[1])
    if tag not in ("F32", "F16"):
        raise UnsupportedError(f"cannot orthogonalise a {tag} tensor; supported: F32, F16, BF16")
    if tag == "F16":
        with np.errstate(over="ignore"):
            if out is None:
                return f32.astype("<f2").view(np.uint16)
            np.copyto(out.view("<f2"), f32, casting="same_kind")
        return out
    if out is None:
        return f32.view(np.uint32)
    np.copyto(out, f32.view(np.uint32))
    return out


def row_chunks(shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """[(r0, r1)]: rows of a tensor in chunks of about CHUNK_BYTES float64 (from the shape
    alone, so every consumer of a tensor uses the same chunks)."""
    rows = shape[0] if shape else 1
    width = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    step = max(1, CHUNK_BYTES // (8 * max(1, width)))
    return [(r0, min(rows, r0 + step)) for r0 in range(0, rows, step)]


def row_blocks(r0: int, r1: int, width: int) -> list[tuple[int, int]]:
    """[(b0, b1)]: rows r0:r1 in blocks of about BLOCK_ELEMENTS elements (whole rows)."""
    step = max(1, BLOCK_ELEMENTS // max(1, width))
    return [(b0, min(r1, b0 + step)) for b0 in range(r0, r1, step)]


def outer_into(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out_ij = a_i b_j, each one rounded product: (len(a), len(b)) float64. With numpy's
    default 8192-element buffer a row-broadcast product of rows narrower than a third of it
    is buffered across rows, ~4x slower (measured at 2048 wide: 1.2 against 0.3 ns an
    element); a 1024-element buffer keeps it one row per inner loop."""
    default = np.setbufsize(1024)  # this thread's setting
    try:
        np.multiply(a[:, None], b, out=out)
    finally:
        np.setbufsize(default)


class Scratch(threading.local):
    """One thread's reused buffers, by name, grown on demand (their old values left in)."""

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: Any = np.float64) -> np.ndarray:
        n = math.prod(shape)
        buf = self.buffers.get(name)
        if buf is None or buf.size < n or buf.dtype != dtype:
            buf = self.buffers[name] = np.empty(n, dtype)
        return buf[:n].reshape(shape)

    def words(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Two uint32 buffers of `shape`: a float32's bits and the rounding's sums."""
        return self.take("word", shape, np.uint32), self.take("sum", shape, np.uint32)


_scratch = Scratch()
Release = Callable[[int, int], None]  # (begin, end) byte offsets in the tensor, done with


class _Tensor:
    """A stored tensor's rows as element bits, and the release of rows read."""

    def __init__(self, raw: memoryview, tag: str, shape: tuple[int, ...], release: Release | None):
        self.raw, self.tag, self.shape, self.release = raw, tag, shape, release
        self.item = ELEMENT_TYPES[tag]
        self.width = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1

    def bits(self, r0: int, r1: int) -> np.ndarray:
        """Rows r0:r1 as element bits, (r1 - r0, width) or (r1 - r0,) for a vector."""
        n, row = (r1 - r0) * self.width, self.width * self.item.itemsize
        flat = np.frombuffer(self.raw, dtype=self.item, count=n, offset=r0 * row)
        return flat.reshape(r1 - r0, self.width) if len(self.shape) > 1 else flat

    def wide(self, r0: int, r1: int) -> np.ndarray:
        """Rows r0:r1 as float64 (exact), (r1 - r0, width), in this thread's scratch."""
        shape = (r1 - r0, self.width)
        wide, word = _scratch.take("wide", shape), _scratch.take("word", shape, np.uint32)
        return to_float64(self.bits(r0, r1), self.tag, wide, word)

    def new_bits(self, r0: int, r1: int) -> np.ndarray:
        """An empty (r1 - r0, width) array of element bits: a chunk of the output."""
        return np.empty((r1 - r0, self.width), self.item)

    def done(self, r0: int, r1: int) -> None:
        if self.release is not None:
            row = self.width * self.item.itemsize
            self.release(r0 * row, r1 * row)


def writer_chunks(
    raw: memoryview,
    tag: str,
    shape: tuple[int, ...],
    p: Projection,
    *,
    workers: int = 1,
    release: Release | None = None,
) -> Iterator[np.ndarray]:
    """The bits of W' = W - a r (r^T W) (or b' = b - a r (r . b) for a bias), chunk by chunk
    in row order; each chunk flat, in the tensor's element type. Pass 1 accumulates c = r^T W
    over the chunks in order; pass 2 computes the chunks, `workers` at a time (the same
    values for any count: each chunk is computed alone)."""
    if len(shape) not in (1, 2) or shape[0] != p.direction.shape[0]:
        raise UnsupportedError(
            f"a residual writer of shape {list(shape)} does not output {p.direction.shape[0]} "
            "values; the checkpoint does not follow its family's layout"
        )
    t, r = _Tensor(raw, tag, shape, release), p.direction
    if len(shape) == 1:  # a bias: the whole vector is one chunk
        b = to_float32(t.bits(0, shape[0]), tag).astype(np.float64)
        yield round_bits(b - p.strength * r * float(r @ b), tag)
        return
    chunks = row_chunks(shape)
    c = np.zeros(shape[1])  # c = a r^T W, accumulated over the chunks in order: (in,)
    for r0, r1 in chunks:
        c += r[r0:r1] @ t.wide(r0, r1)  # (rows,) @ (rows, in) float64
        t.done(r0, r1)
    c *= p.strength

    def chunk(rows: tuple[int, int]) -> np.ndarray:
        out = t.new_bits(*rows)  # (rows, in)
        for b0, b1 in row_blocks(*rows, t.width):
            shape = (b1 - b0, t.width)
            w, words = _scratch.take("product", shape), _scratch.words(shape)
            outer_into(r[b0:b1], c, w)  # a r_i c_j: (block, in) float64
            np.subtract(to_float32(t.bits(b0, b1), tag, words[0]), w, out=w)  # W - a r c
            round_bits(w, tag, out[b0 - rows[0] : b1 - rows[0]], words)
        t.done(*rows)
        return out.reshape(-1)

    yield from _in_order(chunk, chunks, workers)


def embedding_chunks(
    raw: memoryview,
    tag: str,
    shape: tuple[int, ...],
    p: Projection,
    *,
    workers: int = 1,
    release: Release | None = None,
) -> Iterator[np.ndarray]:
    """The bits of E' = E - a (E r) r^T, chunk by chunk in row order (rows are tokens)."""
    if len(shape) != 2 or shape[1] != p.direction.shape[0]:
        raise UnsupportedError(
            f"the token embedding has shape {list(shape)}, not (vocab, {p.direction.shape[0]})"
        )
    t, r = _Tensor(raw, tag, shape, release), p.direction

    def chunk(rows: tuple[int, int]) -> np.ndarray:
        e = t.wide(*rows)  # (rows, d) float64
        s = (e @ r) * p.strength  # a E r: (rows,)
        out = t.new_bits(*rows)
        for b0, b1 in row_blocks(0, rows[1] - rows[0], t.width):
            shape = (b1 - b0, t.width)
            update, words = _scratch.take("product", shape), _scratch.words(shape)
            outer_into(s[b0:b1], r, update)  # a (E r)_i r_j: (block, d)
            np.subtract(e[b0:b1], update, out=e[b0:b1])
            round_bits(e[b0:b1], tag, out[b0:b1], words)
        t.done(*rows)
        return out.reshape(-1)

    yield from _in_order(chunk, row_chunks(shape), workers)


def _in_order(
    fn: Callable[[tuple[int, int]], np.ndarray], items: list[tuple[int, int]], workers: int
) -> Iterator[np.ndarray]:
    """fn over items, results in order; with workers > 1, that many threads (numpy releases
    the GIL in its loops) and at most 2 x workers chunks in flight."""
    if workers <= 1 or len(items) < 2:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="steerbake-ortho") as pool:
        pending: deque[Future[np.ndarray]] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def rewritten_chunks(
    raw: memoryview,
    tag: str,
    shape: tuple[int, ...],
    p: Projection,
    embedding: bool,
    *,
    workers: int = 1,
    release: Release | None = None,
) -> Iterator[np.ndarray]:
    """A rewritten tensor's bits, chunk by chunk: the embedding's or a writer's."""
    make = embedding_chunks if embedding else writer_chunks
    return make(raw, tag, shape, p, workers=workers, release=release)
