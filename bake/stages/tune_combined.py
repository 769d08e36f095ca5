"""`tune`'s `combined` vector option: the whitened combination of a by-category VECTORS
file (bake.artifacts.categories), its weights w found by stage-1 proxies only
(bake.stages.combination), then searched like any other option.

  reference configuration: the REFERENCE_LAYERS best-ranked layers, flat, at the alpha the
      equal-weight combination's proxy KL puts at KL_SHARE of --kl-max (predict_alpha);
  w = argmin proxy refusal(primary)  s.t.  proxy refusal(guard) >= unsteered - tolerance,
                                           proxy KL <= --kl-max
  (the proxies are means of per-prompt values in [0, 1], so the harmful tolerance is read
  in the same units as a share of prompts). The weights are kept in the tune cache.
"""

from __future__ import annotations

from typing import Any

from bake.artifacts.categories import CategoryVectors, combine_categories, has_categories
from bake.artifacts.steering import Steering
from bake.artifacts.tuning import TuneSettings
from bake.runtime.proxy import score
from bake.stages.candidates import ALPHA_START, predict_alpha
from bake.stages.combination import MAX_CATEGORIES, search_combination_weights
from bake.stages.search import KL_SET, Search

REFERENCE_LAYERS = 4
KL_SHARE = 0.5
ALPHA_PROBES = 3  # proxy calls that place the reference alpha


def combined_steering(
    search: Search, base: Steering, ranked: list[int], s: TuneSettings
) -> tuple[Steering | None, str]:
    """(the combined option's Steering, "") or (None, why not)."""
    path = base.plan.vectors_file
    if not has_categories(path):
        return None, "VECTORS has no categories (fit --by-category)"
    cats = CategoryVectors.load(path)
    names = cats.names[:MAX_CATEGORIES]
    layers = sorted(ranked[:REFERENCE_LAYERS])
    weights = _cached_weights(search, names)
    if weights is None:
        weights = _search_weights(search, base, cats, names, layers, s)
    vectors = combine_categories(cats, cats.whitening, weights)
    vectors.provenance = {**vectors.provenance, "combination_weights": weights}
    return base.with_vectors(vectors), ""


def _cached_weights(search: Search, names: list[str]) -> dict[str, float] | None:
    row = search.cache.get("combination")
    if row is None or sorted(row) != sorted(names):
        return None
    return {n: float(w) for n, w in row.items()}


def _search_weights(
    search: Search,
    base: Steering,
    cats: CategoryVectors,
    names: list[str],
    layers: list[int],
    s: TuneSettings,
) -> dict[str, float]:
    def proxies(vectors: Any, alpha: float) -> tuple[float, float, float]:
        steering = base.with_vectors(vectors).with_config(layers, -alpha)  # remove refusal
        got = score(search.rows, KL_SET, steering, search.model, search.measure)
        return got.refusal[s.primary], got.refusal[s.guard], got.kl

    equal = combine_categories(cats, cats.whitening, dict.fromkeys(names, 1.0))
    seen, alpha = [], ALPHA_START
    for _ in range(ALPHA_PROBES):
        seen.append((alpha, proxies(equal, alpha)[2]))
        alpha = predict_alpha(seen, KL_SHARE * s.kl_max)
    alpha = seen[-1][0]
    guard0 = search.proxy_baseline()[s.guard]
    result = search_combination_weights(
        cats,
        lambda v: proxies(v, alpha),
        harmful_min=guard0 - s.harmful_tolerance,
        kl_max=s.kl_max,
        names=names,
    )
    weights = dict(result.best.weights)
    search.cache.put("combination", None, weights)
    return weights
