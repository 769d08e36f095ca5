"""Weights beside the safetensors that are not safetensors (pickles, other frameworks'
copies, their indexes) are never carried into a baked output, and the export's dry run
lists what is written (issue 22, item 4a)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from bake.artifacts.bias_checkpoint import other_files, planned_files
from bake.artifacts.steering import open_steering
from bake.model.checkpoint import open_checkpoint
from bake.stages.bake import run_bake
from tests.cli_runner import invoke

EXTRA = ["pytorch_model.bin", "pytorch_model.bin.index.json", "model.ckpt", "weights.PT",
         "tf_model.h5", "flax_model.msgpack", "training_args.pkl", "model.gguf"]  # fmt: skip


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, llama_dir: Path) -> Path:
    """A plan over layers 1-2 of llama_dir."""
    from bake.stages.plan import run_plan
    from bake.stages.vectors import run_vectors_import

    work = tmp_path_factory.mktemp("weights")
    np.save(work / "raw.npy", np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32))
    run_vectors_import(work / "raw.npy", llama_dir, work / "vec.safetensors")
    run_plan(work / "vec.safetensors", "1-2", -0.3, work / "plan.json")
    return work


@pytest.fixture
def with_pickles(llama_dir: Path, tmp_path: Path) -> Path:
    model = tmp_path / "model"
    shutil.copytree(llama_dir, model)
    for name in EXTRA:
        (model / name).write_bytes(b"\x80\x04not steered")
    return model


def test_bake_skips_other_weights_with_a_note(
    with_pickles: Path,
    work: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    result = run_bake(open_steering(with_pickles, work / "plan.json"), out)
    assert not set(EXTRA) & set(result.files), sorted(result.files)
    assert "tokenizer.json" in result.files
    note = capsys.readouterr().err
    assert "not carried into the output" in note and "pytorch_model.bin" in note
    assert not set(EXTRA) & set(other_files(with_pickles))
    assert sorted(result.files) == planned_files(open_checkpoint(with_pickles))


def test_export_dry_run_lists_no_other_weights(
    with_pickles: Path,
    work: Path,
    tmp_path: Path,
) -> None:
    args = ("export", with_pickles, work / "plan.json", "-o", tmp_path / "out", "--no-gguf")
    dry = invoke(*args, "--dry-run", "--base-model-id", "acme/tiny")
    assert dry.exit_code == 0, dry.output
    assert "tokenizer.json" in dry.stdout
    assert not [name for name in EXTRA if name in dry.stdout], dry.stdout
