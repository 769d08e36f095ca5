"""Fit steering vectors from activations and refusal scores (DESIGN.md, "Vectors").

Per layer l, with h the block-l activations (n, d) and c(x) in [-1, 1] the refusal score:
  refusal set R: c > refusal_above (0.1); compliant set C: c < compliant_below (-0.1)
  MD:   v = mu_R - mu_C
  RMD:  v = (Sigma + lambda I)^-1 (mu_R - mu_C)      Sigma: covariance of C (or pooled)
  WRMD: the same with weights w = |c| in the means and in the covariance
  pooled covariance = within-class: each set centred on its own (weighted) mean
  lambda absolute, or relative: lambda = rel * trace(Sigma) / d

Primal form: Cholesky of the d x d matrix Sigma + lambda I. Dual (Woodbury) form, cheaper
when the covariance rows n < d: with Sigma = Y^T Y (Y (n, d) the scaled centred rows),
  (Y^T Y + lambda I)^-1 b = (b - Y^T (Y Y^T + lambda I)^-1 Y b) / lambda
needs only a Cholesky of the n x n Gram matrix.

The file stores u_l = v / |v| and s_l = mean block-output norm of the compliant set, so
alpha is a fraction of a typical residual norm. Diagnostics per layer (held-out split by
seed; the vector scored there is refitted without the held-out rows): raw_norm |v|,
pearson_r between projection h.u and c, auc of refusal vs compliant by projection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bake.artifacts.plan import parse_layers
from bake.artifacts.scores import load_scores, scores_source
from bake.errors import InputError, SteerbakeError
from bake.options import opt
from bake.stats import auc, pearson

if TYPE_CHECKING:
    import torch

    from bake.artifacts.activations import ActivationSource
    from bake.artifacts.vectors import SteeringVectors


METHODS = ("md", "rmd", "wrmd")
COVARIANCES = ("compliant", "pooled")
LAMBDA_MODES = ("relative", "absolute")
SOLVERS = ("auto", "primal", "dual")
REFUSAL, COMPLIANT, NEUTRAL = 1, -1, 0


@dataclass(frozen=True)
class FitOptions:
    """Every choice the fit makes; recorded in the vector file's provenance."""

    method: str = opt("wrmd", "wrmd weights each prompt by |score|.", choices=METHODS)
    covariance: str = opt(
        "compliant",
        "Covariance of the compliant set, or pooled within-class.",
        choices=COVARIANCES,
    )
    lam: float = opt(  # lambda: relative to trace(Sigma)/d, or absolute (lambda_mode)
        0.1,
        "Ridge lambda (relative to trace(Sigma)/d unless --lambda-mode absolute).",
        flags=("--lambda",),
    )
    lambda_mode: str = opt("relative", choices=LAMBDA_MODES)
    float64: bool = opt(True, "Accumulate and solve in float64.", flags=("--float64/--float32",))
    solver: str = opt(  # primal | dual | auto (cheaper by flop count)
        "auto", "dual (Woodbury) is cheaper with fewer rows than dims.", choices=SOLVERS
    )
    refusal_above: float = opt(0.1, "Refusal set: score > this.")
    compliant_below: float = opt(-0.1, "Compliant set: score < this.")
    min_set_size: int = opt(8, "Fewest prompts allowed in each set.")
    holdout: float = opt(0.2, "Share of each set held out for the diagnostics (0: in-sample).")
    seed: int = opt(0, "Seed of the held-out split.")

    def check(self) -> None:
        for value, allowed, flag in (
            (self.method, METHODS, "--method"),
            (self.covariance, COVARIANCES, "--covariance"),
            (self.lambda_mode, LAMBDA_MODES, "--lambda-mode"),
            (self.solver, SOLVERS, "--solver"),
        ):
            if value not in allowed:
                raise InputError(f"{flag} {value!r} is not one of {', '.join(allowed)}")
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise InputError(f"lambda must be a finite number >= 0, got {self.lam}")
        if not -1 <= self.compliant_below <= self.refusal_above <= 1:
            raise InputError(
                f"bands need -1 <= compliant_below ({self.compliant_below}) <= "
                f"refusal_above ({self.refusal_above}) <= 1"
            )
        if not 0 <= self.holdout < 0.9:
            raise InputError(f"holdout must be in [0, 0.9), got {self.holdout}")
        if self.min_set_size < 2:
            raise InputError(f"min set size must be at least 2, got {self.min_set_size}")


@dataclass(frozen=True)
class FitLayers:
    """Which layers `run_fit` fits (not part of the fit's recorded options)."""

    layers: list[int] | None = opt(
        None, "Fit only these blocks [default: all in ACTS].", parse=parse_layers
    )


@dataclass
class LayerFit:
    """One layer's fitted vector v (d,) float64 (not normalised) and its diagnostics."""

    vector: np.ndarray
    diagnostics: dict[str, Any] = field(default_factory=dict)


@dataclass
class Labels:
    """Scores aligned to activation rows: which rows are used and how."""

    rows: np.ndarray  # (m,) row indices into the activations, scored rows only
    score: np.ndarray  # (m,) c(x)
    group: np.ndarray  # (m,) REFUSAL | COMPLIANT | NEUTRAL
    held: np.ndarray  # (m,) bool: held out for the diagnostics
    unscored: int  # activation rows without a score (not used)
    dropped: int = 0  # scores without an activation row (not used)

    def counts(self) -> dict[str, int]:
        return {
            "refusal": int((self.group == REFUSAL).sum()),
            "compliant": int((self.group == COMPLIANT).sum()),
            "neutral": int((self.group == NEUTRAL).sum()),
            "heldout": int(self.held.sum()),
            "unscored": self.unscored,
            "dropped_scores": self.dropped,
        }


def align_labels(ids: Sequence[str], scores: dict[str, float], opts: FitOptions) -> Labels:
    """Match score ids to activation ids (the prompts present in both are used), split into
    sets, pick the held-out rows. Scores without an activation row are dropped and counted
    (judging a whole prompt file and collecting only part of it is normal)."""
    position = {pid: k for k, pid in enumerate(ids)}
    missing = [pid for pid in scores if pid not in position]
    if len(missing) == len(scores):
        raise InputError(
            f"{len(missing)} of {len(scores)} score ids have no activation row "
            f"(e.g. {', '.join(repr(m) for m in missing[:3])}); score and collect "
            "the same prompt file"
        )
    rows = np.array(sorted(position[pid] for pid in scores if pid in position), dtype=np.int64)
    score = np.array([scores[ids[k]] for k in rows], dtype=np.float64)
    group = np.where(
        score > opts.refusal_above,
        REFUSAL,
        np.where(score < opts.compliant_below, COMPLIANT, NEUTRAL),
    )
    n_r, n_c = int((group == REFUSAL).sum()), int((group == COMPLIANT).sum())
    if min(n_r, n_c) < opts.min_set_size:
        raise InputError(
            f"refusal set has {n_r} prompts (score > {opts.refusal_above:g}) and compliant set "
            f"{n_c} (score < {opts.compliant_below:g}); each needs at least "
            f"{opts.min_set_size}: score more prompts or widen the bands"
        )
    held = _holdout(group, opts.holdout, opts.seed)
    return Labels(rows, score, group, held, len(ids) - len(rows), len(missing))


def _holdout(group: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Deterministic stratified split: round(share * n) of each set, at least one of R and
    C (and at most n - 2, so each keeps two rows to fit on) when share > 0."""
    held = np.zeros(len(group), dtype=bool)
    if share <= 0:
        return held
    rng = np.random.default_rng(seed)
    for g in (REFUSAL, COMPLIANT, NEUTRAL):
        idx = np.flatnonzero(group == g)
        k = round(share * len(idx))
        if g != NEUTRAL:
            k = min(max(k, 1), len(idx) - 2)
        held[rng.permutation(idx)[:k]] = True
    return held


# --------------------------------------------------------------------------- the math
def _weights(score: np.ndarray, method: str) -> np.ndarray:
    """WRMD weights |c|; MD and RMD weight every row 1."""
    return np.abs(score) if method == "wrmd" else np.ones_like(score)


def _choose_form(solver: str, n_cov: int, d: int, lam_positive: bool, subsets: int) -> str:
    """Cheaper form by flop count: primal n d^2 + k d^3/3, dual n^2 d + k n^3/3."""
    if solver != "auto":
        return solver
    if not lam_positive:
        return "primal"
    primal = n_cov * d * d + subsets * d**3 / 3
    dual = n_cov * n_cov * d + subsets * n_cov**3 / 3
    return "dual" if dual < primal else "primal"


def _self_product(z: torch.Tensor, transpose_first: bool) -> torch.Tensor:
    """z^T z (d, d) or z z^T (n, n). On the CPU numpy hands A^T A to BLAS syrk, which
    computes one triangle: half the flops of torch's general matmul."""
    import torch

    if z.device.type != "cpu":
        return z.T @ z if transpose_first else z @ z.T
    a = z.numpy()
    return torch.from_numpy(a.T @ a if transpose_first else a @ a.T)


def _chol_solve(chol: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A^-1 b for A = L L^T, b (k,): two triangular solves (torch.cholesky_solve copies
    the factor and is ~10x slower on the CPU)."""
    import torch

    y = torch.linalg.solve_triangular(chol, b[:, None], upper=False)
    return torch.linalg.solve_triangular(chol.mT, y, upper=True)[:, 0]


class _Ridge:
    """(Sigma_S + lambda I)^-1 b for subsets S of the covariance rows of one layer.

    z (n, d): covariance rows centred on their group's weighted mean over all rows;
    zs = sqrt(w / W) z, so Sigma_all = zs^T zs. For a subset S the rows are re-centred on
    the subset's group means: Y_S = M_S zs_S with
      M_S = c (I - sum_g a_g a_g^T / W_gS),  a_g = sqrt(w) on S's rows of group g,
      c^2 = W / W_S,
    and Sigma_S = Y_S^T Y_S = c^2 (zs_S^T zs_S - sum_g s_g s_g^T / W_gS), s_g = zs_S^T a_g.
    """

    def __init__(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        group: torch.Tensor,
        subsets: dict[str, torch.Tensor],
        form: str,
    ) -> None:
        import torch

        self.w, self.group, self.form = w, group, form
        self.groups = [int(g) for g in torch.unique(group)]
        self.total = float(w.sum())
        means = torch.stack([(w * (group == g)) @ x / w[group == g].sum() for g in self.groups])
        slot = torch.searchsorted(torch.tensor(self.groups), group)  # row -> its group's mean
        self.zs = x - means[slot]  # (n, d) centred
        self.zs.mul_((w / self.total).sqrt()[:, None])  # zs = sqrt(w / W) z
        self.subsets = subsets
        if form == "primal":  # zs_S^T zs_S for disjoint parts ("all" is their sum)
            disjoint = [name for name in subsets if name != "all"] or ["all"]
            self.parts = {
                name: _self_product(self.zs[subsets[name]], transpose_first=True)
                for name in disjoint
            }
        else:
            self.gram = _self_product(self.zs, transpose_first=False)  # (n, n)

    def _a(self, mask: torch.Tensor) -> list[tuple[torch.Tensor, float]]:
        """(a_g on S's rows, W_gS) per group present in S."""
        sw, sg = self.w[mask], self.group[mask]
        out = []
        for g in self.groups:
            a = (sw.sqrt() * (sg == g)).to(self.zs.dtype)
            if float(a.sum()) > 0:
                out.append((a, float(sw[sg == g].sum())))
        return out

    def solve(
        self, name: str, b: torch.Tensor, lam: float, relative: bool
    ) -> tuple[torch.Tensor, float]:
        """v = (Sigma_S + lambda I)^-1 b and the absolute lambda used."""
        mask = self.subsets[name]
        a = self._a(mask)
        c2 = self.total / float(self.w[mask].sum())
        if self.form == "primal":
            return self._primal(name, mask, a, c2, b, lam, relative)
        return self._dual(mask, a, c2, b, lam, relative)

    def _primal(
        self,
        name: str,
        mask: torch.Tensor,
        a: list[tuple[torch.Tensor, float]],
        c2: float,
        b: torch.Tensor,
        lam: float,
        relative: bool,
    ) -> tuple[torch.Tensor, float]:
        import torch

        zs = self.zs[mask]
        if name in self.parts:
            sigma = self.parts[name].clone()
        else:  # "all" = the disjoint train and held parts
            sigma = self.parts["train"] + self.parts["held"]
        for a_g, w_g in a:
            s = zs.T @ a_g  # (d,)
            sigma.addr_(s, s, alpha=-1.0 / w_g)  # - s s^T / W_gS
        sigma.mul_(c2)
        d = sigma.shape[0]
        lam_abs = lam * float(torch.trace(sigma)) / d if relative else lam
        sigma.diagonal().add_(lam_abs)
        chol, info = torch.linalg.cholesky_ex(sigma)
        if int(info) != 0:
            raise SteerbakeError(
                f"the covariance plus lambda ({lam_abs:.3g}) is not positive "
                "definite; raise --lambda"
            )
        return _chol_solve(chol, b), lam_abs

    def _dual(
        self,
        mask: torch.Tensor,
        a: list[tuple[torch.Tensor, float]],
        c2: float,
        b: torch.Tensor,
        lam: float,
        relative: bool,
    ) -> tuple[torch.Tensor, float]:
        import torch

        zs = self.zs[mask]
        idx = mask.nonzero()[:, 0]
        # M_S = c (I - B A^T): B (n_S, k) has columns a_g, A columns a_g / W_gS
        bmat = torch.stack([a_g for a_g, _ in a], 1)
        amat = bmat / torch.tensor([w_g for _, w_g in a], dtype=bmat.dtype)

        def apply_m(t: torch.Tensor) -> torch.Tensor:  # M_S t, t (n_S,)
            return math.sqrt(c2) * (t - bmat @ (amat.T @ t))

        # Y Y^T = M G M = c^2 (G - B Q^T - Q B^T), R = G A, Q = R - B (A^T R) / 2
        # (A^T R is symmetric): one rank-2k update of the gathered Gram matrix.
        gram = self.gram[idx[:, None], idx]  # (n_S, n_S), a copy
        r = gram @ amat
        q = r - 0.5 * bmat @ (amat.T @ r)
        gram.addmm_(torch.cat([bmat, q], 1), torch.cat([q, bmat], 1).T, alpha=-1.0)
        gram.mul_(c2)
        d = zs.shape[1]
        lam_abs = lam * float(torch.trace(gram)) / d if relative else lam
        if lam_abs <= 0:
            raise SteerbakeError(
                "the dual form needs lambda > 0; raise --lambda or use --solver primal"
            )
        gram.diagonal().add_(lam_abs)
        chol, info = torch.linalg.cholesky_ex(gram)
        if int(info) != 0:
            raise SteerbakeError(
                f"the Gram matrix plus lambda ({lam_abs:.3g}) is not positive "
                "definite; raise --lambda"
            )
        u = _chol_solve(chol, apply_m(zs @ b))  # (Y Y^T + lam)^-1 Y b
        return (b - zs.T @ apply_m(u)) / lam_abs, lam_abs


def _weighted_diff(
    x: torch.Tensor, w: torch.Tensor, group: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """mu_R - mu_C over the rows in mask, weighted by w. (d,)"""
    means = []
    for g in (REFUSAL, COMPLIANT):
        wm = w * (mask & (group == g)).to(w.dtype)  # (n,) weights, 0 outside the class
        means.append((wm @ x) / wm.sum())
    return means[0] - means[1]


def fit_layer(
    x: np.ndarray, score: np.ndarray, group: np.ndarray, held: np.ndarray, opts: FitOptions
) -> LayerFit:
    """Fit one layer. x (m, d) rows of the scored prompts, score/group/held (m,).

    The returned vector uses every row of R and C; the diagnostics come from a refit
    without the held-out rows, scored on them (in-sample when nothing is held out).
    """
    import torch

    dtype = torch.float64 if opts.float64 else torch.float32
    used = group != NEUTRAL
    xt = torch.as_tensor(np.ascontiguousarray(x[used])).to(dtype)  # (n, d)
    gt = torch.as_tensor(group[used])
    wt = torch.as_tensor(_weights(score[used], opts.method)).to(dtype)
    heldt = torch.as_tensor(held[used])
    has_split = bool(heldt.any())
    masks = {"all": torch.ones_like(heldt)}
    if has_split:
        masks |= {"train": ~heldt, "held": heldt}
    b = {name: _weighted_diff(xt, wt, gt, m) for name, m in masks.items() if name != "held"}
    d = xt.shape[1]
    diag: dict[str, Any] = {}
    if opts.method == "md":
        v = dict(b)
    else:
        cov = gt == COMPLIANT if opts.covariance == "compliant" else torch.ones_like(heldt)
        fitted = ["all", "train"] if has_split else ["all"]
        form = _choose_form(opts.solver, int(cov.sum()), d, opts.lam > 0, len(fitted))
        ridge = _Ridge(xt[cov], wt[cov], gt[cov], {k: m[cov] for k, m in masks.items()}, form)
        v = {}
        for name in fitted:
            v[name], lam_abs = ridge.solve(name, b[name], opts.lam, opts.lambda_mode == "relative")
            if name == "all":
                diag |= {"lambda": lam_abs, "form": form}
    v_all = v["all"].double()
    raw_norm = float(v_all.norm())
    if raw_norm == 0 or not math.isfinite(raw_norm):
        raise SteerbakeError(
            f"the fitted vector has norm {raw_norm}; the sets may hold identical activations"
        )
    diag = {
        "raw_norm": raw_norm,
        "cos_md": float(v_all @ b["all"].double() / (raw_norm * float(b["all"].norm()))),
        **diag,
        **_scores(x, score, group, held, v["train" if has_split else "all"]),
    }
    return LayerFit(v_all.numpy(), diag)


def _scores(
    x: np.ndarray, score: np.ndarray, group: np.ndarray, held: np.ndarray, v: torch.Tensor
) -> dict[str, Any]:
    """pearson_r and auc of the projection on v over the held-out rows (all scored rows
    when nothing is held out)."""
    rows = held if held.any() else np.ones_like(held)
    u = v.double().numpy()
    proj = x[rows].astype(np.float64) @ (u / np.linalg.norm(u))
    g = group[rows]
    return {
        "pearson_r": pearson(proj, score[rows]),
        "auc": auc(proj[g == REFUSAL], proj[g == COMPLIANT]),
        "diagnostics_on": "heldout" if held.any() else "in-sample",
        "n_diagnostic": int(rows.sum()),
    }


# --------------------------------------------------------------------------- the command
def fit_vectors(
    acts: ActivationSource,
    scores: dict[str, float],
    opts: FitOptions,
    *,
    layers: Sequence[int] | None = None,
    provenance: dict[str, Any] | None = None,
    progress: bool = False,
) -> SteeringVectors:
    """Fit every chosen layer of `acts` (all it holds by default) into SteeringVectors."""
    from tqdm.auto import tqdm

    from bake import __version__
    from bake.artifacts.vectors import SteeringVectors

    opts.check()
    labels = align_labels(acts.ids, scores, opts)
    chosen = list(acts.layers) if layers is None else sorted(set(layers))
    missing = [layer for layer in chosen if layer not in acts.layers]
    if missing:
        raise InputError(
            f"the activations hold no layer {missing[0]}; collect it or choose "
            f"from {acts.layers[0]}-{acts.layers[-1]}"
        )
    directions, scales, diagnostics = {}, {}, {}
    compliant_rows = labels.rows[labels.group == COMPLIANT]
    for layer in tqdm(chosen, desc="fit", unit="layer", disable=not progress):
        x = acts.layer(layer)[labels.rows]
        _check_finite(x, layer, [acts.ids[k] for k in labels.rows])
        result = fit_layer(x, labels.score, labels.group, labels.held, opts)
        scale = float(np.mean(acts.norms(layer)[compliant_rows]))
        if not (math.isfinite(scale) and scale > 0):
            raise InputError(
                f"layer {layer}: the compliant set's mean norm is {scale}; the "
                "activations are damaged, collect again"
            )
        directions[layer] = (result.vector / result.diagnostics["raw_norm"]).astype(np.float32)
        scales[layer] = scale
        diagnostics[layer] = {**result.diagnostics, "scale": scale}
    prov = {
        "steerbake_version": __version__,
        "position": acts.position,
        "counts": labels.counts(),
        "options": {("lambda" if k == "lam" else k): v for k, v in asdict(opts).items()},
        "weights": "abs_score" if opts.method == "wrmd" else "uniform",
        **(provenance or {}),
    }
    return SteeringVectors(
        directions,
        scales,
        acts.fingerprint,
        method=opts.method,
        provenance=prov,
        diagnostics=diagnostics,
    )


def _check_finite(x: np.ndarray, layer: int, ids: list[str]) -> None:
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        first = ids[int(np.flatnonzero(bad)[0])]
        raise InputError(
            f"activations of layer {layer} hold NaN/Inf in {int(bad.sum())} rows "
            f"(e.g. id {first!r}); collect again with --dtype float32"
        )


def render_diagnostics(vectors: SteeringVectors) -> str:
    """The per-layer table printed by `steerbake fit`."""

    def num(value: Any, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    lines = [
        f"{'layer':>5}  {'raw_norm':>10}  {'scale':>9}  {'pearson_r':>9}  {'auc':>6}  {'cos_md':>6}"
    ]
    for layer in vectors.layers:
        dg = vectors.diagnostics[layer]
        lines.append(
            f"{layer:>5}  {num(dg['raw_norm'], '10.4g')}  {num(dg['scale'], '9.4g')}  "
            f"{num(dg['pearson_r'], '9.3f')}  {num(dg['auc'], '6.3f')}  "
            f"{num(dg['cos_md'], '6.3f')}"
        )
    return "\n".join(lines)


def run_fit(
    acts_folder: Path,
    scores_file: Path,
    output: Path,
    opts: FitOptions,
    *,
    layers: Sequence[int] | None = None,
    categories: Sequence[str] = (),
    progress: bool = True,
) -> SteeringVectors:
    """`steerbake fit`: read ACTS and SCORES, fit (on the prompts of `categories` only, when
    given), write the vector file."""
    from bake.artifacts.activations import ActivationSet
    from bake.artifacts.categories import row_categories, within_categories
    from bake.files.fileio import sha256_file

    opts.check()
    acts = ActivationSet.open(Path(acts_folder))
    scores = load_scores(Path(scores_file))
    if categories:
        by_row = row_categories(acts, Path(scores_file))
        scores = within_categories(scores, by_row, categories)
    vectors = fit_vectors(
        acts,
        scores,
        opts,
        layers=layers,
        progress=progress,
        provenance={
            "activations": str(acts_folder),
            "scores": str(scores_file),
            "scores_sha256": sha256_file(Path(scores_file)),
            "model_source": acts.index["model"].get("source"),
            **scores_source(Path(scores_file)),
            **({"categories": list(categories)} if categories else {}),
        },
    )
    vectors.rounding = acts.index["model"].get("dtype")  # the checkpoint's, when recorded
    vectors.save(Path(output))
    return vectors
