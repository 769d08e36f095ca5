"""safetensors headers are checked before any byte is read by offset: tensors inside the
data section, sized by their shape and dtype, and never overlapping (issue 22, item 4e)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from bake.errors import InputError
from bake.files.shards import read_header


def _write(path: Path, header: dict[str, object], data_len: int) -> Path:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(data_len))
    return path


def _t(begin: int, end: int, shape: list[int], dtype: str = "F32") -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def test_valid_header_is_read(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.safetensors", {"a": _t(0, 16, [4]), "b": _t(16, 24, [2, 1])}, 24)
    assert sorted(read_header(path).tensors) == ["a", "b"]


@pytest.mark.parametrize(
    "tensors, needle",
    [
        ({"a": _t(0, 16, [4]), "b": _t(8, 24, [4])}, "overlap"),
        ({"a": _t(0, 16, [4]), "b": _t(0, 16, [4])}, "overlap"),
        ({"a": _t(0, 16, [5])}, "at tensor 'a'"),  # 16 bytes cannot hold 5 floats
        ({"a": _t(0, 16, [-4, -1])}, "at tensor 'a'"),
        ({"a": _t(0, 16, [4.0])}, "at tensor 'a'"),  # type: ignore[list-item]
        ({"a": _t(16, 8, [0])}, "at tensor 'a'"),
    ],
)
def test_inconsistent_header_is_refused(
    tmp_path: Path, tensors: dict[str, object], needle: str
) -> None:
    path = _write(tmp_path / "bad.safetensors", tensors, 24)
    with pytest.raises(InputError, match=needle) as err:
        read_header(path)
    assert "download or copy it again" in str(err.value)
