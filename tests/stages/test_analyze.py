"""`steerbake analyze` on synthetic activations with planted geometry (issue 21): a rank-k
refusal subspace is reported as rank k (by the eigenvalue gap and by the held-out probe),
and planted category directions come back with their cosines within 0.05."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bake.artifacts.activations import ActivationSet
from bake.errors import InputError
from bake.stages.analyze import AnalyzeOptions, dimensionality, run_analyze
from bake.stages.fit import FitOptions
from tests.conftest import run_cli
from tests.stages.planted import COSINES, planted_categories, planted_directions, planted_rank


@pytest.mark.parametrize("k", [1, 2, 4])
def test_planted_rank_k_subspace_is_reported_as_rank_k(k: int) -> None:
    x, refusal = planted_rank(k)
    d = dimensionality(x, refusal, FitOptions(), folds=5, max_rank=64)
    summary = (
        f"planted rank {k}: eigen-gap rank {d.rank_eigengap}, probe rank {d.rank_probe}; "
        f"accuracy per k {d.probe_accuracy}; eigenvalues {np.round(d.eigenvalues[:6], 2)}"
    )
    assert d.rank_eigengap == k, summary
    assert d.rank_probe == k, summary
    # the subspace carries the signal: the probe on it separates almost perfectly
    assert d.probe_accuracy[str(k)] >= 0.97, summary
    if k > 1:  # and one dimension fewer loses a cluster
        assert d.probe_accuracy[str(k // 2)] <= 0.92, summary


def test_planted_category_cosines_within_005(tmp_path: Path) -> None:
    acts, scores = planted_categories(tmp_path / "data")
    out = tmp_path / "report"
    options = AnalyzeOptions(layers=[1, 3], folds=3, max_rank=8, permutations=99)
    run_analyze(acts, scores, out, FitOptions(method="md"), options)
    assert {p.name for p in out.iterdir()} >= {
        "analysis.json",
        "analysis.md",
        "layers.png",
        "dimensionality.png",
        "categories.png",
    }
    report = json.loads((out / "analysis.json").read_text())
    errors = []
    for layer in report["layers"]:
        geometry = layer["categories"]
        names = geometry["names"]
        for (a, b), truth in COSINES.items():
            i, j = names.index(a), names.index(b)
            for matrix in ("cosine_md", "cosine_corrected"):
                errors.append(abs(geometry[matrix][i][j] - truth))
    assert max(errors) <= 0.05, f"cosine errors: max {max(errors):.4f} mean {np.mean(errors):.4f}"
    p_same = np.array(report["layers"][0]["categories"]["p_same"])
    assert p_same[~np.eye(3, dtype=bool)].max() <= 0.01, f"distinct directions: p {p_same}"
    md = (out / "analysis.md").read_text()
    assert "## Categories at layer" in md and "![categories.png](categories.png)" in md
    assert report["categories"]["a"] == {"refusal": 150, "compliant": 150}


def test_one_shared_direction_is_not_called_distinguishable(tmp_path: Path) -> None:
    """Two categories with the same direction (and their own topic offsets): the
    permutation test does not separate them, the corrected cosine is near 1."""
    t = planted_directions()["a"]
    acts, scores = planted_categories(tmp_path / "data", n=60, directions={"a": t, "b": t})
    report = run_analyze(
        acts, scores, tmp_path / "r", FitOptions(method="md"), AnalyzeOptions(layers=[1], folds=3)
    )
    geometry = report.layers[0].categories
    assert geometry is not None
    assert geometry.p_same[0][1] >= 0.05, f"same direction: p {geometry.p_same[0][1]:.3f}"
    assert geometry.cosine_corrected[0][1] >= 0.95, geometry.cosine_corrected


def test_analyze_cli_and_its_bad_inputs(tmp_path: Path) -> None:
    acts, scores = planted_categories(tmp_path / "data", n=30)
    out = tmp_path / "r"
    proc = run_cli(
        "analyze", str(acts), str(scores), "-o", str(out), "--folds", "3", "--max-rank", "4"
    )
    assert proc.returncode == 0, proc.stderr
    assert "best layer" in proc.stdout and (out / "analysis.md").is_file()
    again = run_cli("analyze", str(acts), str(scores), "-o", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    with pytest.raises(InputError, match="folds"):
        run_analyze(acts, scores, tmp_path / "x", FitOptions(), AnalyzeOptions(folds=1))
    with pytest.raises(InputError, match="no layer 9"):
        run_analyze(acts, scores, tmp_path / "y", FitOptions(), AnalyzeOptions(layers=[9]))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_refusal_style_directions_come_back_with_their_cosines(tmp_path: Path) -> None:
    """Styles as answer properties: each refused prompt's answers name its style, answered
    prompts share one compliant set; the style directions keep the planted cosines."""
    from bake.stages.refusal_styles import render_style_geometry, style_geometry

    acts, scores = planted_categories(tmp_path / "data", n=80, topic=0.0)
    answers = tmp_path / "answers.jsonl"
    answers.write_text(
        "".join(
            json.dumps({"id": pid, "prompt": "p", "samples": [{"text": pid.split("-")[0]}]}) + "\n"
            for pid in ActivationSet.open(acts).ids
        )
    )
    g = style_geometry(acts, scores, answers, str, ("a", "b", "c"), layer=2)
    assert g.names == ["a", "b", "c"] and g.counts == {"a": 80, "b": 80, "c": 80, "answered": 240}
    errors = [
        abs(g.cosine[g.names.index(x)][g.names.index(y)] - v) for (x, y), v in COSINES.items()
    ]
    assert max(errors) <= 0.05, render_style_geometry(g)
    assert "(diagonal: split-half self-cosine)" in render_style_geometry(g)
    with pytest.raises(InputError, match="2 styles"):
        style_geometry(acts, scores, answers, str, ("a",), layer=2)
