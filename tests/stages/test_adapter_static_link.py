"""Adapter route (Qwen3, Mistral), static verification and link mode."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from bake.model.checkpoint import open_checkpoint
from tests.conftest import tree_digest
from tests.pipeline import bake_model, verify_baked, verify_static
from tests.stages.test_bake import assert_close, bake_checked, make_plan_for


@pytest.mark.parametrize("fixture", ["qwen3_dir", "mistral_dir"])
def test_adapter_equals_hooked(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    src: Path = request.getfixturevalue(fixture)
    before = tree_digest(src)
    plan = make_plan_for(src, tmp_path / "plan", [0, 2, 3], alpha=-0.4)
    out = tmp_path / "adapter"
    assert bake_model(src, plan, out).route == "adapter"
    report = verify_baked(src, plan, out)
    print(
        f"{fixture} adapter: max |dlogit| {report['max_abs_diff']:.3g} mean "
        f"{report['mean_abs_diff']:.3g} effect {report['effect_max']:.3g}"
    )
    assert report["kind"] == "adapter"
    assert_close(report, fixture)
    assert not report["effect_negligible"]
    assert tree_digest(src) == before


def test_adapter_loads_with_peft_and_auto_class(qwen3_dir: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    plan = make_plan_for(qwen3_dir, tmp_path / "plan", [1, 2])
    out = tmp_path / "adapter"
    bake_model(qwen3_dir, plan, out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 1 and cfg["lora_alpha"] == 1 and cfg["lora_bias"] is True
    assert "merge" not in json.dumps(cfg).lower()
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        via_auto = AutoModelForCausalLM.from_pretrained(out).eval()
        base = AutoModelForCausalLM.from_pretrained(qwen3_dir)
        via_peft = PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        a, b = via_auto(ids).logits, via_peft(ids).logits
    diff = (a - b).abs()
    assert diff.max() < 1e-6, f"max {diff.max():.3g} mean {diff.mean():.3g}"


def test_static_verify_passes_for_both_routes(
    llama_tied_bf16_sharded_dir: Path, qwen3_dir: Path, tmp_path: Path
) -> None:
    for src in (llama_tied_bf16_sharded_dir, qwen3_dir):
        plan = make_plan_for(src, tmp_path / src.parent.name, [1, 3])
        out = tmp_path / f"{src.parent.name}-baked"
        bake_model(src, plan, out)
        report = verify_static(src, plan, out)
        assert report["passed"], report["checks"]
        assert report["check"] == "static"


def test_static_verify_catches_one_flipped_byte(
    llama_tied_bf16_sharded_dir: Path, tmp_path: Path
) -> None:
    src = llama_tied_bf16_sharded_dir
    plan, out = bake_checked(src, tmp_path, [1])
    shard = out / "model-00003-of-00007.safetensors"
    data = bytearray(shard.read_bytes())
    data[-7] ^= 0x01  # one bit of one weight
    shard.write_bytes(bytes(data))
    report = verify_static(src, plan, out)
    failed = [c["name"] for c in report["checks"] if not c["ok"]]
    assert not report["passed"] and failed == ["unchanged tensors byte-identical"], failed


def test_static_verify_catches_a_wrong_bias(llama_dir: Path, tmp_path: Path) -> None:
    plan = make_plan_for(llama_dir, tmp_path / "p1", [1], alpha=-0.3)
    other = make_plan_for(llama_dir, tmp_path / "p2", [1], alpha=-0.31)
    bake_model(llama_dir, plan, tmp_path / "baked")
    report = verify_static(llama_dir, other, tmp_path / "baked")
    failed = [c["name"] for c in report["checks"] if not c["ok"]]
    assert failed == ["steering biases equal the plan (checkpoint dtype)"], failed


def test_link_mode(llama_tied_bf16_sharded_dir: Path, tmp_path: Path) -> None:
    src = llama_tied_bf16_sharded_dir
    before = tree_digest(src)
    plan = make_plan_for(src, tmp_path / "plan", [0, 2])
    out = tmp_path / "linked"
    bake_model(src, plan, out, link=True)
    for shard in open_checkpoint(src).shards:
        assert (out / shard).is_symlink() and (out / shard).resolve() == (src / shard).resolve()
    sums = (out / "SHA256SUMS").read_text()
    assert "model-00001-of-00007" not in sums and "model-steering-bias.safetensors" in sums
    assert json.loads((out / "steering" / "bake.json").read_text())["linked"] is True
    assert_close(verify_baked(src, plan, out, max_new_tokens=8), "link mode")
    assert verify_static(src, plan, out)["passed"]
    assert tree_digest(src) == before
