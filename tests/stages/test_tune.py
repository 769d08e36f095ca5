"""The search's logic without a model: layer ranking and sets, profiles, the alpha ladder,
the budget, the front, stage 2's picks, the choice, the significance gate, the agreement
numbers and the resumable cache."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bake.artifacts.tuning import (
    Candidate,
    Confirmed,
    Proxy,
    TuneCache,
    TuneResult,
    TuneSettings,
    fronts,
)
from bake.artifacts.vectors import SteeringVectors
from bake.errors import InputError
from bake.model.arch import arch_spec
from bake.model.fingerprint import Fingerprint
from bake.stages.candidates import (
    ladder,
    layer_sets,
    predict_alpha,
    profiles,
    ranked_layers,
    round_robin,
)
from bake.stages.tune import (
    agreement,
    bisect_pick,
    choose,
    first_picks,
    midpoints,
    next_pick,
    significance,
)


def _vectors(n_layers: int, r: dict[int, float]) -> SteeringVectors:
    fp = Fingerprint("llama", 4, n_layers)
    vecs = SteeringVectors.from_raw({i: np.ones(4) for i in range(n_layers)}, fp)
    vecs.diagnostics = {i: {"pearson_r": r.get(i, 0.0)} for i in range(n_layers)}
    return vecs


# --------------------------------------------------------------------------- the grid
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


def test_layer_sets_top_k_and_bands() -> None:
    ranked = [10, 4, 11, 9, 3, 2, 12, 1]
    sets = layer_sets(ranked, None)
    assert sets[:4] == [(10,), (4, 10), (4, 9, 10, 11), (1, 2, 3, 4, 9, 10, 11, 12)]
    assert (9, 10, 11) in sets and (3, 4) in sets  # bands of 3 around 10 and around 4
    assert (1, 2, 3, 4) in sets, "a band keeps only usable layers (5 is not ranked)"
    assert len(sets) == len(set(sets))
    assert layer_sets(ranked, (2, 20)) == [(4, 10)], "given counts: top-k only, within range"
    assert layer_sets([7], (3,)) == [(7,)]


def test_ranked_profile_runs_from_one_to_the_floor() -> None:
    assert profiles((5,), [5]) == [("flat", ())]
    (flat, _), (name, mults) = profiles((2, 3, 4), [3, 4, 2])
    assert (flat, name) == ("flat", "ranked")
    assert dict(mults) == {3: 1.0, 4: 0.75, 2: 0.5}


def _fake_measure(kl_at: float, power: float = 2.0) -> tuple[list[Candidate], object]:
    """A measure whose KL is kl_max at |alpha| = kl_at, growing as alpha^power."""
    seen: list[Candidate] = []

    def measure(c: Candidate) -> Proxy:
        seen.append(c)
        kl = 0.1 * abs(c.alpha / kl_at) ** power
        return Proxy(c, {"sensitive": 1 - abs(c.alpha), "harmful": 1.0}, kl, kl)

    return seen, measure


@pytest.mark.parametrize("power", [2.0, 3.0])
def test_default_ladder_predicts_then_climbs_then_bisects(power: float) -> None:
    """KL = 0.1 (a / a_bound)^power: the second step lands at a quarter of the bound, the
    third (power fitted on two points) at the bound, then x sqrt(2) crosses it and the
    refinement bisects."""
    seen, measure = _fake_measure(kl_at=0.45, power=power)
    s = TuneSettings()
    kls = [p.kl for p in ladder(measure, "file", (3,), "flat", (), s)]
    alphas = [-c.alpha for c in seen]
    assert all(c.alpha < 0 for c in seen), "remove steers with negative alpha"
    assert alphas[0] == 0.004
    assert math.isclose(kls[1], 0.025, rel_tol=1e-3 if power == 2 else 0.5), kls
    assert math.isclose(kls[2], 0.1, rel_tol=1e-3), "the fitted power law hits the bound"
    assert kls[3] > 0.1 >= kls[2] and math.isclose(
        alphas[3] / alphas[2], math.sqrt(2), rel_tol=1e-4
    )
    assert math.isclose(alphas[4], (alphas[2] + alphas[3]) / 2, rel_tol=1e-5)
    assert len(alphas) == 4 + s.refine


def test_a_step_the_cap_cut_short_aims_at_the_same_share_again() -> None:
    """KL = 0.1 (a / 2)^2: the capped first step (x64, to 0.256) lands at 0.0016, far below a
    quarter of the bound, so the next step aims at the quarter again (a = 1) before the
    bound (a = 2)."""
    seen, measure = _fake_measure(kl_at=2.0)
    kls = [p.kl for p in ladder(measure, "file", (3,), "flat", (), TuneSettings(refine=0))]
    alphas = [-c.alpha for c in seen]
    assert alphas[:2] == [0.004, 0.256] and kls[1] < 0.0125
    assert math.isclose(alphas[2], 1.0, rel_tol=1e-4), alphas
    assert math.isclose(alphas[3], 2.0, rel_tol=1e-4), alphas
    assert kls[-1] > 0.1 and math.isclose(alphas[-1] / alphas[-2], math.sqrt(2), rel_tol=1e-4)


def test_ablation_ladder_climbs_the_strengths_until_the_bound() -> None:
    seen, measure = _fake_measure(kl_at=0.9)
    list(ladder(measure, "file", (3,), "flat", (), TuneSettings(refine=1), "ablate"))
    strengths = [c.alpha for c in seen]
    assert all(c.kind == "ablate" for c in seen)
    assert strengths == [0.25, 0.5, 0.75, 1.0, 0.875], "up to the first over the bound, bisected"
    assert Candidate("file", (3,), 0.5, kind="ablate").key()["kind"] == "ablate"
    assert "kind" not in Candidate("file", (3,), -0.5).key(), "add keys stay as cached before"


def test_predicted_steps_are_bounded() -> None:
    assert predict_alpha([(0.004, 0.0)], 0.1) == pytest.approx(0.004 * 64)
    assert predict_alpha([(0.1, 0.099)], 0.1) == pytest.approx(0.12)
    assert predict_alpha([(0.004, 1e-9), (0.008, 4e-9)], 0.1) == pytest.approx(0.008 * 64)
    assert predict_alpha([(0.1, 0.01), (0.2, 0.02)], 0.04) == pytest.approx(0.4), "power 1"


def test_given_alphas_and_induce_sign() -> None:
    seen, measure = _fake_measure(kl_at=0.25)
    s = TuneSettings(goal="induce", alphas=(0.3, 0.1, 0.2), refine=1)
    list(ladder(measure, "file", (3,), "flat", (), s))
    assert [c.alpha for c in seen] == [0.1, 0.2, 0.3, 0.25]


def test_round_robin_spends_the_budget_in_turn() -> None:
    ladders = [iter([1, 2, 3]), iter([10]), iter([20, 21, 22, 23])]
    assert list(round_robin(ladders, 6)) == [1, 10, 20, 2, 21, 3]  # type: ignore[arg-type]
    assert list(round_robin([iter([1]), iter([2])], 10)) == [1, 2]  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the front
def _p(
    primary: float, guard: float, kl: float = 0.01, alpha: float = -0.1, drift: float = 0.0
) -> Proxy:
    c = Candidate("file", (round(primary * 100), round(guard * 100)), alpha)
    return Proxy(c, {"sensitive": primary, "harmful": guard}, kl, drift or kl)


def test_fronts_sort_by_dominance_under_the_kl_bound() -> None:
    a, b, c = _p(0.1, 0.5), _p(0.3, 0.9), _p(0.2, 0.4)  # c is dominated by a
    over = _p(0.0, 1.0, kl=0.2)
    layered = fronts([a, b, c, over], TuneSettings())
    assert layered == [[a, b], [c]], "over the KL bound is never on a front"


def test_first_picks_take_the_best_kept_then_spread_along_the_guard() -> None:
    s = TuneSettings(confirm=6)
    base, judged = {"sensitive": 0.5, "harmful": 0.8}, {"sensitive": 0.4, "harmful": 0.8}
    pool = [_p(0.05, g / 10) for g in range(1, 7)] + [_p(0.2, 0.79)]  # guard kept: >= 0.7
    picks = first_picks(pool, base, judged, s)
    assert picks[0].refusal == {"sensitive": 0.2, "harmful": 0.79}, "keeps the proxy guard"
    guards = [p.refusal["harmful"] for p in picks[1:]]
    assert len(picks) == 3 and guards == [0.6, 0.1], "the two ends of the guard axis"


def _confirmed(p: Proxy, ok: bool, reason: str = "") -> tuple[Proxy, Confirmed]:
    return p, Confirmed(p.candidate, {}, p.kl, {}, {}, {}, ok, reason)


def test_next_pick_bisects_the_judged_boundary() -> None:
    s = TuneSettings()
    pool = [_p(0.5 - d, 0.8, drift=d) for d in (0.01, 0.02, 0.04, 0.08, 0.16, 0.32)]
    done = [_confirmed(pool[0], True), _confirmed(pool[5], False, "broken answers on benign")]
    assert next_pick(pool, done, s) is pool[2], "best primary below sqrt(0.01 * 0.32) = 0.057"
    done.append(_confirmed(pool[2], False, "benign refusal rose"))
    assert next_pick(pool, done, s) is pool[1]
    lost = [_confirmed(_p(0.1, 0.5), False, "harmful refusal dropped")]
    guarded = [_p(0.05, 0.4), _p(0.2, 0.7)]
    assert next_pick(guarded, lost, s) is guarded[1], "a worse guard proxy is predicted to fail"


def _judged(c: Candidate, sensitive: float, ok: bool) -> tuple[Proxy, Confirmed]:
    rates = {"sensitive": sensitive, "harmful": 1.0, "benign": 0.0}
    reason = "" if ok else "broken answers on sensitive"
    return Proxy(c, {}, 0.01, 0.01), Confirmed(c, rates, 0.01, {}, {}, {}, ok, reason)


def test_midpoints_bisect_a_ladder_between_its_judged_pass_and_failure() -> None:
    """Stage 2 halves alpha on a ladder whose judged failure beats every feasible rate:
    from 0 (unsteered) first, then from the largest feasible alpha below the failure."""
    s = TuneSettings()
    four, band = Candidate("file", (4,), -0.96), Candidate("file", (1, 2, 3, 4), -0.24)
    done = [_judged(four, 0.19, False), _judged(Candidate("file", (2,), -0.1), 0.38, True)]
    assert midpoints(done, s) == [Candidate("file", (4,), -0.48)]
    stronger = [*done, _judged(Candidate("file", (4,), -1.6), 0.1, False)]
    assert midpoints(stronger, s) == [Candidate("file", (4,), -0.48)], "-0.96 brackets -1.6"
    done.append(_judged(Candidate("file", (4,), -0.48), 0.75, True))
    assert midpoints(done, s) == [Candidate("file", (4,), -0.72)], "from the feasible -0.48"
    done.append(_judged(Candidate("file", (4,), -0.72), 0.09, True))
    assert midpoints(done, s) == [], "no failure beats the best feasible 9% any more"
    done.append(_judged(band, 0.05, False))
    got = midpoints(done, s)
    assert got == [Candidate("file", (1, 2, 3, 4), -0.12)], "another ladder, from 0"
    narrow = [_judged(Candidate("file", (4,), -1.0), 0.1, False)]
    narrow.append(_judged(Candidate("file", (4,), -0.95), 0.5, True))
    assert midpoints(narrow, s) == [], "a bracket under MIN_BRACKET of alpha is done"
    strength = [_judged(Candidate("file", (4,), 1.2, kind="ablate"), 0.1, False)]
    assert midpoints(strength, s) == [Candidate("file", (4,), 0.6, kind="ablate")]


def test_bisect_pick_prefers_the_predicted_guard_then_the_primary() -> None:
    s, base, judged = TuneSettings(), {"sensitive": 1.0, "harmful": 1.0}, {"harmful": 1.0}
    kept = Proxy(Candidate("file", (4,), -0.5), {"sensitive": 0.4, "harmful": 0.7}, 0.01, 0.0)
    kept.per_prompt = {"harmful": [0.6] * 10}  # a shrinking margin: every answer still refuses
    lost = Proxy(Candidate("file", (3,), -0.5), {"sensitive": 0.1, "harmful": 0.8}, 0.01, 0.0)
    lost.per_prompt = {"harmful": [0.9] * 5 + [0.3] * 5}
    over = Proxy(Candidate("file", (2,), -0.5), {"sensitive": 0.0, "harmful": 1.0}, 0.5, 0.0)
    assert kept.predicted_rate("harmful", greedy=True) == 1.0
    assert lost.predicted_rate("harmful", greedy=True) == 0.5
    assert lost.predicted_rate("harmful", greedy=False) == 0.8, "sampling: the mean"
    assert bisect_pick([kept, lost, over], base, judged, s, greedy=True) is kept
    assert bisect_pick([lost, over], base, judged, s, greedy=True) is lost
    assert bisect_pick([over], base, judged, s, greedy=True) is None, "over the KL bound"


def test_choose_remove_and_induce() -> None:
    def conf(primary: float, guard: float, kl: float, ok: bool = True) -> Confirmed:
        rates = {"sensitive": primary, "target": primary, "harmful": guard, "benign": guard}
        return Confirmed(Candidate("file", (1,), -0.1), rates, kl, {}, {}, {}, ok)

    a, b, c = conf(0.1, 0.9, 0.05), conf(0.1, 0.95, 0.08), conf(0.0, 0.5, 0.01, ok=False)
    assert choose([a, b, c], TuneSettings()) is b, "ties to the better guard"
    x, y = conf(0.8, 0.1, 0.02), conf(0.8, 0.0, 0.09)
    assert choose([x, y], TuneSettings(goal="induce")) is y, "induce: lower benign refusal"
    assert choose([c], TuneSettings()) is None


@pytest.mark.parametrize(
    "before, after, passed, p",
    [
        ([1] * 5 + [0] * 20, [0] * 25, True, 1 / 32),  # 5 moved, none against
        ([1] * 4 + [0] * 21, [0] * 25, False, 1 / 16),  # 4 net moves: fewer than 5
        ([1] * 10 + [0] * 15, [0] * 10 + [1] * 5 + [0] * 10, False, 0.1509),  # 10 vs 5
    ],
)
def test_significance_gate(before: list[int], after: list[int], passed: bool, p: float) -> None:
    sig = significance(before, after, TuneSettings())
    assert sig.passed is passed and math.isclose(sig.p_value, p, rel_tol=1e-3), sig
    induce = significance(after, before, TuneSettings(goal="induce"))
    assert (induce.moved_with, induce.moved_against) == (sig.moved_with, sig.moved_against)


def test_significance_needs_ten_percent_of_a_large_set() -> None:
    before, after = [1] * 8 + [0] * 92, [0] * 100  # 8 net moves, p = 1/256, but 8 < 10
    assert not significance(before, after, TuneSettings()).passed


def test_agreement_numbers() -> None:
    cands = [Candidate("file", (1,), -a) for a in (0.1, 0.2, 0.3)]
    proxies = [
        Proxy(c, {"sensitive": 0.9 - i / 4, "harmful": 0.9}, 0.01, 0.01,
              {"sensitive": [0.9 - i / 4, 0.2], "harmful": [0.8, 0.7]})
        for i, c in enumerate(cands)
    ]  # fmt: skip
    labels = [{"sensitive": [1, 0], "harmful": [1, 1]}] * 2 + [
        {"sensitive": [0, 0], "harmful": [1, 0]}
    ]
    confirmed = [
        Confirmed(c, {"sensitive": 1 - i / 3, "harmful": 1.0}, 0.01, lab, {}, {}, True)
        for i, (c, lab) in enumerate(zip(cands, labels, strict=True))
    ]
    result = TuneResult(TuneSettings(), [1], {}, {}, {}, {}, {}, stage1=proxies, stage2=confirmed)
    got = agreement(result)
    assert got["spearman"] == pytest.approx(1.0)
    # 7 refused (proxy 0.9, 0.8 x3, 0.7 x2, 0.65) vs 5 answered (0.2 x3, 0.4, 0.7): the
    # answered 0.7 beats 0.65, ties two 0.7s, loses to four: 35 pairs, 33 won
    assert got["auc"] == pytest.approx(33 / 35)


# --------------------------------------------------------------------------- the cache
def test_cache_resumes_and_tolerates_a_cut_line(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl"
    cache = TuneCache(path, {"model": "m"})
    p = _p(0.25, 1.0)
    cache.put("proxy", p.candidate, p.to_json())
    with open(path, "a") as f:
        f.write('{"key": "abc", "record": {"lay')  # interrupted mid-write
    again = TuneCache(path, {"model": "m"})
    back = again.get("proxy", p.candidate)
    assert back is not None and Proxy.from_json(back) == p
    assert again.get("confirm", p.candidate) is None
    assert TuneCache(path, {"model": "other"}).get("proxy", p.candidate) is None
    nan = Proxy(Candidate("file", (1,), -0.7), {"sensitive": math.nan}, math.nan, 0.5)
    again.put("proxy", nan.candidate, nan.to_json())
    assert "NaN" not in path.read_text()
    row = TuneCache(path, {"model": "m"}).get("proxy", nan.candidate)
    assert row is not None and math.isnan(Proxy.from_json(row).kl)
    lines = [json.loads(line) for line in path.read_text().splitlines()[2:]]
    assert [line["record"]["kl"] for line in lines] == [None]
