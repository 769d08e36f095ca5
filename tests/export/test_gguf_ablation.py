"""The GGUF side of ablation: orthogonalised weights written by the GGUF writer for every
family it has (qwen3 too), tied heads untied as output.weight, `both` without a bias slot as
an orthogonalised GGUF plus the control vector of its additive part (recorded in the file, so
nothing applies twice), quantized builds from the float build, patching refused, and parity
with the transformers hooks in llama.cpp. Numeric checks print max and mean |delta logit|."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bake.artifacts.plan import Ablation, EmbedAblation, make_plan
from bake.artifacts.steering import open_steering
from bake.artifacts.vectors import SteeringVectors
from bake.errors import InputError, PlanMismatchError
from bake.files.gguf_file import STEERBAKE_BAKED_KEY, read_layout
from bake.model.checkpoint import open_checkpoint
from bake.model.fingerprint import Fingerprint
from tests.conftest import run_cli
from tests.pipeline import bake_model, convert, cvec, verify_gguf_file
from tests.tiny_models import random_raw_vectors

MAX_NEW = 8


def plan_for(
    model: Path, folder: Path, layers: list[int], kind: str = "ablate", alpha: float = 0.0,
    embed: bool = False,
) -> Path:  # fmt: skip
    ckpt = open_checkpoint(model)
    fp = Fingerprint(ckpt.model_type, ckpt.hidden_size, ckpt.num_layers)
    folder.mkdir(parents=True, exist_ok=True)
    raw = random_raw_vectors(ckpt.hidden_size, list(range(ckpt.num_layers)), seed=5)
    SteeringVectors.from_raw(raw, fp).save(folder / "vectors.safetensors")
    ablation = Ablation(1.0, None, EmbedAblation(min(layers), 1.0) if embed else None)
    plan = make_plan(folder / "vectors.safetensors", layers, alpha, kind=kind, ablation=ablation)
    plan.save(folder / "plan.json")
    return folder / "plan.json"


def tensors(path: Path) -> dict[str, Any]:
    import gguf

    return {t.name: np.asarray(t.data) for t in gguf.GGUFReader(str(path)).tensors}


def assert_verified(report: dict[str, Any], what: str) -> None:
    for c in report["checks"]:
        print(f"{what}: {c['name']}: {'ok' if c['ok'] else 'FAILED'} {c['detail']}")
    assert report["passed"], [c for c in report["checks"] if not c["ok"]]
    main = report["comparisons"]["steered_vs_hooks"]
    assert main["greedy_identical"] == len(main["greedy"])
    assert report["effect_max"] > 100 * report["tolerance"], "the plan should change the model"


@pytest.mark.parametrize(("fixture", "embed"), [("llama_tied_f32_dir", True), ("qwen3_dir", False)])
def test_orthogonalised_gguf_matches_hooks_in_llama_cpp(
    fixture: str, embed: bool, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    src: Path = request.getfixturevalue(fixture)
    plan = plan_for(src, tmp_path / "plan", [0, 1, 3], embed=embed)
    result = convert(src, tmp_path / "m.gguf", "F32", plan)
    assert result.ablated_layers == [0, 1, 3] and result.untied == embed
    report = verify_gguf_file(src, plan, result.output, max_new_tokens=MAX_NEW)
    assert_verified(report, fixture)
    skipped = {c["name"]: c["detail"] for c in report["checks"]}["(2) baked GGUF vs control vector"]
    assert "cannot do at run time" in skipped
    assert read_layout(result.output).string(STEERBAKE_BAKED_KEY) == "ablate"


def test_gguf_holds_the_baked_checkpoint_values_and_the_original_head(
    llama_tied_f32_dir: Path, tmp_path: Path
) -> None:
    """token_embd and the writers = what the safetensors bake wrote; output.weight = the
    original embedding (llama.cpp would use token_embd as the head without it)."""
    from safetensors.numpy import load_file

    src = llama_tied_f32_dir
    plan = plan_for(src, tmp_path / "plan", [2], embed=True)
    bake_model(src, plan, tmp_path / "baked")
    baked = load_file(str(tmp_path / "baked" / "model.safetensors"))
    source = load_file(str(src / "model.safetensors"))
    got = tensors(convert(src, tmp_path / "m.gguf", "F32", plan).output)
    np.testing.assert_array_equal(got["token_embd.weight"], baked["model.embed_tokens.weight"])
    np.testing.assert_array_equal(got["output.weight"], source["model.embed_tokens.weight"])
    for hf, name in (("self_attn.o_proj", "attn_output"), ("mlp.down_proj", "ffn_down")):
        np.testing.assert_array_equal(
            got[f"blk.2.{name}.weight"], baked[f"model.layers.2.{hf}.weight"]
        )
        assert not np.array_equal(got[f"blk.1.{name}.weight"], got[f"blk.2.{name}.weight"] * 0)


def test_both_without_a_bias_slot_is_a_gguf_plus_control_vector(
    qwen3_dir: Path, tmp_path: Path
) -> None:
    plan = plan_for(qwen3_dir, tmp_path / "plan", [1, 2], kind="both", alpha=-0.4)
    result = convert(qwen3_dir, tmp_path / "m.gguf", "F32", plan)
    assert not result.baked_layers and result.control_vector_layers == [1, 2]
    assert "ship it as a control vector" in result.summary()
    assert read_layout(result.output).string(STEERBAKE_BAKED_KEY) == "ablate"
    cv = cvec(plan, tmp_path / "cv.gguf", model=qwen3_dir)
    assert "carries this plan's ablation" in cv.summary()
    report = verify_gguf_file(
        qwen3_dir, plan, result.output, control_vector=tmp_path / "cv.gguf", max_new_tokens=MAX_NEW
    )
    assert_verified(report, "qwen3 both")
    assert report["kind"] == "baked+control-vector"
    with pytest.raises(InputError, match="carries the plan's ablation only"):
        verify_gguf_file(qwen3_dir, plan, result.output)


def test_both_with_a_bias_slot_is_all_in_the_file(llama_dir: Path, tmp_path: Path) -> None:
    plan = plan_for(llama_dir, tmp_path / "plan", [1, 2], kind="both", alpha=-0.4)
    result = convert(llama_dir, tmp_path / "m.gguf", "F32", plan)
    assert result.baked_layers == [1, 2] and result.ablated_layers == [1, 2]
    assert read_layout(result.output).string(STEERBAKE_BAKED_KEY) == "ablate,add"
    assert_verified(verify_gguf_file(llama_dir, plan, result.output, max_new_tokens=4), "both")
    cvec(plan, tmp_path / "cv.gguf", model=llama_dir)
    with pytest.raises(InputError, match="apply the additive steering twice"):
        verify_gguf_file(llama_dir, plan, result.output, control_vector=tmp_path / "cv.gguf")
    other = plan_for(llama_dir, tmp_path / "other", [1], kind="both", alpha=-0.4)
    with pytest.raises(PlanMismatchError, match="does not carry this plan's ablation"):
        verify_gguf_file(llama_dir, other, result.output)


def test_quantized_builds_come_from_the_float_build_and_patching_is_refused(
    llama_dir: Path, tmp_path: Path
) -> None:
    from export.llamacpp.quantize import run_quantize

    plan = plan_for(llama_dir, tmp_path / "plan", [1, 2])
    f32 = convert(llama_dir, tmp_path / "m-F32.gguf", "F32", plan).output
    q8 = run_quantize(f32, tmp_path / "m-Q8_0.gguf", "Q8_0")
    assert q8.types.get("Q8_0", 0) > 0
    assert read_layout(q8.output).string(STEERBAKE_BAKED_KEY) == "ablate"
    report = verify_gguf_file(llama_dir, plan, q8.output, max_new_tokens=4)
    main = report["comparisons"]["steered_vs_hooks"]
    print(f"Q8_0 vs hooks: mean KL {main['mean_kl']:.3g}, top-1 {main['top1_agreement']:.3f}")
    assert main["top1_agreement"] > 0.9
    base = convert(llama_dir, tmp_path / "base.gguf", "F32").output
    unsteered_q8 = run_quantize(base, tmp_path / "base-Q8_0.gguf", "Q8_0").output
    out = run_cli(
        "gguf",
        "--base-gguf",
        str(unsteered_q8),
        "--plan",
        str(plan),
        "-o",
        str(tmp_path / "p.gguf"),
    )
    assert out.returncode == 2 and "rebuild from the checkpoint" in out.stderr, out.stderr
    assert "Q8_0" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "p.gguf").exists()


def test_cvec_refuses_a_plan_that_only_ablates(llama_dir: Path, tmp_path: Path) -> None:
    plan = plan_for(llama_dir, tmp_path / "plan", [1])
    with pytest.raises(InputError, match="only ablates: there is no vector to add"):
        cvec(plan, tmp_path / "cv.gguf", model=llama_dir)
    assert not (tmp_path / "cv.gguf").exists()
    steering = open_steering(llama_dir, plan)
    assert steering.kind == "ablate" and not steering.rounded


# --------------------------------------------------------------------------- export
def test_export_of_an_ablation(llama_tied_bf16_sharded_dir: Path, tmp_path: Path) -> None:
    """bf16, tied, sharded: the checkpoint carries both proofs (static bitwise, PyTorch within
    the rounding bound), the GGUF folder an orthogonalised F32 GGUF verified in llama.cpp and
    a Q8_0 quantized from it; the cards say what was removed, where, how and how it was
    proved; the dry run lists exactly what is written."""
    from huggingface_hub import ModelCard

    from export.publish.job import ExportOptions
    from tests.pipeline import export_model

    src = llama_tied_bf16_sharded_dir
    plan = plan_for(src, tmp_path / "plan", [1, 2, 3], embed=True)
    opts = ExportOptions(name="tiny-ablated", gguf_types=("F32", "Q8_0"), progress=False)
    dry = export_model(
        src, plan, tmp_path / "out", ExportOptions(**{**vars(opts), "dry_run": True})
    )
    result = export_model(src, plan, tmp_path / "out", opts)
    assert {k: [f.path for f in v] for k, v in dry.folders.items()} == {
        k: [f.path for f in v] for k, v in result.folders.items()
    }
    model, ggufs = tmp_path / "out" / "tiny-ablated", tmp_path / "out" / "tiny-ablated-GGUF"
    static = json.loads((model / "steering" / "verify-static.json").read_text())
    verify = json.loads((model / "steering" / "verify.json").read_text())
    assert static["passed"] and verify["passed"] and verify["bound"].startswith("sqrt(m)")
    card = (model / "README.md").read_text()
    ModelCard.load(model / "README.md")
    assert "| Intervention | ablation |" in card and "| Strength a | 1 (1 removes" in card
    assert "lm_head.weight` = the original embedding" in card
    assert "Equals Arditi et al.'s residual-stream ablation | no (a direction per block" in card
    assert "orthogonalised tensors equal their recomputation" in card
    assert "the rounding bound sqrt(m)" in card
    assert sorted(p.name for p in ggufs.glob("*.gguf")) == [
        "tiny-ablated-F32.gguf", "tiny-ablated-Q8_0.gguf"
    ]  # fmt: skip
    assert read_layout(ggufs / "tiny-ablated-Q8_0.gguf").string(STEERBAKE_BAKED_KEY) == "ablate"
    gcard = (ggufs / "README.md").read_text()
    assert "orthogonalised to it" in gcard and "**without** a control vector" in gcard
    report = json.loads((ggufs / "steering" / "verify-tiny-ablated-F32.json").read_text())
    assert report["passed"]
    # the head is untied in the GGUF too
    assert "output.weight" in tensors(ggufs / "tiny-ablated-F32.gguf")


# --------------------------------------------------------------------------- cards
def test_ablation_card_matches_golden(tmp_path: Path) -> None:
    """Arditi's setting (one direction, strength 1, every block and the embedding) on a bf16
    checkpoint: the card names the form, the writers, the rounding bound and the static
    proof; golden bytes, so any change to its prose is reviewed."""
    import dataclasses

    from bake.artifacts.reports import Check, StaticReport
    from bake.artifacts.steering import open_plan_only
    from export.publish.cards import render_card
    from tests.export.test_cards import VERIFY_REPORT, check_golden, fixed_plan, make_card

    vectors = fixed_plan(tmp_path / "plan").plan.vectors_file
    ablation = Ablation(1.0, 2, EmbedAblation(2, 1.0))
    plan = make_plan(vectors, [0, 1, 2, 3], 0.0, kind="ablate", ablation=ablation)
    plan.save(tmp_path / "plan" / "ablate.json")
    bound = (
        "sqrt(m) * u * max(1, max |logit|), m = 9 tensors rewritten, u = 2^-8 (BF16 unit roundoff)"
    )
    verify = dataclasses.replace(
        VERIFY_REPORT, dtype="bfloat16", layers="0-3", alpha=0.0, tolerance=0.036,
        rel_tolerance=3 / 256, max_abs_diff=0.0093, mean_abs_diff=0.0011, intervention="ablate",
        bound=bound, mean_kl=2.1e-06, top1_agreement=0.9987,
    )  # fmt: skip
    checks = [
        Check("tensor set", True, "39 tensors"),
        Check("unchanged tensors byte-identical", True, "30 tensors"),
        Check(
            "orthogonalised tensors equal their recomputation (float64 -> float32 -> BF16)",
            True,
            "9 tensors, 0.1 MB, bitwise",
        ),
        Check("lm_head equals the original embedding (head untied)", True, "bitwise"),
    ]
    static = StaticReport(
        "static", "none", "checkpoint", "acme/tiny-llama", "tiny-llama-ablated", "0-3", 0.0,
        checks, True,
    )  # fmt: skip
    card = make_card(
        tmp_path, route="ablate", verify=verify, static=static, name="tiny-llama-ablated"
    )
    card.steering = open_plan_only(tmp_path / "plan" / "ablate.json")
    text = render_card(card)
    assert "| Equals Arditi et al.'s residual-stream ablation | yes" in text
    assert "`lm_head.weight`" not in text, "a plan-only steering does not know the head is tied"
    check_golden("card_checkpoint_ablation.md", text)


@pytest.mark.parametrize(
    ("fixture", "untied"), [("llama_tied_f32_dir", True), ("qwen3_dir", False)]
)
def test_card_says_the_head_is_untied_only_for_a_tied_model(
    fixture: str, untied: bool, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from export.publish.cards import CardInput, SourceRecord, ablation_facts

    src: Path = request.getfixturevalue(fixture)
    plan = plan_for(src, tmp_path / "plan", [1, 2], embed=True)
    source = SourceRecord(base_model=None, name="m", license=None, language=[])
    card = CardInput("checkpoint", "m", source, open_steering(src, plan), "ablate", "0", [])
    facts = ablation_facts(card)
    assert facts is not None and facts["untied"] is untied
    assert not facts["arditi"] and "2 of 4 blocks" in facts["arditi_why"]
