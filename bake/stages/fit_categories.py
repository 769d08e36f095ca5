"""`steerbake fit --by-category`: one direction per prompt category per layer, fitted within
the category (its refused vs its answered prompts, with the fit's method and options), the
vectors of all chosen categories together, and per layer the whitening statistics
G_l = U_l^T (Sigma_C + lambda I)^-1 U_l of the combination (bake.artifacts.categories), all
in one vector file.

Sigma_C: covariance of the compliant rows of every chosen category (unweighted), lambda as
the fit's (relative to trace(Sigma_C)/d by default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bake.artifacts.activations import ActivationSource
from bake.artifacts.categories import (
    CategoryVectors,
    WhiteningStats,
    check_category_name,
    row_categories,
    within_categories,
)
from bake.artifacts.scores import load_scores, scores_source
from bake.errors import InputError
from bake.options import opt
from bake.stages.fit import COMPLIANT, FitOptions, align_labels, fit_vectors
from bake.stages.geometry import Whitener


@dataclass(frozen=True)
class FitCategoryOptions:
    """Which prompt categories `fit` uses, and whether it fits each on its own."""

    categories: tuple[str, ...] = opt(
        (),
        "Fit on the prompts of this category only (repeatable; from the prompt files' "
        '"category" field).',
        flags=("--category",),
        metavar="NAME",
        multiple=True,
    )
    by_category: bool = opt(
        False,
        "Also fit one direction per category per layer, for `plan --category` (all "
        "categories, or those named by --category).",
    )


def fit_category_vectors(
    acts: ActivationSource,
    scores: dict[str, float],
    categories: Mapping[str, str],
    opts: FitOptions,
    *,
    names: Sequence[str] = (),
    layers: Sequence[int] | None = None,
    provenance: dict[str, Any] | None = None,
) -> CategoryVectors:
    """Fit every category in `names` (default: all that have scored rows) on its own, and
    all of them together; categories maps row id -> category."""
    present = {categories[i] for i in scores if i in categories}
    names = list(names) or sorted(present)
    for name in names:
        check_category_name(name)
    chosen = within_categories(scores, categories, names)
    pooled = fit_vectors(acts, chosen, opts, layers=layers, provenance=provenance)
    per: dict[str, Any] = {}
    for name in names:
        try:
            per[name] = fit_vectors(
                acts, within_categories(scores, categories, [name]), opts, layers=pooled.layers
            )
        except InputError as e:
            raise InputError(f"category {name!r}: {e}") from None
    pooled.provenance["categories"] = names
    directions = {n: per[n].directions for n in names}
    return CategoryVectors(
        pooled,
        directions,
        {n: per[n].scales for n in names},
        whitening_stats(acts, chosen, directions, opts, pooled.layers),
        {n: _own_counts(per[n].provenance["counts"]) for n in names},
        {n: per[n].diagnostics for n in names},
    )


def _own_counts(counts: dict[str, int]) -> dict[str, int]:
    """A category's fit counts without the rows of other categories (counted unscored)."""
    return {k: counts[k] for k in ("refusal", "compliant", "neutral", "heldout")}


def whitening_stats(
    acts: ActivationSource,
    scores: dict[str, float],
    directions: Mapping[str, Mapping[int, np.ndarray]],
    opts: FitOptions,
    layers: Sequence[int],
) -> WhiteningStats:
    """Per layer G = U^T (Sigma_C + lambda I)^-1 U, U (d, k) the categories' unit
    directions in the order of `directions`, Sigma_C over the compliant rows of `scores`."""
    labels = align_labels(acts.ids, scores, opts)
    compliant = labels.rows[labels.group == COMPLIANT]
    names = list(directions)
    gram, lambdas = {}, {}
    for layer in layers:
        whitener = Whitener(
            acts.layer(layer)[compliant], opts.lam, relative=opts.lambda_mode == "relative"
        )
        u = np.stack([np.asarray(directions[n][layer], np.float64) for n in names], 1)
        g = u.T @ whitener.solve(u)  # (k, k)
        gram[layer] = (g + g.T) / 2
        lambdas[str(layer)] = whitener.lam
    info = {
        "covariance": "compliant rows of the chosen categories, unweighted",
        "rows": len(compliant),
        "lambda": lambdas,
        "lambda_mode": opts.lambda_mode,
    }
    return WhiteningStats(names, gram, info)


def run_fit_by_category(
    acts_folder: Path,
    scores_file: Path,
    output: Path,
    opts: FitOptions,
    *,
    names: Sequence[str] = (),
    layers: Sequence[int] | None = None,
) -> CategoryVectors:
    """`steerbake fit --by-category`: read ACTS and SCORES, fit, write the vector file."""
    from bake.artifacts.activations import ActivationSet
    from bake.files.fileio import sha256_file

    opts.check()
    acts = ActivationSet.open(Path(acts_folder))
    scores = load_scores(Path(scores_file))
    result = fit_category_vectors(
        acts,
        scores,
        row_categories(acts, Path(scores_file)),
        opts,
        names=names,
        layers=layers,
        provenance={
            "activations": str(acts_folder),
            "scores": str(scores_file),
            "scores_sha256": sha256_file(Path(scores_file)),
            "model_source": acts.index["model"].get("source"),
            **scores_source(Path(scores_file)),
        },
    )
    result.pooled.rounding = acts.index["model"].get("dtype")
    result.save(Path(output))
    return result


def render_categories(result: CategoryVectors) -> str:
    """Per category: its counts, and per layer the held-out AUC of its direction and its
    cosine to the direction of all categories together."""
    lines = [f"{'category':<20} {'refusal':>7} {'compliant':>9}  best layer (auc, cos to all)"]
    for name in result.names:
        counts = result.counts.get(name, {})
        diag = result.diagnostics.get(name, {})
        best = max(diag, key=lambda k: diag[k].get("auc") or 0.0) if diag else None
        cos = (
            float(result.directions[name][best] @ result.pooled.directions[best])
            if best is not None
            else float("nan")
        )
        where = "-" if best is None else f"{best} ({diag[best].get('auc') or 0:.3f}, {cos:.3f})"
        lines.append(
            f"{name:<20} {counts.get('refusal', 0):>7} {counts.get('compliant', 0):>9}  {where}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- plan
def write_combination(
    vectors_file: Path, weights: Mapping[str, float], plan_file: Path
) -> tuple[Path, dict[str, Any]]:
    """`plan --category`: the whitened combination of the chosen categories written beside
    the plan as PLAN.combined.safetensors (one direction per layer, what every route
    bakes); returns its path and the plan's record of the choice."""
    from bake.artifacts.categories import combine_categories
    from bake.files.fileio import sha256_file

    source = Path(vectors_file)
    categories = CategoryVectors.load(source)
    combined = combine_categories(categories, categories.whitening, weights)
    target = Path(plan_file).with_name(f"{Path(plan_file).stem}.combined.safetensors")
    if target.resolve() == source.resolve():
        raise InputError(
            f"{target} would overwrite the vector file it is made from; write the plan elsewhere"
        )
    combined.save(target)
    record = {
        "categories": {
            "vectors": str(source),
            "vectors_sha256": sha256_file(source),
            "weights": dict(combined.provenance["combination"]["weights"]),
            "combination": "whitened: v = U G^-1/2 w, G = U^T (Sigma_C + lambda I)^-1 U",
        }
    }
    return target, record
