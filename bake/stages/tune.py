"""`steerbake tune`: find the vector, layers and strength to bake, in two stages.

Stage 1 scores many candidates by forward passes only (bake.stages.search, bake.runtime.
proxy): per tuning prompt a proxy of refusal from the model's own refusal openings,
teacher-forced (greedy decoding: the margin of the opening over its strongest rival;
sampling: the opening's probability), the benign KL at the first answer position and the
drift (the KL along the first answer tokens). The shared chat-template prefix runs once and
only the blocks from a candidate's first steered layer up run at all. Candidates: vector
options (the fitted VECTORS, or directions fitted here on the tuning sets, bake.stages.
selective), layer sets from the fit's ranking (the top k, and contiguous bands around the
two best layers), a flat or ranked per-layer profile, and alpha: a ladder from 0.004, to
the alphas a power law through its last two points predicts for a quarter of --kl-max and
for --kl-max, then x sqrt(2) until the proxy KL crosses the bound, then bisected. Ladders
advance in turn until --stage1 candidates. (A grid, not a sampler: KL grows with alpha
along each ladder, so the bound is found in a few steps and no candidate is spent far
beyond it.)

Stage 2 generates and judges the tuning sets for --confirm configurations: first the best
by the predicted guard rate and points spread along the guard axis among the candidates that
moved the primary proxy (first_picks); then one at a time, the best midpoint in alpha of a
ladder's judged bracket (midpoints, bisect_pick: scored by the proxy first), or, with no
bracket left, bisecting the judged boundary in drift and guard proxy among the candidates
that moved the primary proxy at least MIN_PROGRESS of its room (next_pick). The plan is
the best confirmed configuration that keeps the guards:
  remove, selective: lowest sensitive refusal with harmful refusal >= unsteered -
      --harmful-tolerance, benign refusal <= unsteered + --benign-tolerance, benign KL
      <= --kl-max, and no set with more new broken (looping, corrupted) answers than
      --benign-tolerance;
  induce: highest target refusal counting only answers that are not broken, same guards
      on the benign set.
No plan from noise: the chosen configuration must move, net, at least 10% of the target
set (and 5 prompts), with an exact one-sided McNemar p < 0.05 on the prompts that changed;
otherwise the report is written and the command says why.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bake.artifacts.prompts import Prompt
from bake.artifacts.steering import Steering
from bake.artifacts.tuning import (
    BOTH_STRENGTH,
    Candidate,
    Confirmed,
    Proxy,
    Significance,
    TuneCache,
    TuneResult,
    TuneSettings,
    fronts,
    objectives,
)
from bake.artifacts.vectors import SteeringVectors
from bake.errors import InputError
from bake.files.jsonio import dumps
from bake.options import opt
from bake.stages.candidates import ladder, layer_sets, profiles, ranked_layers, round_robin
from bake.stages.measure import Measurer
from bake.stages.search import Search
from bake.stats import auc, mcnemar_one_sided, spearman

PROGRESS_FLOORS = (0.5, 0.25, -math.inf)  # moved()'s thresholds on primary_progress
MIN_PROGRESS = 0.1  # stage 2's bisection skips candidates that moved the primary proxy less
MIN_BRACKET = 0.1  # a ladder's judged bracket is halved while wider than this share of alpha
GUARD_REASON = {
    "remove": "harmful refusal dropped",
    "selective": "harmful refusal dropped",
    "induce": "benign refusal rose",
}


class NoPlan(InputError):
    """The search ended without a configuration worth a plan (the report says why)."""


@dataclass(frozen=True, kw_only=True)
class TuneFiles:
    """The files `run_tune` reads and writes besides MODEL and VECTORS."""

    sensitive: Path | None = opt(None, "Prompts to stop refusing.")
    harmful: Path | None = opt(None, "Prompts to keep refusing.")
    benign: Path = opt(
        help="Prompts for the KL guard (and, with --goal induce, to keep answering)."
    )
    target: Path | None = opt(None, "With --goal induce: prompts to make the model refuse.")
    output: Path = opt(flags=("-o", "--output"))
    report_dir: Path | None = opt(None, "Where the report goes [default: PLAN-tuning/].")

    def sets(self) -> dict[str, Path]:
        """The prompt sets given, by name (run_tune's `set_files`)."""
        named = {
            "sensitive": self.sensitive,
            "harmful": self.harmful,
            "benign": self.benign,
            "target": self.target,
        }
        return {name: path for name, path in named.items() if path is not None}


def guard_kept(
    p: Proxy, base: dict[str, float], judged: dict[str, float], s: TuneSettings, greedy: bool
) -> bool:
    """The judged tolerance carried to the guard's predicted rate (Proxy.predicted_rate;
    base: the unsteered one): remove/selective keep it above base - tolerance x (base /
    judged rate); induce keeps the benign one below base + tolerance."""
    guard = p.predicted_rate(s.guard, greedy)
    if s.goal == "induce":
        return guard <= base[s.guard] + s.benign_tolerance
    ratio = base[s.guard] / judged[s.guard] if judged[s.guard] > 0 else 1.0
    return guard >= base[s.guard] - s.harmful_tolerance * ratio


def primary_progress(p: Proxy, base: dict[str, float], s: TuneSettings) -> float:
    """How far the primary proxy moved toward the goal, as a share of the room it had:
    remove 1 - primary / base; induce (primary - base) / (1 - base)."""
    now, before = p.refusal[s.primary], base[s.primary]
    if s.goal == "induce":
        return (now - before) / max(1 - before, 1e-9)
    return 1 - now / max(before, 1e-9)


def moved(proxies: list[Proxy], base: dict[str, float], s: TuneSettings) -> list[Proxy]:
    """The candidates under the KL bound that moved the primary proxy at least half its
    room (a quarter, or any, when fewer than --confirm did), front 1 first."""
    flat = [p for front in fronts(proxies, s) for p in front]
    for floor in PROGRESS_FLOORS:
        found = [p for p in flat if primary_progress(p, base, s) >= floor]
        if len(found) >= s.confirm:
            break
    return found


def first_picks(
    pool: list[Proxy],
    base: dict[str, float],
    judged: dict[str, float],
    s: TuneSettings,
    greedy: bool = False,
) -> list[Proxy]:
    """Stage 2's first half: the best by the primary proxy among those that keep the
    predicted guard (guard_kept; base: the unsteered predicted rates), then points spread
    evenly along the guard proxy, so the judge sees the whole trade-off between moving the
    primary set and keeping the guard."""
    n = max(1, (s.confirm + 1) // 2)
    kept = [p for p in pool if guard_kept(p, base, judged, s, greedy)]
    picks = sorted(kept, key=lambda p: objectives(p, s))[:1]
    rest = sorted((p for p in pool if p not in picks), key=lambda p: objectives(p, s)[1])
    want = min(n - len(picks), len(rest))
    if want > 0:
        step = (len(rest) - 1) / max(want - 1, 1)
        picks += [rest[round(i * step)] for i in range(want)]
    return picks


def next_pick(
    pool: list[Proxy], done: list[tuple[Proxy, Confirmed]], s: TuneSettings
) -> Proxy | None:
    """Stage 2's second half, one at a time: a bisection of the judged boundary in the
    drift (KL along the answer), over the candidates there are. Confirmed configurations
    bracket it: the largest drift that passed and the smallest that failed for benign
    refusal or broken answers. The next pick is the median by drift of the unconfirmed
    candidates strictly inside that bracket that beat every passing configuration on the
    primary proxy and keep a better guard proxy than any configuration that lost the guard;
    with none inside, the best primary proxy below both failures."""
    guard_lost = GUARD_REASON[s.goal]
    left = [p for p in pool if p.candidate not in {q.candidate for q, _ in done}]
    if not left:
        return None
    passed = [p for p, c in done if c.feasible]
    broke = [p.drift for p, c in done if not c.feasible and c.reason != guard_lost]
    lost = [objectives(p, s)[1] for p, c in done if c.reason == guard_lost]
    drift_fail, guard_fail = min(broke, default=math.inf), min(lost, default=math.inf)
    drift_pass = max((p.drift for p in passed), default=-math.inf)
    primary_pass = min((objectives(p, s)[0] for p in passed), default=math.inf)
    inside = sorted(
        (
            p
            for p in left
            if drift_pass < p.drift < drift_fail
            and objectives(p, s)[0] < primary_pass
            and objectives(p, s)[1] < guard_fail
        ),
        key=lambda p: p.drift,
    )
    if inside:
        return inside[(len(inside) - 1) // 2]
    below = [p for p in left if p.drift < drift_fail and objectives(p, s)[1] < guard_fail]
    return min(below, key=lambda p: (*objectives(p, s), p.drift), default=None)


def midpoints(done: list[tuple[Proxy, Confirmed]], s: TuneSettings) -> list[Candidate]:
    """Per ladder (option, layers, profile, kind) with a confirmed configuration that failed
    and whose judged primary rate beats every feasible one: the alpha (strength) halfway
    between the failure and the largest feasible magnitude below it on that ladder (0, the
    unsteered model, without one), while that bracket is wider than MIN_BRACKET of it.
    Judged outcomes can turn over a narrow band of alpha that stage 1's steps jump across."""
    sign = -1 if s.goal == "induce" else 1
    confirmed = [c for _, c in done]
    best = min((sign * c.refusal[s.primary] for c in confirmed if c.feasible), default=math.inf)
    out = []
    for failed in confirmed:
        if failed.feasible or not sign * failed.refusal[s.primary] < best:
            continue
        rung, hi = failed.candidate, abs(failed.candidate.alpha)
        below = [
            c
            for c in confirmed
            if _ladder(c.candidate) == _ladder(rung) and abs(c.candidate.alpha) < hi
        ]
        closest = max(below, key=lambda c: abs(c.candidate.alpha), default=None)
        if closest is not None and not closest.feasible:
            continue  # a closer failure on this ladder brackets it
        lo = abs(closest.candidate.alpha) if closest is not None else 0.0
        if hi - lo > MIN_BRACKET * hi:
            out.append(replace(rung, alpha=math.copysign(round((lo + hi) / 2, 6), rung.alpha)))
    tried = {c.candidate for c in confirmed}
    return list(dict.fromkeys(c for c in out if c not in tried))


def _ladder(c: Candidate) -> tuple[Any, ...]:
    """What a stage-1 ladder holds fixed while alpha (strength) moves."""
    return (c.option, c.layers, c.profile, c.multipliers, c.kind)


def bisect_pick(
    mids: list[Proxy],
    base: dict[str, float],
    judged: dict[str, float],
    s: TuneSettings,
    greedy: bool,
) -> Proxy | None:
    """Of the midpoints' proxies under the KL bound, the best by the primary proxy, those
    that keep the predicted guard first."""
    under = [p for p in mids if p.kl <= s.kl_max]
    kept = [p for p in under if guard_kept(p, base, judged, s, greedy)]
    return min(kept or under, key=lambda p: objectives(p, s), default=None)


def choose(confirmed: list[Confirmed], s: TuneSettings) -> Confirmed | None:
    """The best feasible configuration: lowest primary refusal (highest for induce); ties to
    higher guard refusal (remove) / lower benign refusal (induce), then lower KL."""
    sign = -1 if s.goal == "induce" else 1
    feasible = [c for c in confirmed if c.feasible]
    return min(
        feasible,
        key=lambda c: (sign * c.refusal[s.primary], sign * -c.refusal[s.guard], c.kl),
        default=None,
    )


def significance(before: Sequence[int], after: Sequence[int], s: TuneSettings) -> Significance:
    """Net moves in the goal's direction and the exact one-sided McNemar p on the target
    set (remove: refused -> answered; induce: answered -> refused)."""
    down = sum(b == 1 and a == 0 for b, a in zip(before, after, strict=True))
    up = sum(b == 0 and a == 1 for b, a in zip(before, after, strict=True))
    with_goal, against = (up, down) if s.goal == "induce" else (down, up)
    p = mcnemar_one_sided(with_goal, against)
    needed = max(5, math.ceil(s.min_effect * len(before) - 1e-9))
    passed = with_goal - against >= needed and p < s.significance
    return Significance(with_goal, against, len(before), p, needed, passed)


def agreement(result: TuneResult) -> dict[str, float | None]:
    """How stage 1's proxy predicted stage 2's judge over the confirmed configurations: AUC
    of the per-prompt proxy against the judged label (every configuration and prompt of
    the proxy sets), and Spearman of the per-configuration primary rates."""
    s = result.settings
    by_candidate = {p.candidate: p for p in result.stage1}
    pos: list[float] = []
    neg: list[float] = []
    proxy_rates: list[float] = []
    judged_rates: list[float] = []
    for c in result.stage2:
        p = by_candidate.get(c.candidate)
        if p is None:
            continue
        for name in (s.primary, s.guard):
            for value, label in zip(p.per_prompt.get(name, []), c.labels[name], strict=True):
                (pos if label else neg).append(value)
        proxy_rates.append(p.refusal[s.primary])
        judged_rates.append(c.refusal[s.primary])
    return {"auc": auc(pos, neg), "spearman": spearman(proxy_rates, judged_rates)}


# --------------------------------------------------------------------------- the run
class _Clock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._t, 2)
        self._t = now


def _option_steerings(
    search: Search, base: Steering, ranked: list[int], s: TuneSettings
) -> tuple[dict[str, Steering], dict[str, str]]:
    """option -> a Steering over its vectors (file: VECTORS), and option -> why skipped."""
    from bake.stages.collect import collect_activations
    from bake.stages.selective import option_vectors

    steerings, skipped = {}, {}
    fitted = [o for o in s.options() if o not in ("file", "combined")]
    states: dict[str, dict[int, Any]] = {}
    if fitted:
        for name in s.sets:
            acts = collect_activations(
                search.model,
                search.tok,
                search.sets[name],
                layers=ranked,
                system=search.m.sampling.system,
            )
            states[name] = {layer: acts.rows[layer] for layer in ranked}
    for option in s.options():
        if option == "combined":
            from bake.stages.tune_combined import combined_steering

            steering, skipped[option] = combined_steering(search, base, ranked, s)
            if steering is not None:
                steerings[option] = steering
            continue
        vectors, why = option_vectors(option, base.vectors, states, search.labels, ranked)
        if vectors is None:
            skipped[option] = why
            continue
        steerings[option] = base if option == "file" else base.with_vectors(vectors)
        skipped[option] = ""
    if not steerings:
        raise InputError(
            "no vector option could be fitted on the tuning sets: "
            + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        )
    return steerings, skipped


def candidate_steering(
    steerings: dict[str, Steering], c: Candidate, provenance: dict[str, Any] | None = None
) -> Steering:
    """The candidate as a Steering over its option's vectors: alpha and profile (add), or
    the strength along u_l at every chosen block (ablate), or u_l removed at BOTH_STRENGTH
    and alpha added (both)."""
    base = steerings[c.option]
    if c.kind == "ablate":
        return base.with_ablation(list(c.layers), c.alpha, provenance=provenance)
    if c.kind == "both":
        multipliers = dict(c.multipliers)
        return base.with_ablation(
            list(c.layers),
            BOTH_STRENGTH,
            alpha=c.alpha,
            multipliers=multipliers,
            provenance=provenance,
        )
    return base.with_config(list(c.layers), c.alpha, dict(c.multipliers), provenance)


def run_search(
    model: Any,
    tok: Any,
    sets: dict[str, list[Prompt]],
    base: Steering,
    m: Measurer,
    settings: TuneSettings,
    cache: TuneCache,
    progress: bool = True,
) -> tuple[TuneResult, dict[str, Steering]]:
    from tqdm.auto import tqdm

    s, clock = settings, _Clock()
    ranked = ranked_layers(base.vectors, base.spec, s.drop_deepest)
    search = Search(model, tok, sets, m, s, cache, ranked, progress)
    clock.lap("unsteered baseline and proxy rows")
    steerings, skipped = _option_steerings(search, base, ranked, s)
    proxy0 = search.proxy_baseline()
    result = TuneResult(
        s,
        ranked,
        search.baseline,
        search.labels,
        search.broken0,
        proxy0,
        search.opening_texts(),
        search.measure,
        skipped,
    )
    clock.lap("vector options")

    def measure(c: Candidate) -> Proxy:
        return search.proxy(candidate_steering(steerings, c), c)

    ladders = [
        ladder(measure, option, layers, name, mult, s, kind)
        for layers in layer_sets(ranked, s.layer_counts)
        for option in steerings
        for kind in s.kinds
        for name, mult in (profiles(layers, ranked) if kind != "ablate" else [("flat", ())])
    ]
    with tqdm(total=s.stage1, desc="tune stage 1", unit="candidate", disable=not progress) as bar:
        for p in round_robin(ladders, s.stage1):
            result.stage1.append(p)
            bar.update(1)
    clock.lap("stage 1")
    under_bound = [
        p
        for p in result.stage1
        if p.kl <= s.kl_max and primary_progress(p, proxy0, s) >= MIN_PROGRESS
    ]
    pool = moved(result.stage1, proxy0, s)
    done: list[tuple[Proxy, Confirmed]] = []
    greedy, predicted0 = search.m.sampling.greedy, search.predicted_baseline()
    picks = first_picks(pool, predicted0, search.baseline, s, greedy)

    def refined() -> Proxy | None:
        mids = [measure(c) for c in midpoints(done, s)]
        result.stage1 += [p for p in mids if p not in result.stage1]
        pick = bisect_pick(mids, predicted0, search.baseline, s, greedy)
        return pick or next_pick(under_bound, done, s)

    with tqdm(total=s.confirm, desc="tune stage 2", unit="config", disable=not progress) as bar:
        while len(done) < s.confirm:
            pick = picks.pop(0) if picks else refined()
            if pick is None:
                break
            c = pick.candidate
            done.append((pick, search.confirm(candidate_steering(steerings, c), c, pick.kl)))
            bar.update(1)
    result.stage2 = [c for _, c in done]
    clock.lap("stage 2")
    result.best = choose(result.stage2, s)
    if result.best is not None:
        result.significance = significance(
            search.labels[s.primary], result.best.labels[s.primary], s
        )
    result.agreement = agreement(result)
    result.seconds = clock.seconds
    return result, steerings


def run_tune(
    model: str | Path | None,
    vectors_path: Path,
    set_files: dict[str, Path],
    output: Path,
    *,
    settings: TuneSettings | None = None,
    measurer: Measurer | None = None,
    report_dir: Path | None = None,
    cache_path: Path | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    progress: bool = True,
) -> TuneResult:
    """Search, write the report, then the plan (with the chosen option's vectors beside it
    when they were fitted here). Raises NoPlan, after the report, when no configuration
    kept the guards or the chosen one fails the significance test.

    set_files: remove/selective -> sensitive, harmful, benign; induce -> target, benign.
    """
    from bake.artifacts.prompts import load_prompts
    from bake.files.fileio import check_output_file
    from bake.model.resolve import open_model
    from bake.runtime.loader import load_model_and_tokenizer

    start = time.perf_counter()
    settings = settings or TuneSettings()
    settings.check()
    missing = [n for n in settings.sets if n not in set_files]
    if missing:
        raise InputError(
            f"--goal {settings.goal} needs prompt sets {', '.join(settings.sets)}; "
            f"missing: {', '.join('--' + n for n in missing)}"
        )
    m = measurer or Measurer()
    source = open_model(model)
    vectors = SteeringVectors.load(vectors_path)
    vectors.fingerprint.check(source.fingerprint, f"vector file {vectors_path}")
    base = Steering.from_vectors(source, vectors_path, [vectors.layers[0]], 0.0)
    sets = {name: load_prompts(set_files[name]) for name in settings.sets}
    output = Path(output)
    check_output_file(output, [Path(vectors_path), *map(Path, set_files.values())], overwrite=True)
    cache = TuneCache(
        cache_path or output.with_suffix(".tune-cache.jsonl"),
        _cache_context(source, vectors_path, set_files, m, settings, dtype),
    )
    loaded, tok = load_model_and_tokenizer(source.path, dtype, device)
    load_seconds = time.perf_counter() - start
    result, steerings = run_search(loaded, tok, sets, base, m, settings, cache, progress)
    result.seconds = {"load": round(load_seconds, 2), **result.seconds}
    report = write_report(result, report_dir or output.parent / f"{output.stem}-tuning")
    _check_plan(result, report)
    _write_plan(result, steerings, sets, m, output, source)
    return result


def write_report(result: TuneResult, folder: Path) -> Path:
    """tuning_report.json, .md and the plots, built aside and renamed into `folder` (an
    earlier report there is replaced)."""
    from bake.artifacts.tuning import render_markdown
    from bake.artifacts.tuning_plots import plot_agreement, plot_front, plot_judged
    from bake.files.fileio import atomic_output_dir

    with atomic_output_dir(folder, overwrite=True) as tmp:
        (tmp / "tuning_report.json").write_text(dumps(result.to_json(), indent=2) + "\n")
        drawn = (plot_front(result, tmp), plot_agreement(result, tmp), plot_judged(result, tmp))
        plots = [p for p in drawn if p]
        (tmp / "tuning_report.md").write_text(render_markdown(result, plots))
    return folder


def _cache_context(
    source: Any,
    vectors_path: Path,
    set_files: dict[str, Path],
    m: Measurer,
    s: TuneSettings,
    dtype: str,
) -> dict[str, Any]:
    """Everything a cached record depends on besides the candidate itself."""
    from bake.files.fileio import sha256_file
    from bake.judges.rubric import RUBRIC_VERSION

    return {
        "model": _file_identity(Path(source.path)),
        "vectors": sha256_file(Path(vectors_path)),
        "sets": {n: sha256_file(Path(set_files[n])) for n in s.sets},
        "measure": m.describe(),
        "rubric": RUBRIC_VERSION,
        "goal": s.goal,
        "tolerances": [s.harmful_tolerance, s.benign_tolerance, s.kl_max],
        "dtype": dtype,
        "version": 2,
    }


def _file_identity(path: Path) -> list[Any]:
    """Path, size and modification time of the model (a folder: of its files)."""
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    stats = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()]
    return [str(path), *stats]


def _check_plan(result: TuneResult, report: Path) -> None:
    s = result.settings
    if result.best is None:
        reasons = sorted({c.reason for c in result.stage2 if c.reason})
        raise NoPlan(
            "no confirmed configuration kept the guards "
            f"({'; '.join(reasons) or 'none confirmed'}); "
            f"no plan written, see {report}/tuning_report.md (try --harmful-tolerance, "
            "--kl-max, more --stage1/--confirm, or other vectors)"
        )
    sig = result.significance
    assert sig is not None
    if not sig.passed:
        raise NoPlan(
            f"the best configuration's effect on the {s.primary} set is not significant: "
            f"{sig.describe()} (needs p < {s.significance:g}); no plan written, see {report}"
        )


def _write_plan(
    result: TuneResult,
    steerings: dict[str, Steering],
    sets: dict[str, list[Prompt]],
    m: Measurer,
    output: Path,
    source: Any,
) -> None:
    """The chosen configuration as a plan; fitted vectors saved as PLAN.<option>.safetensors."""
    best, s = result.best, result.settings
    assert best is not None and result.significance is not None
    c = best.candidate
    chosen = steerings[c.option]
    vectors_file = chosen.plan.vectors_file if c.option == "file" else None
    if vectors_file is None:
        vectors_file = output.with_name(f"{output.stem}.{c.option}.safetensors")
        chosen.vectors.save(vectors_file)
    provenance = {
        "source_model": str(source.path),
        "tuning": {
            "goal": s.goal,
            "baseline": result.baseline,
            "chosen": {
                "kind": c.kind,
                "option": c.option,
                "layers": list(c.layers),
                "alpha": c.alpha,
                "profile": c.profile,
                "primary": best.refusal[s.primary],
                "guard": best.refusal[s.guard],
                "refusal": best.refusal,
                "kl": best.kl,
                "significance": result.significance.describe(),
            },
            "trials": len(result.stage1),
            "stage1": len(result.stage1),
            "stage2": len(result.stage2),
            "prompt_sets": {n: len(p) for n, p in sets.items()},
            **m.describe(),
        },
    }
    steering = Steering.from_vectors(source, vectors_file, list(c.layers), c.alpha)
    steering = candidate_steering({c.option: steering}, c, provenance)
    steering.plan.save(output)
