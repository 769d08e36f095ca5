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
the same chunks; c is accumulated over the same chunks in the same order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from bake.errors import UnsupportedError
from bake.files.tensor_bytes import f32_to_bf16_bits

# float64 bytes of one chunk of rows: small enough that a chunk's temporaries stay in cache
# (measured on a 2048 x 5632 bf16 matrix: ~5 ns per element at 1 MiB, ~22 ns at 4 MiB)
CHUNK_BYTES = 1024 * 1024
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


def to_float32(bits: np.ndarray, tag: str) -> np.ndarray:
    """Element bit patterns of dtype `tag` (uint32 for F32, uint16 otherwise) -> float32,
    exact (every F16 and BF16 value is a float32 value)."""
    if tag == "F32":
        return bits.view("<f4")
    if tag == "F16":
        return bits.view("<f2").astype(np.float32)
    if tag == "BF16":
        return np.left_shift(bits, 16, dtype=np.uint32).view(np.float32)  # the top half
    raise UnsupportedError(f"cannot orthogonalise a {tag} tensor; supported: F32, F16, BF16")


def round_bits(values: np.ndarray, tag: str) -> np.ndarray:
    """float64 -> float32 -> dtype `tag`, each step round to nearest even; returns the bit
    patterns (what the tensor stores). The only rounding of an orthogonalised value."""
    f32 = values.astype(np.float32)
    if tag == "F32":
        return f32.view(np.uint32)
    if tag == "F16":
        with np.errstate(over="ignore"):
            return f32.astype("<f2").view(np.uint16)
    if tag == "BF16":
        return f32_to_bf16_bits(f32)
    raise UnsupportedError(f"cannot orthogonalise a {tag} tensor; supported: F32, F16, BF16")


def row_chunks(shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """[(r0, r1)]: rows of a tensor in chunks of about CHUNK_BYTES float64 (from the shape
    alone, so every consumer of a tensor uses the same chunks)."""
    rows = shape[0] if shape else 1
    width = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    step = max(1, CHUNK_BYTES // (8 * max(1, width)))
    return [(r0, min(rows, r0 + step)) for r0 in range(0, rows, step)]


Release = Callable[[int, int], None]  # (begin, end) byte offsets in the tensor, done with


class _Tensor:
    """A stored tensor's rows as element bits, and the release of rows read."""

    def __init__(self, raw: memoryview, tag: str, shape: tuple[int, ...], release: Release | None):
        self.raw, self.tag, self.shape, self.release = raw, tag, shape, release
        self.item = ELEMENT_TYPES[tag]
        self.width = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1

    def rows(self, r0: int, r1: int) -> np.ndarray:
        """Rows r0:r1 as float32, (r1 - r0, width) or (r1 - r0,) for a vector."""
        n, row = (r1 - r0) * self.width, self.width * self.item.itemsize
        flat = np.frombuffer(self.raw, dtype=self.item, count=n, offset=r0 * row)
        bits = flat.reshape(r1 - r0, self.width) if len(self.shape) > 1 else flat
        return to_float32(bits, self.tag)

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
        b = t.rows(0, shape[0]).astype(np.float64)
        yield round_bits(b - p.strength * r * float(r @ b), tag)
        return
    chunks = row_chunks(shape)
    c = np.zeros(shape[1])  # c = a r^T W, accumulated over the chunks in order: (in,)
    for r0, r1 in chunks:
        c += r[r0:r1] @ t.rows(r0, r1).astype(np.float64)
        t.done(r0, r1)
    c *= p.strength

    def chunk(rows: tuple[int, int]) -> np.ndarray:
        r0, r1 = rows
        w = np.multiply.outer(r[r0:r1], c)  # a r_i c_j: (rows, in) float64
        np.subtract(t.rows(r0, r1), w, out=w)  # W - a r c, W widened exactly
        t.done(r0, r1)
        return round_bits(w, tag).reshape(-1)

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
        r0, r1 = rows
        e = t.rows(r0, r1).astype(np.float64)  # (rows, d)
        e -= np.multiply.outer((e @ r) * p.strength, r)
        t.done(r0, r1)
        return round_bits(e, tag).reshape(-1)

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
