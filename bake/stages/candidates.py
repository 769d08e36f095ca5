"""The candidate space of `tune`'s stage 1: layer sets from the fit's ranking, per-layer
profiles, and the ladders of alpha (or ablation strength) each is walked along, in turn.

  layer sets: the top 1, 2, 4, 8 ranked layers and contiguous bands of BAND_WIDTHS around
      the two best (or the top k for each --layer-counts k);
  profiles: flat (m_l = 1) or ranked (m_l from 1 at the best-ranked layer down to
      RANKED_FLOOR at the last);
  ladder: ALPHA_START, then the alphas a power law through the last two (alpha, KL) points
      predicts for the first share of --kl-max in KL_TARGETS not yet reached (a step the
      MAX_STEP cap cut short aims at the same share again), then x CLIMB_GROWTH until the
      proxy KL crosses the bound, then bisected `refine` times.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

from bake.artifacts.tuning import Candidate, Proxy, TuneSettings
from bake.artifacts.vectors import SteeringVectors
from bake.errors import InputError
from bake.model.arch import ArchSpec

ALPHA_START, ALPHA_LIMIT = 0.004, 4.0  # the default ladder's first and largest magnitude
KL_TARGETS = (0.25, 1.0)  # after the first step: alphas predicted to put the KL at these
REACHED = 0.5  # ... shares of the bound (a share counts as reached from REACHED x it on),
CLIMB_GROWTH = math.sqrt(2)  # ... then this step until the bound is crossed
MIN_STEP, MAX_STEP = 1.2, 64.0  # bounds on one predicted step (factor on alpha)
ABLATION_STRENGTHS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)  # kind ablate: a in y -= a u u' y
BAND_WIDTHS = (3, 5, 9)
RANKED_FLOOR = 0.5  # the ranked profile's multiplier at the last-ranked layer of a set


def ranked_layers(vectors: SteeringVectors, spec: ArchSpec, drop_deepest: float) -> list[int]:
    """Layers by the fit's Pearson r (best first; by depth where the file has none), the
    deepest share and unreachable ones (block 0 without a GGUF bias slot) left out."""
    n = vectors.fingerprint.num_layers
    limit = n - max(1, round(n * drop_deepest))
    usable = [
        layer for layer in vectors.layers if layer < limit and (layer > 0 or spec.gguf_bias_slot)
    ]
    if not usable:
        raise InputError(
            f"no layer left to steer among {vectors.layers} after dropping the "
            f"deepest {drop_deepest:.0%}; fit vectors for earlier layers"
        )

    def r(layer: int) -> float:
        value = vectors.diagnostics.get(layer, {}).get("pearson_r")
        return float(value) if value is not None and math.isfinite(value) else -math.inf

    return sorted(usable, key=lambda layer: (-r(layer), layer))


def layer_sets(ranked: list[int], counts: Sequence[int] | None) -> list[tuple[int, ...]]:
    """The top-k sets (k in counts; default 1, 2, 4, 8) and, by default, contiguous bands
    of 3, 5 and 9 layers around the two best, within the usable layers, without repeats."""
    sets = [tuple(sorted(ranked[:k])) for k in (counts or (1, 2, 4, 8)) if k <= len(ranked)]
    if counts and not sets:
        sets = [tuple(sorted(ranked))]
    if not counts:
        usable = set(ranked)
        for centre in ranked[:2]:
            for width in BAND_WIDTHS:
                half = width // 2
                band = range(centre - half, centre + half + 1)
                sets.append(tuple(layer for layer in band if layer in usable))
    return list(dict.fromkeys(s for s in sets if s))


Multipliers = tuple[tuple[int, float], ...]  # (layer, m_l) pairs, sorted by layer


def profiles(layers: tuple[int, ...], ranked: list[int]) -> list[tuple[str, Multipliers]]:
    """flat (every m_l = 1) and, for 3 or more layers, ranked: m_l from 1 at the set's
    best-ranked layer down to RANKED_FLOOR at its last, linear in rank."""
    out: list[tuple[str, Multipliers]] = [("flat", ())]
    if len(layers) >= 3:
        order = sorted(layers, key=ranked.index)
        step = (1 - RANKED_FLOOR) / (len(order) - 1)
        weights = sorted((layer, round(1 - i * step, 4)) for i, layer in enumerate(order))
        out.append(("ranked", tuple(weights)))
    return out


def ladder(
    measure: Any,
    option: str,
    layers: tuple[int, ...],
    profile: str,
    multipliers: Multipliers,
    s: TuneSettings,
    kind: str = "add",
) -> Iterator[Proxy]:
    """Stage 1 along one ladder of alpha magnitudes, stopping where the proxy KL crosses
    the bound, then bisecting that last step `refine` times (the front's best points sit
    just below it). Default ladder: ALPHA_START, then the alphas predicted to put the KL at
    the first share of the bound in KL_TARGETS it has not reached (`predict_alpha`), then
    x sqrt(2) up to ALPHA_LIMIT; given --alphas: those, ascending. Kind ablate: the strengths
    ABLATION_STRENGTHS, ascending."""
    sign = 1.0 if s.goal == "induce" or kind == "ablate" else -1.0

    def at(magnitude: float) -> Proxy:
        c = Candidate(option, layers, round(sign * magnitude, 6), profile, multipliers, kind)
        return measure(c)

    values = ABLATION_STRENGTHS if kind == "ablate" else s.alphas
    given = iter(sorted(values)) if values else None
    seen: list[tuple[float, float]] = []  # (alpha magnitude, proxy KL)
    ok, bad = 0.0, math.nan
    a: float | None = next(given) if given else ALPHA_START
    while a is not None:
        p = at(a)
        yield p
        seen.append((a, p.kl))
        if not p.kl <= s.kl_max:
            bad = a
            break
        ok = a
        if given is not None:
            a = next(given, None)
            continue
        share = next((t for t in KL_TARGETS if p.kl < REACHED * t * s.kl_max), None)
        a = predict_alpha(seen, share * s.kl_max) if share else a * CLIMB_GROWTH
        a = a if a <= ALPHA_LIMIT else None
    if math.isnan(bad) or ok == 0:
        return
    for _ in range(s.refine):
        mid = (ok + bad) / 2
        p = at(mid)
        yield p
        ok, bad = (mid, bad) if p.kl <= s.kl_max else (ok, mid)


def predict_alpha(seen: list[tuple[float, float]], kl_target: float) -> float:
    """The alpha at which the KL reaches kl_target, on the power law KL = c a^e through the
    last two (alpha, KL) points (e = 2, the small-alpha law, from one point; clipped to
    [1, 4]); never below x1.2 or above x64 the last alpha."""
    a1, k1 = seen[-1]
    e = 2.0
    if len(seen) >= 2:
        a0, k0 = seen[-2]
        if k0 > 0 and k1 > 0 and a1 != a0:
            e = min(4.0, max(1.0, math.log(k1 / k0) / math.log(a1 / a0)))
    step = (kl_target / k1) ** (1 / e) if k1 > 0 else MAX_STEP
    return a1 * min(MAX_STEP, max(MIN_STEP, step))


def round_robin(ladders: list[Iterator[Proxy]], budget: int) -> Iterator[Proxy]:
    """One step of each ladder in turn until `budget` candidates or every ladder ended."""
    active = list(ladders)
    while active and budget > 0:
        for it in list(active):
            if budget <= 0:
                return
            p = next(it, None)
            if p is None:
                active.remove(it)
                continue
            budget -= 1
            yield p
