"""Configuration finder logic (no model): layer ranking, counts, choice, resumable cache."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bake.artifacts.tuning import Trial, _Cache
from bake.artifacts.vectors import SteeringVectors
from bake.errors import InputError
from bake.model.arch import arch_spec
from bake.model.fingerprint import Fingerprint
from bake.stages.tune import layer_counts, pick_best, ranked_layers


def _vectors(n_layers: int, r: dict[int, float]) -> SteeringVectors:
    fp = Fingerprint("llama", 4, n_layers)
    vecs = SteeringVectors.from_raw({i: np.ones(4) for i in range(n_layers)}, fp)
    vecs.diagnostics = {i: {"pearson_r": r.get(i, 0.0)} for i in range(n_layers)}
    return vecs


def test_ranking_drops_deepest_and_orders_by_pearson_r() -> None:
    vecs = _vectors(10, {0: 0.9, 3: 0.8, 5: 0.7, 8: 0.99, 9: 0.95, 2: 0.1})
    ranked = ranked_layers(vecs, arch_spec("llama"), 0.2)
    assert 8 not in ranked and 9 not in ranked  # deepest 20% of 10 layers
    assert ranked[:3] == [0, 3, 5]
    qwen = ranked_layers(vecs, arch_spec("qwen3"), 0.2)
    assert 0 not in qwen, "block 0 has no llama.cpp route for families without a bias slot"


def test_ranking_puts_unknown_r_last() -> None:
    vecs = _vectors(6, {1: 0.5, 2: float("nan")})
    vecs.diagnostics.pop(3)
    ranked = ranked_layers(vecs, arch_spec("llama"), 0.2)
    assert ranked[0] == 1 and set(ranked[-2:]) == {2, 3}


def test_no_layer_left() -> None:
    vecs = _vectors(2, {})
    vecs.directions = {1: vecs.directions[1]}
    with pytest.raises(InputError, match="no layer left"):
        ranked_layers(vecs, arch_spec("llama"), 0.2)


def test_layer_counts() -> None:
    assert layer_counts(6, None) == [1, 2, 4, 6]
    assert layer_counts(16, None) == [1, 2, 4, 8, 16]
    assert layer_counts(5, (3, 9)) == [3, 5]


def _t(primary: float, guard: float, kl: float, n: int, alpha: float, ok: bool = True) -> Trial:
    return Trial(list(range(n)), alpha, primary, guard, kl, ok, benign=0.05)


def test_pick_best_remove_and_induce() -> None:
    trials = [
        _t(0.5, 1.0, 0.01, 1, -0.1),
        _t(0.0, 0.9, 0.05, 2, -0.2),
        _t(0.0, 0.9, 0.03, 4, -0.1),
        _t(0.0, 0.2, 0.01, 1, -0.5, ok=False),
    ]
    best = pick_best(trials, "remove")
    assert best is trials[2], "lowest refusal, then lowest KL among feasible trials"
    induce = [
        _t(0.6, 0.0, 0.2, 1, 0.1),
        _t(0.9, 0.05, 0.3, 2, 0.2),
        _t(1.0, 0.5, 0.1, 1, 0.4, ok=False),
    ]
    assert pick_best(induce, "induce") is induce[1]
    assert pick_best([trials[3]], "remove") is None


def test_cache_resumes_and_tolerates_a_cut_line(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl"
    cache = _Cache(path, {"model": "m"})
    trial = _t(0.25, 1.0, 0.01, 2, -0.1)
    cache.put(trial)
    with open(path, "a") as f:
        f.write('{"key": "abc", "trial": {"lay')  # interrupted mid-write
    again = _Cache(path, {"model": "m"})
    assert again.get([0, 1], -0.1) == trial
    assert again.get([0, 1], -0.2) is None
    assert _Cache(path, {"model": "other"}).get([0, 1], -0.1) is None
    nan_trial = _t(math.nan, math.nan, 0.5, 1, -0.7, ok=False)
    again.put(nan_trial)
    assert math.isnan(_Cache(path, {"model": "m"}).get([0], -0.7).primary)  # type: ignore[union-attr]


class _FakeSearch:
    """Sensitive refusal falls linearly with |alpha|; the harmful guard breaks at 0.33."""

    def __init__(self, *args: object) -> None:
        self.baseline = {"sensitive": 1.0, "harmful": 1.0, "benign": 0.0}
        self.calls: list[float] = []

    def trial(self, layers: list[int], alpha: float) -> Trial:
        self.calls.append(alpha)
        ok = abs(alpha) < 0.33
        return Trial(
            layers,
            alpha,
            max(0.0, 1 - 2 * abs(alpha)),
            1.0 if ok else 0.5,
            0.0,
            ok,
            "" if ok else "harmful refusal dropped",
            benign=0.0,
        )

    def done(self, t: Trial) -> bool:
        return not t.feasible or t.primary == 0.0


def test_search_bisects_where_the_guard_broke(monkeypatch: pytest.MonkeyPatch) -> None:
    import bake.stages.tune
    from bake.artifacts.tuning import TuneSettings
    from bake.stages.tune import run_search

    monkeypatch.setattr(bake.stages.tune, "_Search", _FakeSearch)
    settings = TuneSettings(layer_counts=(1,), alphas=(0.1, 0.2, 0.3, 0.4), refine=4)
    base = SimpleNamespace(vectors=_vectors(6, {1: 0.9}), spec=arch_spec("llama"))
    result = run_search(
        None,
        None,
        {},
        base,  # type: ignore[arg-type]  # the fake search reads only vectors and spec
        None,  # type: ignore[arg-type]
        settings,
        _Cache(None, {}),
        progress=False,
    )
    alphas = [t.alpha for t in result.trials]
    assert alphas[:4] == [-0.1, -0.2, -0.3, -0.4], alphas
    assert len(alphas) == 8, "four bisection steps between 0.3 and 0.4"
    assert result.best is not None
    assert 0.3 < abs(result.best.alpha) < 0.33, result.best


def test_a_plan_that_does_not_reach_the_goal_is_refused(tmp_path: Path) -> None:
    from bake.artifacts.tuning import TuneResult, TuneSettings
    from bake.stages.tune import check_goal_reached

    flat = TuneResult(TuneSettings(goal="induce"), [0], {"target": 0.0, "benign": 0.0})
    flat.best = _t(0.0, 0.0, 0.001, 1, 0.025)
    with pytest.raises(InputError, match="unsteered 0%, best 0%"):
        check_goal_reached(flat, tmp_path)
    flat.best = _t(0.6, 0.0, 0.1, 1, 0.3)
    check_goal_reached(flat, tmp_path)  # refusal rose: a plan is written
    remove = TuneResult(TuneSettings(), [0], {"sensitive": 0.9, "harmful": 1.0})
    remove.best = _t(0.9, 1.0, 0.0, 1, -0.025)
    with pytest.raises(InputError, match="sensitive set"):
        check_goal_reached(remove, tmp_path)


def test_remove_guards_harmful_and_benign_refusal() -> None:
    """Removing refusal must keep harmful refusal and must not derail benign answers (the
    judge counts corrupted text as refusal, which the first-token KL cannot see)."""
    from bake.artifacts.tuning import TuneSettings
    from bake.stages.tune import _Search

    search = object.__new__(_Search)
    search.s = TuneSettings(harmful_tolerance=0.1, benign_tolerance=0.1)
    search.baseline = {"sensitive": 1.0, "harmful": 1.0, "benign": 0.05}
    assert search._judge(0.95, 0.1) == (True, "")
    assert search._judge(0.8, 0.05) == (False, "harmful refusal dropped")
    assert search._judge(1.0, 0.3) == (False, "benign refusal rose")
