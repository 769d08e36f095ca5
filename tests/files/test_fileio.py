"""Streamed output (bake/fileio.py): StreamWriter and copy_hashed write exactly the bytes
given and hash them, with O_DIRECT, with plain writes, and when O_DIRECT fails mid-file."""

from __future__ import annotations

import errno
import functools
import hashlib
import itertools
import os
from pathlib import Path

import numpy as np
import pytest

from bake.files import fileio
from bake.files.fileio import StreamWriter, copy_hashed, sha256_file

SMALL_BUFFER = 64 * 1024  # several buffer rotations on a few hundred KB


@pytest.fixture(autouse=True)
def small_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fileio, "STREAM_BUFFER", SMALL_BUFFER)


def _payload(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("size", [0, 1, 4095, 4096, SMALL_BUFFER + 1, 3 * SMALL_BUFFER + 17])
def test_stream_writer_writes_and_hashes_exactly(tmp_path: Path, size: int, direct: bool) -> None:
    data = _payload(size)
    path = tmp_path / "out.bin"
    with StreamWriter(path, sha256=True, direct=direct) as out:
        for start in range(0, size, 5000):  # pieces that straddle buffer ends
            out.write(np.frombuffer(data[start : start + 5000], dtype=np.uint8))
        digest = out.close()
    assert path.read_bytes() == data
    assert digest == hashlib.sha256(data).hexdigest()


def test_write_into_fills_the_buffer_in_place_or_through_scratch(tmp_path: Path) -> None:
    """Pieces written in place, one that straddles two buffers (scratch), mixed with write."""
    data = _payload(3 * SMALL_BUFFER + 999, seed=3)
    cuts = [0, 1000, SMALL_BUFFER - 10, SMALL_BUFFER + 5000, 2 * SMALL_BUFFER + 1, len(data)]
    path = tmp_path / "out.bin"

    def fill(piece: bytes, view: memoryview) -> None:
        view[:] = piece

    with StreamWriter(path, sha256=True) as out:
        for i, (a, b) in enumerate(itertools.pairwise(cuts)):
            if i % 2:
                out.write(data[a:b])
            else:
                out.write_into(b - a, functools.partial(fill, data[a:b]))
        digest = out.close()
    assert path.read_bytes() == data and digest == hashlib.sha256(data).hexdigest()


def test_stream_writer_overwrites_from_the_start(tmp_path: Path) -> None:
    """The GGUF writer rewrites the header GGUFWriter put there: no truncation first, and
    the file ends where the stream ends."""
    path = tmp_path / "out.bin"
    path.write_bytes(b"x" * 10_000)
    with StreamWriter(path) as out:
        out.write(b"head")
        assert out.close() is None
    assert path.read_bytes() == b"head"


def test_stream_writer_falls_back_when_o_direct_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filesystem that opens with O_DIRECT but refuses the writes (EINVAL) gets plain
    writes from then on; nothing is lost or doubled."""
    fcntl = pytest.importorskip("fcntl")
    if not getattr(os, "O_DIRECT", 0):
        pytest.skip("no O_DIRECT on this platform")
    real_pwrite = os.pwrite
    refused: list[int] = []

    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    data = _payload(2 * SMALL_BUFFER + 123, seed=1)
    path = tmp_path / "out.bin"
    with StreamWriter(path, sha256=True) as out:
        assert out.direct
        out.write(data)
        digest = out.close()
    assert path.read_bytes() == data and digest == hashlib.sha256(data).hexdigest()
    assert refused == [0] and not out.direct


def test_stream_writer_error_closes_and_propagates(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    with pytest.raises(ValueError, match="boom"), StreamWriter(path, sha256=True) as out:
        out.write(_payload(SMALL_BUFFER + 5))
        raise ValueError("boom")
    assert out.closed


@pytest.mark.parametrize("size", [0, 3 * SMALL_BUFFER + 17])
def test_copy_hashed_copies_bytes_and_metadata(tmp_path: Path, size: int) -> None:
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    src.write_bytes(_payload(size, seed=2))
    os.chmod(src, 0o640)
    digest = copy_hashed(src, dst)
    assert dst.read_bytes() == src.read_bytes()
    assert digest == sha256_file(src) == sha256_file(dst)
    assert (dst.stat().st_mode & 0o777) == 0o640
    assert dst.stat().st_mtime_ns == src.stat().st_mtime_ns
