"""Control-vector GGUFs (bake/control_vector.py): our writer, files written directly with the
gguf package (as llama.cpp, repeng or EasySteer write them), import, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bake.artifacts.control_vector import (
    ARCHITECTURE,
    KEY_LAYER_COUNT,
    KEY_MODEL_HINT,
    load_control_vector,
    read_control_vector,
    write_control_vector,
)
from bake.errors import InputError
from tests.conftest import run_cli


def _vectors(hidden: int, blocks: list[int], seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {b: rng.normal(size=hidden).astype(np.float32) for b in blocks}


def _gguf_package_file(
    path: Path,
    tensors: dict[str, np.ndarray],
    *,
    arch: str = ARCHITECTURE,
    hint: str | None = "qwen3",
) -> Path:
    """A control vector written directly with gguf's GGUFWriter, no steerbake code."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    if hint is not None:
        writer.add_string("controlvector.model_hint", hint)
        writer.add_int32("controlvector.layer_count", len(tensors))
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_round_trip_and_layout(tmp_path: Path) -> None:
    import gguf

    vectors = _vectors(64, [1, 2, 3])
    path = tmp_path / "cv.gguf"
    write_control_vector(path, vectors, "qwen3", 4)
    reader = gguf.GGUFReader(str(path))
    assert reader.get_field("general.architecture").contents() == ARCHITECTURE
    assert reader.get_field(KEY_MODEL_HINT).contents() == "qwen3"
    assert reader.get_field(KEY_LAYER_COUNT).contents() == 4
    assert sorted(t.name for t in reader.tensors) == ["direction.1", "direction.2", "direction.3"]
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in reader.tensors)
    back = read_control_vector(path)
    assert sorted(back) == [1, 2, 3]
    for block, v in vectors.items():
        np.testing.assert_array_equal(back[block], v)
    assert not list(tmp_path.glob(".steerbake-tmp-*"))  # written aside, renamed into place


def test_reads_file_written_with_gguf_package(tmp_path: Path) -> None:
    vectors = _vectors(64, [2, 5], seed=3)
    path = _gguf_package_file(
        tmp_path / "repeng.gguf", {f"direction.{b}": v for b, v in vectors.items()}
    )
    cv = load_control_vector(path)
    assert cv.model_hint == "qwen3" and cv.n_embd == 64
    assert sorted(cv.directions) == [2, 5]
    for block, v in vectors.items():
        np.testing.assert_array_equal(cv.directions[block], v)


@pytest.mark.parametrize("writer", ["steerbake", "gguf"])
def test_vectors_import_gguf(tmp_path: Path, qwen3_dir: Path, writer: str) -> None:
    """`steerbake vectors import FILE.gguf` turns direction.N into our vector file for block N."""
    from bake.artifacts.vectors import SteeringVectors

    vectors = _vectors(64, [1, 3], seed=4)
    src = tmp_path / "cv.gguf"
    if writer == "steerbake":
        write_control_vector(src, vectors, "qwen3", 4)
    else:
        _gguf_package_file(src, {f"direction.{b}": v for b, v in vectors.items()})
    out = tmp_path / "vectors.safetensors"
    proc = run_cli("vectors", "import", str(src), "-o", str(out), "--model", str(qwen3_dir))
    assert proc.returncode == 0, proc.stderr
    imported = SteeringVectors.load(out)
    assert imported.layers == [1, 3]
    for block, v in vectors.items():
        np.testing.assert_allclose(imported.vector(block), v, rtol=1e-6, atol=1e-7)


def test_block_zero_refused_on_import(tmp_path: Path, qwen3_dir: Path) -> None:
    path = _gguf_package_file(
        tmp_path / "zero.gguf",
        {"direction.0": np.ones(64, np.float32), "direction.1": np.ones(64, np.float32)},
    )
    with pytest.raises(InputError, match=r"direction\.0") as err:
        read_control_vector(path)
    assert "block 0" in str(err.value) and "N >= 1" in str(err.value)
    proc = run_cli(
        "vectors",
        "import",
        str(path),
        "-o",
        str(tmp_path / "v.safetensors"),
        "--model",
        str(qwen3_dir),
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "block 0" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_writer_refuses_block_zero_and_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="block 0 cannot be steered by a control vector"):
        write_control_vector(tmp_path / "cv.gguf", _vectors(64, [0, 1]), "qwen3", 4)
    with pytest.raises(InputError, match="outside the model's blocks"):
        write_control_vector(tmp_path / "cv.gguf", _vectors(64, [4]), "qwen3", 4)
    with pytest.raises(InputError, match="different lengths"):
        write_control_vector(tmp_path / "cv.gguf", {1: np.ones(64), 2: np.ones(32)}, "qwen3", 4)
    assert not (tmp_path / "cv.gguf").exists()


def test_truncated_and_non_gguf_files(tmp_path: Path) -> None:
    good = tmp_path / "cv.gguf"
    write_control_vector(good, _vectors(64, [1, 2]), "llama", 4)
    data = good.read_bytes()
    for cut in (10, 60, len(data) - 100):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(InputError, match="truncated"):
            read_control_vector(bad)
    text = tmp_path / "notes.gguf"
    text.write_text("not a gguf at all")
    with pytest.raises(InputError, match="not a GGUF file"):
        read_control_vector(text)
    with pytest.raises(InputError, match="does not exist"):
        read_control_vector(tmp_path / "missing.gguf")


def test_malformed_tensors(tmp_path: Path) -> None:
    model = _gguf_package_file(
        tmp_path / "model.gguf",
        {"token_embd.weight": np.ones((4, 8), np.float32)},
        arch="llama",
        hint=None,
    )
    with pytest.raises(InputError, match="is a GGUF model"):
        read_control_vector(model)
    half = _gguf_package_file(tmp_path / "f16.gguf", {"direction.1": np.ones(64, np.float16)})
    with pytest.raises(InputError, match="must be F32"):
        read_control_vector(half)
    named = _gguf_package_file(tmp_path / "named.gguf", {"direction.x": np.ones(64, np.float32)})
    with pytest.raises(InputError, match="layer number"):
        read_control_vector(named)
    two_d = _gguf_package_file(tmp_path / "2d.gguf", {"direction.1": np.ones((2, 64), np.float32)})
    with pytest.raises(InputError, match="1-D"):
        read_control_vector(two_d)
    uneven = _gguf_package_file(
        tmp_path / "uneven.gguf",
        {"direction.1": np.ones(64, np.float32), "direction.2": np.ones(32, np.float32)},
    )
    with pytest.raises(InputError, match="different lengths"):
        read_control_vector(uneven)
