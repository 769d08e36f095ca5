"""The demo end to end on the shipped toy refuser (shortened configuration), and what it
must achieve: the tuned, baked plan lowers held-out sensitive refusal and keeps harmful
refusal; `tune --goal induce` with the same vectors makes the toy refuse a target set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from export.demo import DemoConfig, run_demo

QUICK = DemoConfig(
    samples=2, max_new_tokens=32, limit=24, fit_limit=120, alphas=(0.1, 0.2, 0.3, 0.5, 0.7)
)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("demo") / "run"
    lines: list[str] = []
    summary = run_demo(out, config=QUICK, echo=lines.append)
    return out, {**summary, "printed": "\n".join(lines)}


def test_demo_writes_every_artifact(demo_run: tuple[Path, dict[str, Any]]) -> None:
    out, summary = demo_run
    for rel in summary["artifacts"].values():
        assert (out / rel).exists(), rel
    assert (out / "tuning" / "tuning_report.md").read_text().count("**chosen**") == 1
    assert json.loads((out / "demo_summary.json").read_text())["plan"] == summary["plan"]
    printed = summary["printed"]
    for needle in (
        "heldout_sensitive",
        "refusal before",
        "benign KL",
        "judge:",
        "accuracy",
        "artifacts:",
    ):
        assert needle in printed, needle


def test_demo_baked_model_verifies(demo_run: tuple[Path, dict[str, Any]]) -> None:
    v = demo_run[1]["verify"]
    assert v["passed"], f"max {v['max_abs_diff']:.3g} mean {v['mean_abs_diff']:.3g}"


def test_tuned_plan_baked_removes_heldout_sensitive_refusal(
    demo_run: tuple[Path, dict[str, Any]],
) -> None:
    """The plan the shortened demo tunes, baked, lowers held-out sensitive refusal by at
    least 50 points (issue 9) and keeps harmful refusal, as judged by the demo's judge
    (corrupted text counts as refusal). Measured: full demo 90% -> 20% (the former grid: 6%);
    a sign error, a broken bake or a plan too weak to flip the decision fails."""
    sets = demo_run[1]["evaluation"]["sets"]
    sens, harm = sets["heldout_sensitive"], sets["heldout_harmful"]
    before, after = sens["before"]["refusal_rate"], sens["after"]["refusal_rate"]
    assert before - after >= 0.5, f"sensitive refusal {before:.0%} -> {after:.0%}"
    assert harm["after"]["refusal_rate"] >= harm["before"]["refusal_rate"] - 0.1, harm


def _answered_borderline(measurer: Any, path: Path) -> int:
    """Write to `path` the borderline prompts of the toy's fitting set that the unsteered toy
    answers (greedy); return how many."""
    from bake.artifacts.prompts import load_prompts
    from bake.runtime.loader import load_model_and_tokenizer
    from bake.stages.measure import measure_refusal
    from bake.toy_refuser import model_dir, prompt_set

    rows = [p for p in load_prompts(prompt_set("fit")) if p.extra["category"] == "borderline"]
    model, tok = load_model_and_tokenizer(model_dir())
    scores = measure_refusal(model, tok, "borderline", rows, measurer).scores
    answered = [p for p, c in zip(rows, scores, strict=True) if c is not None and c < 0]
    path.write_text("".join(json.dumps({"id": p.id, "prompt": p.text}) + "\n" for p in answered))
    return len(answered)


def test_goal_induce_makes_the_toy_refuse_its_target_set(
    demo_run: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """`tune --goal induce` with the demo's vectors: borderline political questions that the
    unsteered toy answers become refused while benign prompts stay answered; the plan it
    writes, baked, does the same."""
    from bake.artifacts.tuning import TuneSettings
    from bake.judges.backends import PatternJudge
    from bake.stages.evaluate import run_evaluate
    from bake.stages.measure import Measurer
    from bake.stages.tune import run_tune
    from bake.toy_refuser import lexicon_path
    from tests.pipeline import bake_model

    out = demo_run[0]
    measurer = Measurer(PatternJudge(lexicon_path()))  # the demo's judge
    target = tmp_path / "answered_borderline.jsonl"
    assert _answered_borderline(measurer, target) >= 5
    sets = {"target": target, "benign": out / "prompts" / "tune_benign.jsonl"}
    settings = TuneSettings(goal="induce", layer_counts=(4,), alphas=(0.1, 0.2, 0.3))
    result = run_tune(
        None,
        out / "vectors.safetensors",
        sets,
        tmp_path / "plan.json",
        settings=settings,
        measurer=measurer,
        progress=False,
    )
    best = result.best
    assert best is not None and best.candidate.alpha > 0
    before, after = result.baseline["target"], best.refusal["target"]
    assert after - before >= 0.5, f"target refusal {before:.0%} -> {after:.0%}"
    assert best.refusal["benign"] <= result.baseline["benign"] + 0.1
    bake_model(None, tmp_path / "plan.json", tmp_path / "baked")
    evaluation = run_evaluate(None, [target], baked=tmp_path / "baked", measurer=measurer)
    r = evaluation.to_json()["sets"]["answered_borderline"]
    assert r["after"]["refusal_rate"] - r["before"]["refusal_rate"] >= 0.5, r


def test_evaluate_cli_takes_the_toy_lexicon(
    demo_run: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """`evaluate --lexicon toy` judges with the demo's judge (the toy's word list)."""
    from tests.conftest import run_cli

    out = demo_run[0]
    report = tmp_path / "evaluation.json"
    run_cli(
        "evaluate",
        "toy-refuser",
        "--plan",
        str(out / "plan.json"),
        "--prompts",
        str(out / "prompts" / "heldout_benign.jsonl"),
        "--lexicon",
        "toy",
        "--report",
        str(report),
        check=True,
    )
    result = json.loads(report.read_text())
    assert "+lexicon:lexicon.txt:" in result["judge"], result["judge"]
    assert result["sets"]["heldout_benign"]["before"]["n"] == QUICK.limit
