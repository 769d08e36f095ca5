"""The installed `steerbake` script, run as a user would; bad input gives one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli, tree_digest


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("steerbake: error: "), err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys; from click.testing import CliRunner; import export.cli as c; "
        "r = CliRunner().invoke(c.main, ['--help']); assert r.exit_code == 0; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, llama_dir: Path) -> Path:
    """vectors.npy for llama_dir, imported, and a plan over layers 1-2."""
    work = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    np.save(work / "raw.npy", rng.normal(size=(4, 64)).astype(np.float32))
    run_cli(
        "vectors",
        "import",
        str(work / "raw.npy"),
        "-o",
        str(work / "vec.safetensors"),
        "--model",
        str(llama_dir),
        check=True,
    )
    run_cli(
        "plan",
        str(work / "vec.safetensors"),
        "--layers",
        "1-2",
        "--alpha",
        "-0.3",
        "-o",
        str(work / "plan.json"),
        check=True,
    )
    return work


def test_full_cli_path(workdir: Path, llama_dir: Path) -> None:
    before = tree_digest(llama_dir)
    out = workdir / "baked"
    bake = run_cli("bake", str(llama_dir), str(workdir / "plan.json"), "-o", str(out), check=True)
    assert "bias route" in bake.stdout
    report = workdir / "report.json"
    ver = run_cli(
        "verify",
        str(llama_dir),
        str(workdir / "plan.json"),
        str(out),
        "--report",
        str(report),
        "--max-new-tokens",
        "8",
    )
    assert ver.returncode == 0, ver.stdout + ver.stderr
    data = json.loads(report.read_text())
    assert data["passed"] and data["max_abs_diff"] <= data["tolerance"], data
    assert "PASS" in ver.stdout
    assert tree_digest(llama_dir) == before
    info = run_cli("inspect", str(llama_dir), "--json", check=True)
    assert json.loads(info.stdout)["routes"]["hf"] == "bias"
    shown = run_cli("vectors", "show", str(workdir / "vec.safetensors"), check=True)
    assert json.loads(shown.stdout)["hidden_size"] == 64


def test_verify_failure_exits_1(workdir: Path, llama_dir: Path) -> None:
    run_cli(
        "plan",
        str(workdir / "vec.safetensors"),
        "--layers",
        "1-2",
        "--alpha",
        "-0.2",
        "-o",
        str(workdir / "other.json"),
        check=True,
    )
    out = workdir / "baked_for_fail"
    run_cli("bake", str(llama_dir), str(workdir / "plan.json"), "-o", str(out), check=True)
    proc = run_cli(
        "verify", str(llama_dir), str(workdir / "other.json"), str(out), "--max-new-tokens", "2"
    )
    assert proc.returncode == 1 and "FAIL" in proc.stdout, proc.stdout + proc.stderr


# ----------------------------------------------------------------------- bad input
def test_vector_of_wrong_size(tmp_path: Path, llama_dir: Path) -> None:
    np.save(tmp_path / "v.npy", np.ones((4, 65), np.float32))
    proc = run_cli(
        "vectors",
        "import",
        str(tmp_path / "v.npy"),
        "-o",
        str(tmp_path / "o.safetensors"),
        "--model",
        str(llama_dir),
    )
    assert_one_line_error(proc, "shape (65,)", "hidden size is 64")


def test_vector_nan(tmp_path: Path, llama_dir: Path) -> None:
    arr = np.ones((4, 64), np.float32)
    arr[2, 5] = np.nan
    np.save(tmp_path / "v.npy", arr)
    proc = run_cli(
        "vectors",
        "import",
        str(tmp_path / "v.npy"),
        "-o",
        str(tmp_path / "o.safetensors"),
        "--model",
        str(llama_dir),
    )
    assert_one_line_error(proc, "layer 2", "NaN or Inf")


def test_layer_out_of_range(workdir: Path, tmp_path: Path) -> None:
    proc = run_cli(
        "plan",
        str(workdir / "vec.safetensors"),
        "--layers",
        "2-4",
        "--alpha",
        "1",
        "-o",
        str(tmp_path / "p.json"),
    )
    assert_one_line_error(proc, "[4] out of range", "0-3")


def test_alpha_inf(workdir: Path, tmp_path: Path) -> None:
    proc = run_cli(
        "plan",
        str(workdir / "vec.safetensors"),
        "--layers",
        "1",
        "--alpha",
        "inf",
        "-o",
        str(tmp_path / "p.json"),
    )
    assert_one_line_error(proc, "NaN or Inf")


def test_plan_for_another_model(workdir: Path, qwen3_dir: Path, tmp_path: Path) -> None:
    proc = run_cli("bake", str(qwen3_dir), str(workdir / "plan.json"), "-o", str(tmp_path / "o"))
    assert_one_line_error(proc, "made for another model", "architecture llama vs model's qwen3")


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_unknown_architecture(workdir: Path, llama_dir: Path, tmp_path: Path) -> None:
    model = _copy_model(llama_dir, tmp_path / "m")
    cfg = json.loads((model / "config.json").read_text())
    cfg["model_type"] = "gpt_bigcode"
    (model / "config.json").write_text(json.dumps(cfg))
    proc = run_cli("bake", str(model), str(workdir / "plan.json"), "-o", str(tmp_path / "o"))
    assert_one_line_error(proc, "unknown architecture 'gpt_bigcode'", "llama", "qwen3")


def test_missing_shard(llama_tied_bf16_sharded_dir: Path, tmp_path: Path, workdir: Path) -> None:
    model = _copy_model(llama_tied_bf16_sharded_dir, tmp_path / "m")
    (model / "model-00002-of-00007.safetensors").unlink()
    proc = run_cli("inspect", str(model))
    assert_one_line_error(proc, "model-00002-of-00007.safetensors is listed", "missing")


def test_corrupted_header(llama_dir: Path, workdir: Path, tmp_path: Path) -> None:
    model = _copy_model(llama_dir, tmp_path / "m")
    with open(model / "model.safetensors", "r+b") as f:
        f.seek(10)
        f.write(b"\xff\xfe garbage")
    proc = run_cli("bake", str(model), str(workdir / "plan.json"), "-o", str(tmp_path / "o"))
    assert_one_line_error(proc, "corrupted safetensors header")
    assert not (tmp_path / "o").exists()


def test_only_pickled_weights(llama_dir: Path, workdir: Path, tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    shutil.copy(llama_dir / "config.json", model)
    (model / "pytorch_model.bin").write_bytes(b"not unpickled")
    proc = run_cli("bake", str(model), str(workdir / "plan.json"), "-o", str(tmp_path / "o"))
    assert_one_line_error(proc, "only pickled weights", "never unpickles")


def test_output_exists(llama_dir: Path, workdir: Path, tmp_path: Path) -> None:
    (tmp_path / "o").mkdir()
    proc = run_cli("bake", str(llama_dir), str(workdir / "plan.json"), "-o", str(tmp_path / "o"))
    assert_one_line_error(proc, "already exists", "--overwrite")


def test_output_inside_source(llama_dir: Path, workdir: Path) -> None:
    before = tree_digest(llama_dir)
    proc = run_cli(
        "bake", str(llama_dir), str(workdir / "plan.json"), "-o", str(llama_dir / "baked")
    )
    assert_one_line_error(proc, "inside the source")
    assert tree_digest(llama_dir) == before


def test_route_the_architecture_lacks(qwen3_dir: Path, gemma3_dir: Path, tmp_path: Path) -> None:
    for model, route, needles in [
        (qwen3_dir, "bias", ("no bias slot", "--route adapter")),
        (gemma3_dir, "auto", ("cannot be baked", "control vector")),
    ]:
        np.save(tmp_path / "v.npy", np.ones((4, 64), np.float32))
        run_cli(
            "vectors",
            "import",
            str(tmp_path / "v.npy"),
            "-o",
            str(tmp_path / "v.st"),
            "--model",
            str(model),
            check=True,
        )
        run_cli(
            "plan",
            str(tmp_path / "v.st"),
            "--layers",
            "1",
            "--alpha",
            "0.1",
            "-o",
            str(tmp_path / "p.json"),
            check=True,
        )
        proc = run_cli(
            "bake",
            str(model),
            str(tmp_path / "p.json"),
            "-o",
            str(tmp_path / "o"),
            "--route",
            route,
        )
        assert_one_line_error(proc, *needles)


def test_model_not_in_cache(workdir: Path, tmp_path: Path) -> None:
    proc = run_cli("inspect", "nobody/not-a-model")
    assert_one_line_error(proc, "not in the local Hugging Face cache", "hf download")
