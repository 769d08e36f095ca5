"""The demo end to end on the shipped toy refuser (shortened configuration), and what it
must achieve: the tuned, baked plan removes held-out sensitive refusal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from export.demo import DemoConfig, run_demo

QUICK = DemoConfig(
    samples=2, max_new_tokens=32, limit=24, fit_limit=120, alphas=(0.1, 0.15, 0.2, 0.25, 0.3)
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
    sets = demo_run[1]["evaluation"]["sets"]
    sens = sets["heldout_sensitive"]
    before, after = sens["before"]["refusal_rate"], sens["after"]["refusal_rate"]
    assert before - after >= 0.5, f"sensitive refusal {before:.0%} -> {after:.0%}"
