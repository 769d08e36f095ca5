"""Small statistics used across stages: rank correlation, AUC, intervals and the exact
McNemar test. numpy only."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation; None when either side is constant."""
    x, y = x - x.mean(), y - y.mean()
    den = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / den if den > 0 else None


def ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties averaged."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2)[inverse]


def auc(pos: Sequence[float] | np.ndarray, neg: Sequence[float] | np.ndarray) -> float | None:
    """P(score of a positive > score of a negative), ties count half (Mann-Whitney)."""
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    if not len(pos) or not len(neg):
        return None
    r = ranks(np.concatenate([pos, neg]))
    u = r[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation (ties averaged); None below 3 points or when constant."""
    if len(x) < 3:
        return None
    return pearson(ranks(np.asarray(x, np.float64)), ranks(np.asarray(y, np.float64)))


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of the rate k/n ((nan, nan) when n = 0)."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_one_sided(with_goal: int, against: int) -> float:
    """Exact one-sided McNemar p: P(X >= with_goal), X ~ Binomial(with + against, 1/2),
    over the discordant pairs only (1.0 when none changed)."""
    n = with_goal + against
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(with_goal, n + 1)) / 2**n
