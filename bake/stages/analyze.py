"""`steerbake analyze ACTS SCORES`: the refusal geometry, per layer (Markdown, PNG, JSON).

With R the refusal rows (c > 0.1) and C the compliant rows (c < -0.1) of one layer:
- separation: the fit's held-out AUC and Pearson r of the projection on its direction,
  |mu_R - mu_C|, and the cosine of the fitted direction (WRMD by default) to MD;
- dimensionality: Sigma = Sigma_C + lambda I (Sigma_C the covariance of C, lambda as the
  fit's), S_R = (1/n_R) sum_R (x - mu_C)(x - mu_C)^T, and the eigenvalues of
  M = Sigma^-1/2 S_R Sigma^-1/2: directions where refusal rows sit away from the compliant
  distribution, in units of its spread. When n_R <= d they are those of the n_R x n_R
  matrix K = Z Sigma^-1 Z^T / n_R (Z the rows x - mu_C), and M's eigenvector j read in
  activation space is g_j = Sigma^-1 Z^T a_j / sqrt(n_R e_j) (a_j, e_j: K's); otherwise M
  itself is decomposed and g_j = Sigma^-1/2 b_j (b_j: M's); both give the same g_j. A
  ridge probe restricted to the features (x - mu_C) . g_j, j <= k, is scored by k-fold
  cross-validation (subspace and probe fitted on the training folds only) for k = 1, 2,
  4, ...; the rank is the smallest k within max(0.01, one standard error) of the best
  accuracy, and, from the eigenvalues alone, the j with the largest gap e_j / e_{j+1};
- categories (when the prompts had them): per category its MD direction
  mu_R,c - mu_C,c and its fitted direction, their cosine matrices, and each category's
  split-half self-cosine (corrected to full size by Spearman-Brown, 2r / (1 + r)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bake.artifacts.analysis import (
    AnalysisReport,
    CategoryGeometry,
    Dimensionality,
    LayerAnalysis,
    write_analysis,
)
from bake.artifacts.plan import parse_layers
from bake.errors import InputError
from bake.options import OVERWRITE_HELP, opt
from bake.stages.fit import COMPLIANT, REFUSAL, FitOptions, Labels, align_labels, fit_layer
from bake.stages.geometry import (
    RidgeClassifier,
    Whitener,
    check_folds,
    cosine,
    cross_validated_accuracy,
    stratified_folds,
)

if TYPE_CHECKING:
    from bake.artifacts.activations import ActivationSet

SPLITS = 5  # random halvings behind each category's split-half self-cosine
SUBSPACE_LAMBDA = 0.01  # ridge of the probe on the (whitened) top-k features


@dataclass(frozen=True)
class AnalyzeOptions:
    """What `analyze` measures besides the fit's options (method, lambda, bands)."""

    layers: list[int] | None = opt(
        None, "Analyze only these blocks [default: all in ACTS].", parse=parse_layers
    )
    folds: int = opt(5, "Folds of the cross-validated probe accuracies.")
    max_rank: int = opt(64, "Largest k of the top-k subspace probes (k = 1, 2, 4, ...).")
    permutations: int = opt(
        200, "Relabellings behind each category pair's p-value (the smallest is 1/(N+1))."
    )
    overwrite: bool = opt(False, OVERWRITE_HELP)

    def check(self) -> None:
        if self.folds < 2:
            raise InputError(f"--folds must be at least 2, got {self.folds}")
        if self.max_rank < 1:
            raise InputError(f"--max-rank must be at least 1, got {self.max_rank}")
        if self.permutations < 1:
            raise InputError(f"--permutations must be at least 1, got {self.permutations}")


# --------------------------------------------------------------------------- the math
def refusal_subspace(
    x_c: np.ndarray, x_r: np.ndarray, lam: float, relative: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(eigenvalues e (m,) largest first, directions g (d, m), mu_C (d,)) of
    M = Sigma^-1/2 S_R Sigma^-1/2 (module docstring); features are (x - mu_C) @ g. Solved
    in the smaller of the two spaces: K (n_R, n_R) when n_R <= d, else M (d, d)."""
    whitener = Whitener(x_c, lam, relative)
    z = np.asarray(x_r, np.float64) - whitener.mean  # (n_R, d)
    if len(z) > z.shape[1]:
        values, g = _primal_subspace(whitener, z)
    else:
        sinv_zt = whitener.solve(z.T)  # (d, n_R) = Sigma^-1 Z^T
        values, vectors = _eigh_descending(z @ sinv_zt / len(z))  # K (n_R, n_R)
        g = sinv_zt @ vectors / np.sqrt(len(z) * values)  # (d, m)
    return values, g, whitener.mean


def _primal_subspace(whitener: Whitener, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """M = W S_R W, W = Sigma^-1/2 (d, d): its eigenvalues and g_j = W b_j (b_j: M's)."""
    d = z.shape[1]
    sigma = whitener.z.T @ whitener.z + whitener.lam * np.eye(d)  # (d, d)
    s_values, s_vectors = np.linalg.eigh(sigma)
    w = (s_vectors / np.sqrt(s_values)) @ s_vectors.T  # Sigma^-1/2
    values, vectors = _eigh_descending(w @ (z.T @ z / len(z)) @ w)
    return values, w @ vectors


def _eigh_descending(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (largest first) and eigenvectors of symmetric a, keeping those above
    1e-10 of the largest."""
    values, vectors = np.linalg.eigh((a + a.T) / 2)
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    keep = values > values[0] * 1e-10
    return values[keep], vectors[:, keep]


def eigengap_rank(values: np.ndarray, top: int = 16) -> int:
    """The j (1-based) with the largest ratio e_j / e_{j+1} among the top eigenvalues."""
    head = values[: min(top, len(values))]
    if len(head) < 2:
        return len(head)
    return int(np.argmax(head[:-1] / head[1:])) + 1


def subspace_ranks(limit: int) -> list[int]:
    """k = 1, 2, 4, ... up to `limit`."""
    ks, k = [], 1
    while k <= limit:
        ks.append(k)
        k *= 2
    return ks


def subspace_probe_accuracy(
    x: np.ndarray,
    refusal: np.ndarray,
    ks: Sequence[int],
    opts: FitOptions,
    folds: int,
) -> tuple[dict[int, float], int]:
    """k -> held-out accuracy of a ridge probe on the top-k subspace features, k-fold; the
    subspace and the probe see the training folds only. x (n, d) R and C rows, refusal (n,)
    bool."""
    y = np.where(refusal, 1.0, -1.0)
    check_folds(y, folds)
    correct = dict.fromkeys(ks, 0)
    relative = opts.lambda_mode == "relative"
    for test in stratified_folds(y, folds, opts.seed):
        train = ~test
        _, g, mu = refusal_subspace(x[train & ~refusal], x[train & refusal], opts.lam, relative)
        f_train, f_test = (x[train] - mu) @ g, (x[test] - mu) @ g  # (n, m) features
        for k in ks:
            m = min(k, g.shape[1])
            clf = RidgeClassifier(f_train[:, :m], y[train], SUBSPACE_LAMBDA)
            correct[k] += int(((clf.decision(f_test[:, :m]) > 0) == (y[test] > 0)).sum())
    return {k: c / len(y) for k, c in correct.items()}, len(y)


def probe_rank(accuracy: dict[int, float], n: int) -> int:
    """Smallest k whose accuracy is within max(0.01, one standard error) of the best."""
    best = max(accuracy.values())
    tolerance = max(0.01, math.sqrt(best * (1 - best) / max(n, 1)))
    return min(k for k, a in accuracy.items() if a >= best - tolerance)


def dimensionality(
    x: np.ndarray, refusal: np.ndarray, opts: FitOptions, folds: int, max_rank: int
) -> Dimensionality:
    """The eigenvalues on all rows and the k-fold subspace probe accuracies."""
    relative = opts.lambda_mode == "relative"
    values, _, _ = refusal_subspace(x[~refusal], x[refusal], opts.lam, relative)
    train_rows = int(refusal.sum() * (folds - 1) / folds)
    ks = subspace_ranks(max(1, min(max_rank, train_rows - 1, len(values))))
    accuracy, n = subspace_probe_accuracy(x, refusal, ks, opts, folds)
    share = float(refusal.mean())
    correct, rows = cross_validated_accuracy(
        x, np.where(refusal, 1.0, -1.0), folds, opts.seed, SUBSPACE_LAMBDA * 10
    )
    return Dimensionality(
        eigenvalues=[float(v) for v in values[:32]],
        rank_eigengap=eigengap_rank(values),
        probe_accuracy={str(k): v for k, v in accuracy.items()},
        probe_rows=n,
        rank_probe=probe_rank(accuracy, n),
        majority=max(share, 1 - share),
        full_accuracy=correct / rows,
    )


def _md(x: np.ndarray, refusal: np.ndarray) -> np.ndarray:
    return x[refusal].mean(0) - x[~refusal].mean(0)


def split_half_cosine(x: np.ndarray, refusal: np.ndarray, seed: int) -> float:
    """Mean over SPLITS random halvings (each set halved) of cos(MD_half1, MD_half2),
    corrected to the full sample by Spearman-Brown: 2r / (1 + r)."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(SPLITS):
        half = np.zeros(len(x), dtype=bool)
        for rows in (np.flatnonzero(refusal), np.flatnonzero(~refusal)):
            half[rng.permutation(rows)[: len(rows) // 2]] = True
        values.append(cosine(_md(x[half], refusal[half]), _md(x[~half], refusal[~half])))
    r = float(np.mean(values))
    return 2 * r / (1 + r) if r > -1 else r


def category_geometry(
    x: np.ndarray,
    score: np.ndarray,
    group: np.ndarray,
    category: np.ndarray,
    names: Sequence[str],
    opts: FitOptions,
    permutations: int = 200,
) -> CategoryGeometry:
    """Cosine matrices of the categories' MD and fitted directions at one layer; x (n, d)
    scored rows, category (n,) names."""
    md, fitted, self_cos = [], [], []
    for name in names:
        rows = (category == name) & (group != 0)
        refusal = group[rows] == REFUSAL
        md.append(_md(x[rows], refusal))
        fit = fit_layer(x[rows], score[rows], group[rows], np.zeros(int(rows.sum()), bool), opts)
        fitted.append(fit.vector)
        self_cos.append(split_half_cosine(x[rows], refusal, opts.seed))
    k = len(names)
    cos_md = [[cosine(md[i], md[j]) for j in range(k)] for i in range(k)]
    cos_fit = [[cosine(fitted[i], fitted[j]) for j in range(k)] for i in range(k)]
    corrected = [
        [
            1.0
            if i == j
            else cos_md[i][j] / math.sqrt(self_cos[i] * self_cos[j])
            if self_cos[i] > 0 and self_cos[j] > 0
            else float("nan")
            for j in range(k)
        ]
        for i in range(k)
    ]
    p_same = [
        [
            1.0
            if i == j
            else same_direction_p(x, group, category, names[i], names[j], opts.seed, permutations)
            for j in range(k)
        ]
        for i in range(k)
    ]
    return CategoryGeometry(list(names), cos_md, cos_fit, self_cos, corrected, p_same)


def same_direction_p(
    x: np.ndarray,
    group: np.ndarray,
    category: np.ndarray,
    a: str,
    b: str,
    seed: int,
    permutations: int = 200,
) -> float:
    """P-value of "categories a and b share one refusal direction": each category's rows are
    centred on its own answered mean (its topic offset, which the hypothesis allows to
    differ), then the category labels are shuffled within the refused and within the
    answered rows and the MD cosine of the relabelled pair compared with the observed one;
    p = (1 + #{cos_perm <= cos_obs}) / (1 + permutations)."""
    rows = ((category == a) | (category == b)) & (group != 0)
    xs, refusal, is_a = x[rows].astype(np.float64), group[rows] == REFUSAL, category[rows] == a
    for own in (is_a, ~is_a):
        xs[own] -= xs[own & ~refusal].mean(0)

    def cos_of(labels: np.ndarray) -> float:
        return cosine(_md(xs[labels], refusal[labels]), _md(xs[~labels], refusal[~labels]))

    observed = cos_of(is_a)
    rng = np.random.default_rng(seed)
    below = 0
    for _ in range(permutations):
        shuffled = is_a.copy()
        for part in (refusal, ~refusal):  # keep each category's refused / answered counts
            shuffled[part] = rng.permutation(is_a[part])
        below += cos_of(shuffled) <= observed
    return (1 + below) / (1 + permutations)


# --------------------------------------------------------------------------- the command
def analyze_layer(
    x: np.ndarray,
    norms: np.ndarray,
    labels: Labels,
    opts: FitOptions,
    analyze: AnalyzeOptions,
    categories: tuple[np.ndarray, list[str]] | None,
    layer: int,
) -> LayerAnalysis:
    """One layer's LayerAnalysis; x (m, d) the scored rows, norms (m,) their norms."""
    score, group, held = labels.score, labels.group, labels.held
    fit = fit_layer(x, score, group, held, opts)
    used = group != 0
    refusal = group[used] == REFUSAL
    md = _md(x[used].astype(np.float64), refusal)
    scale = float(np.mean(norms[group == COMPLIANT]))
    geometry = None
    if categories is not None:
        category, names = categories
        geometry = category_geometry(x, score, group, category, names, opts, analyze.permutations)
    return LayerAnalysis(
        layer=layer,
        auc=fit.diagnostics.get("auc"),
        pearson_r=fit.diagnostics.get("pearson_r"),
        md_norm=float(np.linalg.norm(md)),
        md_norm_relative=float(np.linalg.norm(md)) / scale if scale > 0 else float("nan"),
        cos_md=float(fit.diagnostics["cos_md"]),
        dimensionality=dimensionality(
            x[used].astype(np.float64), refusal, opts, analyze.folds, analyze.max_rank
        ),
        categories=geometry,
    )


def _category_rows(
    acts: ActivationSet, scores_file: Path, rows: np.ndarray, group: np.ndarray, opts: FitOptions
) -> tuple[tuple[np.ndarray, list[str]] | None, dict[str, dict[str, int]]]:
    """(category per scored row and the categories with enough R and C rows, their counts),
    or (None, {}) when the prompts had no categories."""
    from bake.artifacts.categories import row_categories

    try:
        by_id = row_categories(acts, scores_file)
    except InputError:
        return None, {}
    ids = acts.ids
    category = np.array([by_id.get(ids[k], "") for k in rows], dtype=object)
    counts = {}
    for name in sorted({c for c in category if c}):
        inside = category == name
        counts[name] = {
            "refusal": int(((group == REFUSAL) & inside).sum()),
            "compliant": int(((group == COMPLIANT) & inside).sum()),
        }
    names = [n for n, c in counts.items() if min(c.values()) >= opts.min_set_size]
    if len(names) < 2:
        return None, counts
    return (category, names), counts


def run_analyze(
    acts_folder: Path,
    scores_file: Path,
    output: Path | None,
    opts: FitOptions,
    analyze: AnalyzeOptions,
) -> AnalysisReport:
    """`steerbake analyze`: every layer's geometry into the folder `output` (default
    ACTS-analysis beside ACTS), built aside and renamed into place."""
    from bake.artifacts.activations import ActivationSet
    from bake.artifacts.analysis_plots import write_plots
    from bake.artifacts.scores import load_scores
    from bake.files.fileio import atomic_output_dir, check_output_dir

    opts.check()
    analyze.check()
    acts_folder = Path(acts_folder)
    output = Path(output) if output else acts_folder.with_name(acts_folder.name + "-analysis")
    check_output_dir(output, overwrite=analyze.overwrite, sources=(acts_folder,))
    acts = ActivationSet.open(acts_folder)
    labels = align_labels(acts.ids, load_scores(Path(scores_file)), opts)
    chosen = acts.layers if analyze.layers is None else sorted(set(analyze.layers))
    missing = [layer for layer in chosen if layer not in acts.layers]
    if missing:
        raise InputError(f"{acts_folder} holds no layer {missing[0]}; it holds {acts.layers}")
    categories, counts = _category_rows(acts, Path(scores_file), labels.rows, labels.group, opts)
    layers = [
        analyze_layer(
            acts.layer(layer)[labels.rows],
            acts.norms(layer)[labels.rows],
            labels,
            opts,
            analyze,
            categories,
            layer,
        )
        for layer in chosen
    ]
    report = AnalysisReport(
        activations=str(acts_folder),
        scores=str(scores_file),
        method=opts.method,
        counts=labels.counts(),
        folds=analyze.folds,
        layers=layers,
        categories=counts,
    )
    with atomic_output_dir(output, overwrite=analyze.overwrite) as tmp:
        report.plots = write_plots(report, tmp)
        write_analysis(report, tmp)
    return report
