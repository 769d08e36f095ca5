"""Linear algebra shared by `analyze`, `fit --by-category` and `probe` (numpy, float64).

Whitening with a regularised covariance of rows x (n, d):
  Sigma = Z^T Z + lambda I,   Z = (x - mean) / sqrt(n)   (the covariance, d x d, never formed
                                                           when n < d)
  lambda = rel * trace(Z^T Z) / d   (relative, the fit's default) or absolute
  Sigma^-1 B = (B - Z^T (Z Z^T + lambda I)^-1 Z B) / lambda   (dual, when n < d)

Ridge classifier: y in {-1, +1}, class weights so each class weighs one half,
  w = (X_c^T W X_c + lambda I)^-1 X_c^T W y_c,  f(x) = w . (x - mean_w) + mean_w(y)
with X_c, y_c centred on their weighted means; predicts refusal (+1) when f(x) > 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from bake.errors import InputError


class Whitener:
    """b -> (Sigma + lambda I)^-1 b for the covariance Sigma of rows x (n, d)."""

    def __init__(self, x: np.ndarray, lam: float, relative: bool = True) -> None:
        x = np.asarray(x, dtype=np.float64)
        n, d = x.shape
        if n < 2:
            raise InputError("a covariance needs at least 2 rows; score more prompts")
        self.mean = x.mean(0)  # (d,)
        self.z = (x - self.mean) / math.sqrt(n)  # (n, d), Sigma = z^T z
        trace = float((self.z**2).sum())
        self.lam = lam * trace / d if relative else lam
        if not self.lam > 0:
            raise InputError(f"whitening needs lambda > 0 (got {self.lam:.3g}); raise --lambda")
        self.dual = n < d
        gram = self.z @ self.z.T if self.dual else self.z.T @ self.z  # (n, n) or (d, d)
        gram[np.diag_indices_from(gram)] += self.lam
        self.matrix = gram

    def solve(self, b: np.ndarray) -> np.ndarray:
        """(Sigma + lambda I)^-1 b for b (d,) or (d, m)."""
        b = np.asarray(b, dtype=np.float64)
        if not self.dual:
            return np.linalg.solve(self.matrix, b)
        inner = np.linalg.solve(self.matrix, self.z @ b)  # (n,) or (n, m)
        return (b - self.z.T @ inner) / self.lam


# --------------------------------------------------------------------------- ridge probe
class RidgeClassifier:
    """A linear classifier of rows x (n, d) into +1 / -1 (see the module docstring)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, lam: float = 0.1) -> None:
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        pos, neg = y > 0, y <= 0
        if not pos.any() or not neg.any():
            raise InputError("a probe needs rows of both classes")
        w = np.where(pos, 0.5 / pos.sum(), 0.5 / neg.sum())  # (n,), sums to 1
        self.mean = w @ x  # (d,)
        y_mean = float(w @ y)
        zs = (x - self.mean) * np.sqrt(w)[:, None]  # weighted, centred
        ys = (y - y_mean) * np.sqrt(w)
        n, d = zs.shape
        lam_abs = lam * float((zs**2).sum()) / d
        lam_abs = max(lam_abs, 1e-12)
        if n < d:  # w = Z^T (Z Z^T + lambda I)^-1 y
            gram = zs @ zs.T
            gram[np.diag_indices_from(gram)] += lam_abs
            self.weight = zs.T @ np.linalg.solve(gram, ys)
        else:
            cov = zs.T @ zs
            cov[np.diag_indices_from(cov)] += lam_abs
            self.weight = np.linalg.solve(cov, zs.T @ ys)
        self.bias = y_mean - float(self.weight @ self.mean)  # f(x) = weight . x + bias

    def decision(self, x: np.ndarray) -> np.ndarray:
        """f(x) (n,): > 0 predicts +1."""
        return np.asarray(x, np.float64) @ self.weight + self.bias


def stratified_folds(y: np.ndarray, folds: int, seed: int) -> Iterator[np.ndarray]:
    """Boolean test masks of `folds` folds, each class spread evenly over them."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), dtype=np.int64)
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        fold_of[idx] = np.arange(len(idx)) % folds
    for k in range(folds):
        yield fold_of == k


def check_folds(y: np.ndarray, folds: int) -> None:
    """Every class needs a row in every fold."""
    if folds < 2:
        raise InputError(f"--folds must be at least 2, got {folds}")
    smallest = min(int((y == label).sum()) for label in np.unique(y))
    if len(np.unique(y)) < 2 or smallest < folds:
        raise InputError(
            f"{folds}-fold cross-validation needs at least {folds} rows of each class "
            f"(the smallest has {smallest if len(np.unique(y)) > 1 else 0}); use fewer "
            "--folds or more prompts"
        )


def cross_validated_accuracy(
    x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0, lam: float = 0.1
) -> tuple[int, int]:
    """(correct, n) of a ridge classifier's held-out predictions over k folds."""
    check_folds(y, folds)
    correct = 0
    for test in stratified_folds(y, folds, seed):
        clf = RidgeClassifier(x[~test], y[~test], lam)
        correct += int(((clf.decision(x[test]) > 0) == (y[test] > 0)).sum())
    return correct, len(y)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """a . b / (|a| |b|) (0 when either is zero)."""
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / den if den > 0 else 0.0
