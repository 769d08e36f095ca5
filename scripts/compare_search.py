"""Compare `tune`'s stage-1 search with Optuna's samplers, on the same model, vectors,
tuning sets and candidate space, at the same budgets of candidates.

Methods (stage 1 only: forward-pass proxies, nothing generated or judged):
  ladder  the project's search: bake.stages.candidates' ladders of alpha over the layer
          sets and profiles, advanced in turn (round_robin) until the budget or until
          every ladder ended (a ladder ends where the proxy KL crossed --kl-max);
  tpe     Optuna's multi-objective TPESampler (multivariate, seeded), over a categorical
          layer set, a categorical profile (ranked falls back to flat on sets of fewer
          than 3 layers, where it does not exist) and a log-uniform alpha magnitude in
          [ALPHA_START, ALPHA_LIMIT] (sign from the goal, remove: negative); objectives
          (primary proxy, -guard proxy), the KL bound as a trial constraint;
  random  Optuna's RandomSampler over the same space: the floor.

Per method, budget (and seed): the hypervolume of the feasible (kl <= kl_max) proxy front
in (primary, -guard) space from the reference point (unsteered primary proxy, 0); the best
primary proxy among feasible candidates whose guard proxy stays >= unsteered - 0.1 ("guard
kept"); the candidates scored, feasible, and feasible with the guard kept; the seconds
spent scoring and the seconds Optuna spent asking and telling; the tune-cache hits. Each
method (and seed) keeps one in-memory tune cache over the budgets, run smallest first, as
a user who reruns `tune` with a larger --stage1 would; "in_ladder_cache" (JSON) counts
candidates a ladder run's cache already held.

    .venv/bin/python scripts/compare_search.py              # the toy (run `make demo` first)
    .venv/bin/python scripts/compare_search.py MODEL VECTORS --sensitive S.jsonl \\
        --harmful H.jsonl --benign B.jsonl [--budgets 48,96] [--seeds 3] [--dtype bfloat16]

Writes --out (JSON, default bench-out/compare_search.json) and prints a table. Needs
Optuna, which steerbake does not depend on: pip install optuna.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo-out"
SETS = ("sensitive", "harmful", "benign")
OPTION = "file"  # the VECTORS file, the default vector option of --goal remove
SIGN = -1.0  # --goal remove steers against the refusal direction
GUARD_SLACK = 0.1  # "guard kept": guard proxy >= unsteered guard proxy - this
TOY_BATCH = 32  # prompts per forward pass for the toy (as export/demo.py)
AVERAGED = (  # the numbers the summary averages over seeds
    "scored",
    "feasible",
    "guard_kept",
    "scoring_s",
    "optimizer_s",
    "cache_hits",
    "in_ladder_cache",
)
BIG = 1e6  # a constraint value standing in for a KL that is not finite


# --------------------------------------------------------------------------- loading
@dataclass
class Bench:
    """What every run shares: the loaded search, the vectors and the candidate space."""

    search: Any  # bake.stages.search.Search
    steering: Any  # bake.artifacts.steering.Steering over VECTORS
    settings: Any  # bake.artifacts.tuning.TuneSettings (the defaults)
    ranked: list[int]
    space: dict[tuple[int, ...], dict[str, tuple[tuple[int, float], ...]]]  # layers -> profiles
    unsteered: dict[str, float]  # proxy refusal per set, unsteered
    setup_s: float


def counting_cache() -> Any:
    """An in-memory TuneCache that counts the stage-1 records it already held."""
    from bake.artifacts.tuning import TuneCache

    class CountingCache(TuneCache):
        hits = 0

        def get(self, stage: str, candidate: Any = None) -> dict[str, Any] | None:
            row = super().get(stage, candidate)
            self.hits += int(row is not None and stage == "proxy")
            return row

    return CountingCache(None, {"bench": "compare_search"})


def measurer(toy: bool, lexicon: Path | None) -> Any:
    """The pattern judge (with the toy's lexicon on the toy, as the demo judges it)."""
    from bake.judges.backends import JudgeOptions, make_judge
    from bake.stages.measure import Measurer
    from bake.toy_refuser import lexicon_path

    if toy:
        return Measurer(
            make_judge(JudgeOptions(backend="pattern", lexicon=lexicon_path())),
            batch_size=TOY_BATCH,
        )
    return Measurer(make_judge(JudgeOptions(backend="pattern", lexicon=lexicon)))


def load_bench(args: argparse.Namespace) -> Bench:
    """The model, VECTORS and tuning sets loaded, and the unsteered baseline measured."""
    from bake.artifacts.prompts import load_prompts
    from bake.artifacts.steering import Steering
    from bake.artifacts.tuning import TuneSettings
    from bake.artifacts.vectors import SteeringVectors
    from bake.model.resolve import open_model
    from bake.runtime.loader import load_model_and_tokenizer
    from bake.runtime.threads import use_threads
    from bake.stages.candidates import layer_sets, profiles, ranked_layers
    from bake.stages.search import Search

    start = time.perf_counter()
    use_threads(None)
    source = open_model(args.model)
    vectors = SteeringVectors.load(args.vectors)
    vectors.fingerprint.check(source.fingerprint, f"vector file {args.vectors}")
    steering = Steering.from_vectors(source, args.vectors, [vectors.layers[0]], 0.0)
    sets = {name: load_prompts(getattr(args, name)) for name in SETS}
    model, tok = load_model_and_tokenizer(source.path, args.dtype, args.device)
    settings = TuneSettings()
    ranked = ranked_layers(steering.vectors, steering.spec, settings.drop_deepest)
    m = measurer(args.toy, args.lexicon)
    search = Search(model, tok, sets, m, settings, counting_cache(), ranked)
    space = {
        layers: dict(profiles(layers, ranked))
        for layers in layer_sets(ranked, settings.layer_counts)
    }
    unsteered = search.proxy_baseline()
    return Bench(search, steering, settings, ranked, space, unsteered, time.perf_counter() - start)


# --------------------------------------------------------------------------- the runs
@dataclass
class Run:
    """One method at one budget (and seed): what it scored and what that cost."""

    method: str
    budget: int
    seed: int | None
    proxies: list[Any] = field(default_factory=list)  # bake.artifacts.tuning.Proxy
    scoring_s: float = 0.0
    optimizer_s: float = 0.0
    cache_hits: int = 0


def scorer(bench: Bench, cache: Any, run: Run) -> Callable[[Any], Any]:
    """Candidate -> Proxy through `cache`, its seconds added to run.scoring_s."""
    from bake.stages.tune import candidate_steering

    def score(candidate: Any) -> Any:
        bench.search.cache = cache
        start = time.perf_counter()
        proxy = bench.search.proxy(
            candidate_steering({OPTION: bench.steering}, candidate), candidate
        )
        run.scoring_s += time.perf_counter() - start
        return proxy

    return score


def run_ladder(bench: Bench, budget: int, cache: Any) -> Run:
    """The project's stage 1: every (layers, profile) ladder, in run_search's order."""
    from bake.stages.candidates import ladder, round_robin

    run = Run("ladder", budget, None)
    score = scorer(bench, cache, run)
    ladders = [
        ladder(score, OPTION, layers, name, multipliers, bench.settings)
        for layers, named in bench.space.items()
        for name, multipliers in named.items()
    ]
    hits = cache.hits
    run.proxies = list(round_robin(ladders, budget))
    run.cache_hits = cache.hits - hits
    return run


def make_sampler(method: str, seed: int) -> Any:
    import optuna

    if method == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    return optuna.samplers.RandomSampler(seed=seed)


def suggest(trial: Any, bench: Bench) -> Any:
    """The candidate an Optuna trial asks for, in the ladder's space."""
    from bake.artifacts.tuning import PROFILES, Candidate
    from bake.stages.candidates import ALPHA_LIMIT, ALPHA_START

    by_label = {",".join(map(str, layers)): layers for layers in bench.space}
    layers = by_label[trial.suggest_categorical("layers", list(by_label))]
    profile = trial.suggest_categorical("profile", list(PROFILES))
    if profile not in bench.space[layers]:
        profile = "flat"  # ranked needs 3 or more layers
    magnitude = trial.suggest_float("alpha", ALPHA_START, ALPHA_LIMIT, log=True)
    multipliers = bench.space[layers][profile]
    return Candidate(OPTION, layers, round(SIGN * magnitude, 6), profile, multipliers)


def tell(study: Any, trial: Any, proxy: Any, settings: Any) -> None:
    """Both objectives (lower is better) and the KL excess for the constraint."""
    from optuna.trial import TrialState

    from bake.artifacts.tuning import objectives

    excess = proxy.kl - settings.kl_max  # feasible where <= 0 (TPE reads trial constraints)
    trial.set_constraint("kl", min(excess, BIG) if math.isfinite(excess) else BIG)
    values = objectives(proxy, settings)
    if all(math.isfinite(v) for v in values):
        study.tell(trial, list(values))
    else:
        study.tell(trial, state=TrialState.FAIL)


def run_optuna(bench: Bench, budget: int, cache: Any, method: str, seed: int) -> Run:
    """`budget` trials of a fresh seeded study, asked and told one at a time."""
    import optuna

    run = Run(method, budget, seed)
    score = scorer(bench, cache, run)
    hits = cache.hits
    start = time.perf_counter()
    study = optuna.create_study(
        directions=["minimize", "minimize"], sampler=make_sampler(method, seed)
    )
    for _ in range(budget):
        trial = study.ask()
        proxy = score(suggest(trial, bench))
        tell(study, trial, proxy, bench.settings)
        run.proxies.append(proxy)
    run.optimizer_s = time.perf_counter() - start - run.scoring_s
    run.cache_hits = cache.hits - hits
    return run


# --------------------------------------------------------------------------- the metrics
def hypervolume(points: Sequence[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by `points` (both coordinates lower-is-better) up to `reference`."""
    inside = sorted(p for p in points if p[0] < reference[0] and p[1] < reference[1])
    area, lowest = 0.0, reference[1]
    for i, (x, y) in enumerate(inside):
        lowest = min(lowest, y)
        right = inside[i + 1][0] if i + 1 < len(inside) else reference[0]
        area += (right - x) * (reference[1] - lowest)
    return area


def guard_kept(proxies: Sequence[Any], settings: Any, unsteered: dict[str, float]) -> list[Any]:
    """The feasible candidates whose guard proxy stays >= unsteered - GUARD_SLACK."""
    floor = unsteered[settings.guard] - GUARD_SLACK
    return [p for p in proxies if p.kl <= settings.kl_max and p.refusal[settings.guard] >= floor]


def best_guarded(
    proxies: Sequence[Any], settings: Any, unsteered: dict[str, float]
) -> float | None:
    """The lowest primary proxy among the feasible candidates that keep the guard proxy."""
    kept = guard_kept(proxies, settings, unsteered)
    return min((p.refusal[settings.primary] for p in kept), default=None)


def reference_point(bench: Bench) -> tuple[float, float]:
    return (bench.unsteered[bench.settings.primary], 0.0)


def describe(run: Run, bench: Bench, in_ladder: set[Any]) -> dict[str, Any]:
    """A run's numbers, and its feasible front (JSON)."""
    from bake.artifacts.tuning import first_front, objectives

    s = bench.settings
    feasible = [p for p in run.proxies if p.kl <= s.kl_max]
    front = first_front(run.proxies, s)
    return {
        "method": run.method,
        "budget": run.budget,
        "seed": run.seed,
        "scored": len(run.proxies),
        "unique": len({p.candidate for p in run.proxies}),
        "feasible": len(feasible),
        "guard_kept": len(guard_kept(run.proxies, s, bench.unsteered)),
        "hypervolume": hypervolume([objectives(p, s) for p in feasible], reference_point(bench)),
        "best_primary_guard_kept": best_guarded(run.proxies, s, bench.unsteered),
        "scoring_s": round(run.scoring_s, 2),
        "optimizer_s": round(run.optimizer_s, 2),
        "cache_hits": run.cache_hits,
        "in_ladder_cache": sum(p.candidate in in_ladder for p in run.proxies),
        "front": [{"candidate": p.candidate.label(), **p.refusal, "kl": p.kl} for p in front],
    }


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method and budget: the mean over seeds, with the range of the two quality numbers."""
    out = []
    for method, budget in dict.fromkeys((r["method"], r["budget"]) for r in rows):
        group = [r for r in rows if (r["method"], r["budget"]) == (method, budget)]
        row: dict[str, Any] = {"method": method, "budget": budget, "runs": len(group)}
        for key in AVERAGED:
            row[key] = round(mean(r[key] for r in group), 2)
        for key in ("hypervolume", "best_primary_guard_kept"):
            values = [r[key] for r in group if r[key] is not None]
            row[key] = mean(values) if values else None
            row[f"{key}_range"] = [min(values), max(values)] if values else None
        out.append(row)
    return out


# --------------------------------------------------------------------------- the table
def _number(value: float | None, spread: list[float] | None = None) -> str:
    if value is None:
        return "-"
    if spread and spread[1] > spread[0]:
        return f"{value:.4f} [{spread[0]:.4f}-{spread[1]:.4f}]"
    return f"{value:.4f}"


def render(summary: list[dict[str, Any]]) -> str:
    """The summary as a plain-text table (kept: feasible with the guard kept)."""
    lines = [
        f"{'method':<7} {'budget':>6} {'runs':>4} {'scored':>6} {'feasible':>8} {'kept':>5}  "
        f"{'hypervolume [range]':<26} {'best primary, guard kept':<26} "
        f"{'scoring s':>9} {'optuna s':>8} {'cache hits':>10}"
    ]
    for r in summary:
        volume = _number(r["hypervolume"], r["hypervolume_range"])
        best = _number(r["best_primary_guard_kept"], r["best_primary_guard_kept_range"])
        lines.append(
            f"{r['method']:<7} {r['budget']:>6} {r['runs']:>4} {r['scored']:>6g} "
            f"{r['feasible']:>8g} {r['guard_kept']:>5g}  {volume:<26} {best:<26} "
            f"{r['scoring_s']:>9g} {r['optimizer_s']:>8g} {r['cache_hits']:>10g}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("model", nargs="?", help="[default: the toy refuser]")
    ap.add_argument("vectors", nargs="?", type=Path, help="[default: demo-out/vectors.safetensors]")
    for name in SETS:
        ap.add_argument(f"--{name}", type=Path, help=f"[toy: demo-out/prompts/tune_{name}.jsonl]")
    ap.add_argument("--budgets", default="48,96", help="candidates per run, e.g. 48,96")
    ap.add_argument("--seeds", type=int, default=3, help="Optuna seeds 0..N-1 per sampler")
    ap.add_argument("--no-random", action="store_true", help="skip the RandomSampler floor")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lexicon", type=Path, help="the pattern judge's lexicon (not the toy)")
    ap.add_argument("--out", type=Path, default=Path("bench-out/compare_search.json"))
    args = ap.parse_args(argv)
    args.toy = args.model is None
    if args.toy:
        fill_toy_defaults(args, ap)
    if args.vectors is None or any(getattr(args, n) is None for n in SETS):
        ap.error("MODEL needs VECTORS, --sensitive, --harmful and --benign")
    args.budgets = sorted({int(b) for b in args.budgets.split(",")})
    return args


def fill_toy_defaults(args: argparse.Namespace, ap: argparse.ArgumentParser) -> None:
    from bake.model.resolve import toy_model_dir

    args.model = str(toy_model_dir())
    args.vectors = args.vectors or DEMO / "vectors.safetensors"
    for name in SETS:
        if getattr(args, name) is None:
            setattr(args, name, DEMO / "prompts" / f"tune_{name}.jsonl")
    if not args.vectors.exists():
        ap.error(f"{args.vectors} is missing: run `make demo` first")


def run_all(bench: Bench, args: argparse.Namespace) -> list[Run]:
    """Every method at every budget, smallest budget first, one cache per method and seed."""
    methods = ["tpe"] + ([] if args.no_random else ["random"])
    caches: dict[tuple[str, int | None], Any] = {}
    runs = []
    for budget in args.budgets:
        cache = caches.setdefault(("ladder", None), counting_cache())
        runs.append(run_ladder(bench, budget, cache))
        for method in methods:
            for seed in range(args.seeds):
                cache = caches.setdefault((method, seed), counting_cache())
                runs.append(run_optuna(bench, budget, cache, method, seed))
            print(f"budget {budget}: {method} done", file=sys.stderr)
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import optuna
    except ImportError:
        print("compare_search needs Optuna, which steerbake does not depend on: pip install optuna")
        return 2
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    load_start = os.getloadavg()
    bench = load_bench(args)
    runs = run_all(bench, args)
    in_ladder = {p.candidate for r in runs if r.method == "ladder" for p in r.proxies}
    rows = [describe(r, bench, in_ladder) for r in runs]
    summary = summarize(rows)
    result = {
        "model": str(args.model),
        "vectors": str(args.vectors),
        "sets": {name: str(getattr(args, name)) for name in SETS},
        "dtype": args.dtype,
        "optuna": optuna.__version__,
        "threads": os.environ.get("STEERBAKE_THREADS"),
        "kl_max": bench.settings.kl_max,
        "ranked_layers": bench.ranked,
        "layer_sets": [list(layers) for layers in bench.space],
        "unsteered_proxy": bench.unsteered,
        "reference_point": reference_point(bench),
        "guard_slack": GUARD_SLACK,
        "setup_s": round(bench.setup_s, 2),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "summary": summary,
        "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(render(summary))
    print(f"unsteered proxy {bench.unsteered}, reference point {reference_point(bench)}")
    print(f"load average start {load_start}, end {result['load_average_end']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
