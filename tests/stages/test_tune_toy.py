"""`steerbake tune` end to end on the shipped toy refuser, with vectors of noise: no plan
comes out of noise (one line with the counts, exit 2, the report written, no plan), and a
second run takes every measurement from the tune cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bake.artifacts.vectors import SteeringVectors
from bake.model.resolve import open_model
from bake.toy_refuser import lexicon_path, model_dir, prompt_set
from tests.conftest import run_cli

N_PROMPTS = 8


def _head(src: Path, dst: Path, n: int = N_PROMPTS) -> Path:
    dst.write_text("".join(src.read_text().splitlines(keepends=True)[:n]))
    return dst


@pytest.fixture(scope="module")
def noise_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    work = tmp_path_factory.mktemp("tune-noise")
    fp = open_model(model_dir()).fingerprint
    rng = np.random.default_rng(0)
    raw = {layer: rng.normal(size=fp.hidden_size) for layer in range(fp.num_layers)}
    SteeringVectors.from_raw(raw, fp).save(work / "noise.safetensors")
    sets = {
        k: _head(prompt_set(f"tune_{k}"), work / f"{k}.jsonl")
        for k in ("sensitive", "harmful", "benign")
    }
    args = [
        "tune", str(model_dir()), str(work / "noise.safetensors"),
        *[a for k, p in sets.items() for a in (f"--{k}", str(p))],
        "--lexicon", str(lexicon_path()), "--alphas", "0.0005,0.001",
        "--layer-counts", "1", "--stage1", "9", "--confirm", "2",
        "--vector-options", "file,projected", "--kinds", "add,ablate,both",
        "--max-new-tokens", "16", "--threads", "1", "-o", str(work / "plan.json"),
    ]  # fmt: skip
    return work, args


def test_noise_gives_no_plan_with_one_line(noise_run: tuple[Path, list[str]]) -> None:
    work, args = noise_run
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    message = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(message) == 1 and "no plan written" in message[0], proc.stderr
    assert "net 0 of 8" in message[0] and "p = 1" in message[0], message
    assert "Traceback" not in proc.stderr
    assert not (work / "plan.json").exists()
    report = work / "plan-tuning" / "tuning_report.md"
    assert report.exists(), sorted(p.name for p in work.iterdir())
    for plot in ("front.png", "proxy_vs_judge.png", "judged.png"):
        assert (work / "plan-tuning" / plot).stat().st_size > 0, plot
        assert f"({plot})" in report.read_text(), plot
    data = json.loads((work / "plan-tuning" / "tuning_report.json").read_text())
    adds = [c for c in data["stage1"] if c.get("kind", "add") == "add"]
    ablations = [c for c in data["stage1"] if c.get("kind") == "ablate"]
    assert len(adds) == 2, "one layer, one profile, two alphas"
    assert ablations and all(c["alpha"] > 0 for c in ablations), "strengths, ascending"
    assert [c["alpha"] for c in ablations] == sorted(c["alpha"] for c in ablations)
    both = [c for c in data["stage1"] if c.get("kind") == "both"]
    assert both and all(c["alpha"] < 0 for c in both), "ablated, then alpha of the goal's sign"
    skipped = data["vector_options"]["projected"]
    assert "fewer than 2 tuning prompts in answered sensitive" in skipped, skipped
    assert 1 <= len(data["stage2"]) <= 2


def test_second_run_measures_nothing(noise_run: tuple[Path, list[str]]) -> None:
    work, args = noise_run
    cache = work / "plan.tune-cache.jsonl"
    if not cache.exists():
        assert run_cli(*args).returncode == 2
    before = cache.read_bytes()
    stages = [json.loads(line)["record"] for line in before.splitlines()]
    assert len(stages) >= 1 + 2 + 1, "baseline, stage-1 and stage-2 records"
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert cache.read_bytes() == before, "the second run appended new measurements"
