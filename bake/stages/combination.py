"""The weights w of the whitened category combination (bake.artifacts.categories), found by
a small seeded search on stage-1 proxies (forward passes only; the scorer is the caller's):

    minimise   refusal(w)                        proxy refusal on the dangerous-sounding set
    subject to harmful(w) >= harmful_min         proxy refusal on the harmful set, kept
               kl(w)      <= kl_max              benign KL

v(w) = U G^-1/2 w is normalised to a unit direction (the file's scale s_l keeps alpha's
units), so only w's direction counts: w lives on the unit sphere S^(k-1), k <= MAX_CATEGORIES.

Search, all from one seed:
1. start points: each category alone (e_i), all of them equally (1/sqrt(k)), then random
   directions (Gaussian, normalised): max(`starts`, quadratic_terms(k) + 2) in all, so the
   surrogates below are determined;
2. a trust region around the best trial: quadratic surrogates of refusal, harmful and kl
   in w (least squares over the trials so far, weighted towards the best) rank random unit
   points within the radius; the one with the lowest predicted refusal among those
   predicted feasible is scored next. The radius grows by 1.5 after an improvement and
   halves otherwise (back to 0.5 once below 0.02). The proxies are smooth in w (v is
   linear in w, then normalised), so a quadratic fits them locally; on a guard's boundary,
   where random steps mostly cross it, the surrogates keep proposals inside.
Better: feasible beats infeasible; among feasible, lower refusal; among infeasible, the
smaller relative violation max(0, harmful_min - harmful) / max(harmful_min, 1e-6) +
max(0, kl - kl_max) / kl_max.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from bake.artifacts.categories import CategoryVectors, combine_categories
from bake.artifacts.vectors import SteeringVectors
from bake.errors import InputError

MAX_CATEGORIES = 6
START_RADIUS = 0.5  # the trust region's radius around the best w, on the unit sphere
MIN_RADIUS = 0.02  # below it the search restarts at START_RADIUS
GROW, SHRINK = 1.5, 0.5  # the radius after a proposal that improved on the best / did not
PROPOSALS = 2000  # points the surrogates rank per step
SURROGATE_RIDGE = 1e-3

# combined vectors (one unit direction and scale per layer) -> (refusal proxy on the
# dangerous-sounding set, refusal proxy on the harmful set, benign KL)
ProxyScorer = Callable[[SteeringVectors], tuple[float, float, float]]


@dataclass(frozen=True)
class WeightTrial:
    weights: dict[str, float]  # category -> w_i, |w| = 1
    refusal: float
    harmful: float
    kl: float
    violation: float  # 0 when both guards hold

    @property
    def feasible(self) -> bool:
        return self.violation == 0.0

    def key(self) -> tuple[int, float]:
        """Smaller is better: feasible first, then by refusal; infeasible by violation."""
        return (0, self.refusal) if self.feasible else (1, self.violation)


@dataclass
class WeightSearch:
    """Every trial in order; `best` the best one (feasible or not: check `.feasible`)."""

    names: list[str]
    trials: list[WeightTrial] = field(default_factory=list)

    @property
    def best(self) -> WeightTrial:
        return min(self.trials, key=WeightTrial.key)

    def to_json(self) -> dict[str, object]:
        best = self.best
        return {
            "names": self.names,
            "best": {**best.__dict__, "feasible": best.feasible},
            "trials": [{**t.__dict__, "feasible": t.feasible} for t in self.trials],
        }


def violation(harmful: float, kl: float, harmful_min: float, kl_max: float) -> float:
    """Relative amount by which the two guards fail (0 when both hold)."""
    short = max(0.0, harmful_min - harmful) / max(abs(harmful_min), 1e-6)
    over = max(0.0, kl - kl_max) / kl_max
    return short + over


def _unit(w: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(w))
    return w / norm if norm > 0 else np.full(len(w), 1 / math.sqrt(len(w)))


def start_points(k: int, starts: int, rng: np.random.Generator) -> list[np.ndarray]:
    """e_1..e_k, 1/sqrt(k) (when k > 1), then random unit directions, `starts` in all (at
    least the k + 1 fixed ones)."""
    points = list(np.eye(k)) + ([np.full(k, 1 / math.sqrt(k))] if k > 1 else [])
    while len(points) < starts:
        points.append(_unit(rng.normal(size=k)))
    return points


def search_combination_weights(
    categories: CategoryVectors,
    scorer: ProxyScorer,
    *,
    harmful_min: float,
    kl_max: float,
    names: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    trials: int | None = None,
    starts: int = 12,
    seed: int = 0,
) -> WeightSearch:
    """The weights of the categories `names` (default: all the file's, at most 6) that
    minimise the scorer's refusal proxy under its two guards (module docstring); at most
    `trials` scorer calls (default max(40, quadratic_terms(k) + 22): 40 for k <= 4, 50 for
    k = 6). Combine the best with combine_categories(categories,
    categories.whitening, search.best.weights, layers=layers)."""
    chosen = list(names) if names else categories.names
    unknown = [n for n in chosen if n not in categories.names]
    if unknown:
        raise InputError(f"no category {unknown[0]!r}; the file has {', '.join(categories.names)}")
    if not 1 <= len(chosen) <= MAX_CATEGORIES:
        raise InputError(
            f"the combination takes 1 to {MAX_CATEGORIES} categories, got {len(chosen)}; "
            "name the categories to combine"
        )
    if not kl_max > 0:
        raise InputError(f"the KL guard must be > 0, got {kl_max}")
    k = len(chosen)
    trials = trials or max(40, quadratic_terms(k) + 22)
    rng = np.random.default_rng(seed)
    search = WeightSearch(chosen)
    seen: dict[tuple[float, ...], WeightTrial] = {}
    calls = [0]

    def trial(w: np.ndarray) -> WeightTrial:
        calls[0] += 1
        w = _unit(w)
        memo = tuple(np.round(w, 6))
        if memo not in seen:
            weights = {n: float(x) for n, x in zip(chosen, w, strict=True)}
            vectors = combine_categories(categories, categories.whitening, weights, layers=layers)
            refusal, harmful, kl = (float(x) for x in scorer(vectors))
            bad = violation(harmful, kl, harmful_min, kl_max)
            seen[memo] = WeightTrial(weights, refusal, harmful, kl, bad)
            search.trials.append(seen[memo])
        return seen[memo]

    for w in start_points(k, min(max(starts, quadratic_terms(k) + 2), trials), rng):
        trial(w)
    radius = START_RADIUS
    while calls[0] < trials and k > 1:
        best = search.best
        proposal = _propose(search, chosen, radius, harmful_min, kl_max, rng)
        found = trial(proposal)
        radius = min(1.0, radius * GROW) if found.key() < best.key() else radius * SHRINK
        if radius < MIN_RADIUS:  # converged here: look elsewhere once
            radius = START_RADIUS
    return search


def quadratic_terms(k: int) -> int:
    """Terms of a full quadratic in k variables: 1 + k + k(k+1)/2."""
    return 1 + k + k * (k + 1) // 2


def quadratic_features(w: np.ndarray) -> np.ndarray:
    """Rows w (n, k) -> [1, w_i, w_i w_j (i <= j)] (n, quadratic_terms(k))."""
    i, j = np.triu_indices(w.shape[1])
    return np.concatenate([np.ones((len(w), 1)), w, w[:, i] * w[:, j]], axis=1)


def _fit_surrogate(w: np.ndarray, y: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Weighted ridge least squares coefficients of a quadratic in w (n, k) to y (n,)."""
    f = quadratic_features(w) * np.sqrt(weight)[:, None]
    gram = f.T @ f + SURROGATE_RIDGE * np.eye(f.shape[1])
    return np.linalg.solve(gram, f.T @ (y * np.sqrt(weight)))


def _propose(
    search: WeightSearch,
    names: list[str],
    radius: float,
    harmful_min: float,
    kl_max: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """The next w: among PROPOSALS unit points within `radius` of the best trial, the one
    with the lowest refusal predicted by quadratic surrogates of the three proxies (fitted
    on every trial so far, weighted exp(-|w - best|^2 / (2 (2 radius)^2)): local), among
    those the surrogates call feasible (else the one they predict least infeasible)."""
    w = np.array([[t.weights[n] for n in names] for t in search.trials])  # (n, k)
    centre = np.array([search.best.weights[n] for n in names])
    near = np.exp(-((w - centre) ** 2).sum(1) / (2 * (2 * radius) ** 2)) + 1e-3  # (n,)
    coef = {
        key: _fit_surrogate(w, np.array([getattr(t, key) for t in search.trials]), near)
        for key in ("refusal", "harmful", "kl")
    }
    steps = rng.normal(size=(PROPOSALS, len(names)))
    steps *= radius * rng.uniform(size=(PROPOSALS, 1)) / np.linalg.norm(steps, axis=1)[:, None]
    points = centre + steps
    points /= np.linalg.norm(points, axis=1)[:, None]
    f = quadratic_features(points)
    refusal, harmful, kl = (f @ coef[key] for key in ("refusal", "harmful", "kl"))
    bad = np.maximum(0, harmful_min - harmful) / max(abs(harmful_min), 1e-6)
    bad += np.maximum(0, kl - kl_max) / kl_max
    ok = bad == 0
    pick = np.flatnonzero(ok)[np.argmin(refusal[ok])] if ok.any() else int(np.argmin(bad))
    return points[pick]
