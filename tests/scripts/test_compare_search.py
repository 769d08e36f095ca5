"""scripts/compare_search.py's metrics on made-up proxies (no model is loaded)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bake.artifacts.tuning import Candidate, Proxy, TuneSettings

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="module")
def compare():
    sys.path.insert(0, str(SCRIPTS))
    try:
        return __import__("compare_search")
    finally:
        sys.path.remove(str(SCRIPTS))


def _proxy(primary: float, guard: float, kl: float) -> Proxy:
    c = Candidate("file", (3,), -primary)
    return Proxy(c, {"sensitive": primary, "harmful": guard}, kl, kl)


def test_hypervolume_of_a_staircase(compare):
    # a staircase from (1, 0): (0.2, -0.5) then (0.5, -0.8); (0.6, -0.1) is dominated
    area = compare.hypervolume([(0.2, -0.5), (0.5, -0.8), (0.6, -0.1)], (1.0, 0.0))
    assert area == pytest.approx(0.3 * 0.5 + 0.5 * 0.8)
    assert compare.hypervolume([(1.2, -0.5)], (1.0, 0.0)) == 0.0


def test_best_guarded_keeps_the_guard_and_the_kl_bound(compare):
    s = TuneSettings()
    proxies = [
        _proxy(0.1, 0.5, 0.01),  # guard lost
        _proxy(0.2, 0.8, 0.5),  # over the KL bound
        _proxy(0.3, 0.75, 0.05),
        _proxy(0.4, 0.9, 0.05),
    ]
    assert compare.best_guarded(proxies, s, {"sensitive": 0.7, "harmful": 0.85}) == 0.3
    assert compare.best_guarded(proxies[:2], s, {"sensitive": 0.7, "harmful": 0.85}) is None


def test_a_trial_maps_onto_the_ladder_space(compare):
    trial = SimpleNamespace(
        suggest_categorical=lambda name, choices: choices[0] if name == "layers" else "ranked",
        suggest_float=lambda name, low, high, log: 0.05,
    )
    space = {(3,): {"flat": ()}, (2, 3, 4): {"flat": (), "ranked": ((2, 0.5),)}}
    bench = SimpleNamespace(space=space)
    c = compare.suggest(trial, bench)
    assert (c.layers, c.profile, c.alpha) == ((3,), "flat", -0.05)  # ranked needs 3 layers
