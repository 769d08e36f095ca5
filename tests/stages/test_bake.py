"""Bias bake: hooked == baked, the source never changes, outputs are atomic and complete."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bake.artifacts.bias_checkpoint import BIAS_SHARD
from bake.artifacts.plan import Plan, make_plan
from bake.artifacts.vectors import SteeringVectors
from bake.errors import OutputError, VerificationError
from bake.model.checkpoint import open_checkpoint
from bake.model.fingerprint import Fingerprint
from tests.conftest import tree_digest
from tests.pipeline import bake_model, plan_vectors, verify_baked
from tests.tiny_models import random_raw_vectors


def make_plan_for(
    model_dir: Path, folder: Path, layers: list[int], alpha: float = -0.3, **kw: object
) -> Path:
    """Random vectors for every layer of model_dir, and a plan over `layers`."""
    ckpt = open_checkpoint(model_dir)
    fp = Fingerprint(ckpt.model_type, ckpt.hidden_size, ckpt.num_layers)
    raw = random_raw_vectors(ckpt.hidden_size, list(range(ckpt.num_layers)))
    folder.mkdir(parents=True, exist_ok=True)
    SteeringVectors.from_raw(raw, fp).save(folder / "vectors.safetensors")
    plan = make_plan(folder / "vectors.safetensors", layers, alpha, **kw)  # type: ignore[arg-type]
    plan.save(folder / "plan.json")
    return folder / "plan.json"


def bake_checked(
    src: Path, tmp_path: Path, layers: list[int], *, alpha: float = -0.3, **bake_kw: object
) -> tuple[Path, Path]:
    """make_plan_for + bake_model into tmp_path/baked, asserting the source is unchanged."""
    before = tree_digest(src)
    plan = make_plan_for(src, tmp_path / "plan", layers, alpha=alpha)
    out = tmp_path / "baked"
    bake_model(src, plan, out, **bake_kw)  # type: ignore[arg-type]
    assert tree_digest(src) == before, "the source folder changed during the bake"
    return plan, out


def assert_close(report: dict, what: str) -> None:
    assert report["passed"], (
        f"{what}: baked != hooked: max |dlogit| {report['max_abs_diff']:.3g}, mean "
        f"{report['mean_abs_diff']:.3g}, tolerance {report['tolerance']:.3g}, greedy "
        f"{report['greedy_identical']}/{report['prompts']}"
    )


@pytest.mark.parametrize("fixture", ["llama_dir", "llama_tied_bf16_sharded_dir"])
def test_baked_equals_hooked(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    src: Path = request.getfixturevalue(fixture)
    before = tree_digest(src)
    plan = make_plan_for(src, tmp_path / "plan", [0, 2, 3], alpha=-0.4, layer_multipliers={2: 0.5})
    out = tmp_path / "baked"
    result = bake_model(src, plan, out)
    assert result.route == "bias"
    report = verify_baked(src, plan, out)
    print(
        f"{fixture}: max |dlogit| {report['max_abs_diff']:.3g} mean "
        f"{report['mean_abs_diff']:.3g} effect {report['effect_max']:.3g}"
    )
    assert_close(report, fixture)
    assert report["greedy_identical"] == report["prompts"]
    assert not report["effect_negligible"], "the plan should visibly change the model"
    assert tree_digest(src) == before, "the source folder changed during the bake"


def test_baked_loads_without_missing_or_unexpected_keys(llama_dir: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    plan, _ = bake_checked(llama_dir, tmp_path, [1])
    model, info = AutoModelForCausalLM.from_pretrained(tmp_path / "baked", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    vectors = plan_vectors(plan)
    got = model.model.layers[1].mlp.down_proj.bias.detach().numpy()
    np.testing.assert_allclose(got, vectors[1].astype(np.float32), rtol=0, atol=0)
    assert torch.count_nonzero(model.model.layers[0].mlp.down_proj.bias) == 0
    assert torch.count_nonzero(model.model.layers[1].mlp.gate_proj.bias) == 0


def test_bf16_bake_stores_checkpoint_dtype(
    llama_tied_bf16_sharded_dir: Path, tmp_path: Path
) -> None:
    src = llama_tied_bf16_sharded_dir
    bake_checked(src, tmp_path, [2])
    ckpt = open_checkpoint(tmp_path / "baked")
    bias = ckpt.tensors["model.layers.2.mlp.down_proj.bias"]
    assert bias.dtype == "BF16" and bias.shard == BIAS_SHARD
    assert set(ckpt.shards) == {*open_checkpoint(src).shards, BIAS_SHARD}
    assert ckpt.config["mlp_bias"] is True and ckpt.config["tie_word_embeddings"] is True


def test_unchanged_shards_are_byte_identical_and_sums_check(
    llama_tied_bf16_sharded_dir: Path, tmp_path: Path
) -> None:
    src = llama_tied_bf16_sharded_dir
    _, out = bake_checked(src, tmp_path, [1])
    for shard in open_checkpoint(src).shards:
        assert (out / shard).read_bytes() == (src / shard).read_bytes(), shard
        assert not (out / shard).is_symlink()
        assert (out / shard).stat().st_ino != (src / shard).stat().st_ino, "hard link"
    check = subprocess.run(
        ["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=out, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    for name in (
        "tokenizer.json",
        "chat_template.jinja",
        "generation_config.json",
        "steering/plan.json",
        "steering/vectors.safetensors",
        "steering/bake.json",
    ):
        assert (out / name).is_file(), name
    assert Plan.load(out / "steering" / "plan.json").load_vectors().layers


def test_verify_catches_a_wrong_bias(llama_dir: Path, tmp_path: Path) -> None:
    """Bake one plan, verify against another: the check must fail, with numbers."""
    plan = make_plan_for(llama_dir, tmp_path / "p1", [1], alpha=-0.3)
    other = make_plan_for(llama_dir, tmp_path / "p2", [1], alpha=-0.25)
    bake_model(llama_dir, plan, tmp_path / "baked")
    report = verify_baked(llama_dir, other, tmp_path / "baked", max_new_tokens=4)
    assert not report["passed"]
    assert report["max_abs_diff"] > report["tolerance"]


def test_verify_rejects_bias_dropped_by_transformers(llama_dir: Path, tmp_path: Path) -> None:
    """FACTS.md: with mlp_bias false transformers silently drops biases; we must notice."""
    plan, out = bake_checked(llama_dir, tmp_path, [1])
    cfg = json.loads((out / "config.json").read_text())
    cfg["mlp_bias"] = False
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(VerificationError, match="does not load cleanly"):
        verify_baked(llama_dir, plan, out, max_new_tokens=2)


def test_interrupted_bake_leaves_nothing(
    llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bake.artifacts.bias_checkpoint as bias_checkpoint

    plan = make_plan_for(llama_dir, tmp_path / "plan", [1])

    def boom(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(bias_checkpoint, "write_sha256sums", boom)
    with pytest.raises(KeyboardInterrupt):
        bake_model(llama_dir, plan, tmp_path / "out" / "baked")
    assert list((tmp_path / "out").iterdir()) == []


def test_overwrite_replaces_only_after_success(llama_dir: Path, tmp_path: Path) -> None:
    plan, out = bake_checked(llama_dir, tmp_path, [1])
    with pytest.raises(OutputError, match="--overwrite"):
        bake_model(llama_dir, plan, out)
    bake_model(llama_dir, plan, out, overwrite=True)
    assert (out / "config.json").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".steerbake")] == []


def test_not_enough_disk_space(
    llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    from collections import namedtuple

    plan = make_plan_for(llama_dir, tmp_path / "plan", [1])
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(OutputError, match="not enough disk space"):
        bake_model(llama_dir, plan, tmp_path / "baked")
    assert not (tmp_path / "baked").exists()
