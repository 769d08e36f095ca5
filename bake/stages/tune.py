"""Configuration finder: which layers and what alpha.

Layers are ranked by how well the projection on v_l predicts c(x) (the fit's Pearson r),
the deepest ~20% dropped (and block 0 where llama.cpp can only take a control vector).
Then, for each number of layers n (the n best-ranked), alpha grows in magnitude until the
objective is met or a guard breaks:
  remove: minimise refusal on the sensitive set subject to
          harmful refusal >= unsteered harmful refusal - tolerance, benign KL <= bound, and
          benign refusal <= unsteered benign refusal + tolerance (the KL sees only the first
          answer token; this guard catches answers that derail later, which the judge's
          rubric counts as refusal: looping or corrupted text);
  induce: maximise refusal on the target set subject to
          benign refusal <= unsteered benign refusal + tolerance.
Every configuration's result is cached in a JSONL file keyed by everything it depends on,
so an interrupted search resumes where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bake.artifacts.prompts import Prompt
from bake.artifacts.steering import Steering
from bake.artifacts.tuning import Trial, TuneResult, TuneSettings, _Cache
from bake.artifacts.vectors import SteeringVectors
from bake.errors import InputError
from bake.model.arch import ArchSpec
from bake.options import opt
from bake.runtime.forward import mean_kl, next_token_logprobs
from bake.runtime.hooks import hooked
from bake.runtime.loader import load_model_and_tokenizer
from bake.stages.measure import Measurer, measure_refusal


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
    report_dir: Path | None = opt(None)

    def sets(self) -> dict[str, Path]:
        """The prompt sets given, by name (run_tune's `set_files`)."""
        named = {
            "sensitive": self.sensitive,
            "harmful": self.harmful,
            "benign": self.benign,
            "target": self.target,
        }
        return {name: path for name, path in named.items() if path is not None}


def ranked_layers(vectors: SteeringVectors, spec: ArchSpec, drop_deepest: float) -> list[int]:
    """Layers by the fit's Pearson r (best first), deepest share and unreachable ones out."""
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


def layer_counts(n_ranked: int, requested: Sequence[int] | None) -> list[int]:
    if requested:
        return sorted({min(n, n_ranked) for n in requested if n > 0})
    counts = {1 << k for k in range(8) if 1 << k <= n_ranked}
    return sorted(counts | {n_ranked})


class _Search:
    """Model, prompt sets and baselines held once; `trial` measures one configuration."""

    def __init__(
        self,
        model: Any,
        tok: Any,
        sets: dict[str, list[Prompt]],
        base: Steering,
        m: Measurer,
        settings: TuneSettings,
    ) -> None:
        self.model, self.tok, self.sets, self.base = model, tok, sets, base
        self.m, self.s = m, settings
        self.primary_set = "sensitive" if settings.goal == "remove" else "target"
        self.guard_set = "harmful" if settings.goal == "remove" else "benign"
        self.base_logp = next_token_logprobs(model, tok, sets["benign"])
        self.baseline = {
            name: measure_refusal(model, tok, name, ps, m).refusal_rate for name, ps in sets.items()
        }

    def trial(self, layers: list[int], alpha: float) -> Trial:
        with hooked(self.model, self.base.with_config(layers, alpha)):
            kl = mean_kl(
                self.base_logp, next_token_logprobs(self.model, self.tok, self.sets["benign"])
            )
            if self.s.goal == "remove" and kl > self.s.kl_max:
                return Trial(layers, alpha, math.nan, math.nan, kl, False, "benign KL")
            names = dict.fromkeys([self.primary_set, self.guard_set, "benign"])
            rates = {name: self._refusal(name) for name in names}
        ok, reason = self._judge(rates[self.guard_set], rates["benign"])
        benign = rates["benign"] if self.s.goal == "remove" else math.nan
        primary, guard = rates[self.primary_set], rates[self.guard_set]
        return Trial(layers, alpha, primary, guard, kl, ok, reason, benign)

    def _refusal(self, name: str) -> float:
        return measure_refusal(self.model, self.tok, name, self.sets[name], self.m).refusal_rate

    def _judge(self, guard: float, benign: float) -> tuple[bool, str]:
        if self.s.goal == "remove" and guard < self.baseline["harmful"] - self.s.harmful_tolerance:
            return False, "harmful refusal dropped"
        if benign > self.baseline["benign"] + self.s.benign_tolerance:
            return False, "benign refusal rose"
        return True, ""

    def done(self, t: Trial) -> bool:
        """Stop growing alpha: a guard broke or the objective cannot get better."""
        if not t.feasible:
            return True
        return t.primary == (0.0 if self.s.goal == "remove" else 1.0)


def pick_best(trials: list[Trial], goal: str) -> Trial | None:
    """Best feasible trial; ties go to lower KL, fewer layers, smaller |alpha|."""
    feasible = [t for t in trials if t.feasible]
    sign = 1 if goal == "remove" else -1
    return min(
        feasible, key=lambda t: (sign * t.primary, t.kl, t.n_layers, abs(t.alpha)), default=None
    )


def run_search(
    model: Any,
    tok: Any,
    sets: dict[str, list[Prompt]],
    base: Steering,
    m: Measurer,
    settings: TuneSettings,
    cache: _Cache,
    progress: bool = True,
) -> TuneResult:
    """For each layer count: alpha grows over the grid until done(), then the step where a
    guard broke is bisected `settings.refine` times, where the best trade-off usually is."""
    from tqdm.auto import tqdm

    settings.check()
    search = _Search(model, tok, sets, base, m, settings)
    ranked = ranked_layers(base.vectors, base.spec, settings.drop_deepest)
    result = TuneResult(settings, ranked, search.baseline)
    sign = -1.0 if settings.goal == "remove" else 1.0
    counts = layer_counts(len(ranked), settings.layer_counts)
    bar = tqdm(desc="tune", unit="config", disable=not progress)

    def measured(layers: list[int], magnitude: float) -> Trial:
        alpha = round(sign * magnitude, 6)
        trial = cache.get(layers, alpha)
        if trial is None:
            trial = search.trial(layers, alpha)
            cache.put(trial)
        result.trials.append(trial)
        bar.update(1)
        return trial

    for n in counts:
        layers = sorted(ranked[:n])
        ok = 0.0  # largest magnitude that kept the guards
        for magnitude in sorted(settings.alphas):
            trial = measured(layers, magnitude)
            if search.done(trial):
                break
            ok = magnitude
        else:
            continue  # the whole grid kept the guards: nothing to bisect
        lo, hi = ok, magnitude
        for _ in range(settings.refine if not trial.feasible and lo > 0 else 0):
            mid = (lo + hi) / 2
            if measured(layers, mid).feasible:
                lo = mid
            else:
                hi = mid
    bar.close()
    result.best = pick_best(result.trials, settings.goal)
    return result


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
    """Search, then write the plan (provenance filled in) and the report beside it.

    set_files: remove -> sensitive, harmful, benign; induce -> target, benign.
    """
    from bake.artifacts.prompts import load_prompts
    from bake.artifacts.tuning import write_report
    from bake.model.resolve import open_model

    settings = settings or TuneSettings()
    settings.check()
    need = ("sensitive", "harmful", "benign") if settings.goal == "remove" else ("target", "benign")
    missing = [n for n in need if n not in set_files]
    if missing:
        raise InputError(
            f"--goal {settings.goal} needs prompt sets {', '.join(need)}; "
            f"missing: {', '.join('--' + n for n in missing)}"
        )
    m = measurer or Measurer()
    source = open_model(model)
    src = source.path
    vectors = SteeringVectors.load(vectors_path)
    vectors.fingerprint.check(source.fingerprint, f"vector file {vectors_path}")
    base = Steering.from_vectors(source, vectors_path, [vectors.layers[0]], 0.0)
    sets = {name: load_prompts(set_files[name]) for name in need}
    output = Path(output)
    cache = _Cache(
        cache_path or output.with_suffix(".tune-cache.jsonl"),
        {
            "model": str(src),
            "vectors": _digest(vectors_path),
            "sets": {n: _digest(set_files[n]) for n in need},
            "measure": m.describe(),
            "goal": settings.goal,
            "drop": settings.drop_deepest,
        },
    )
    loaded, tok = load_model_and_tokenizer(src, dtype, device)
    result = run_search(loaded, tok, sets, base, m, settings, cache, progress)
    report = write_report(result, report_dir or output.parent / f"{output.stem}-tuning")
    if result.best is None:
        raise InputError(
            "no configuration met the guards; loosen --harmful-tolerance or "
            f"--kl-max, or try other --alphas (see {report})"
        )
    check_goal_reached(result, report)
    best = result.best
    provenance = {
        "source_model": str(src),
        "tuning": {
            "goal": settings.goal,
            "baseline": result.baseline,
            "chosen": asdict(best),
            "trials": len(result.trials),
            "prompt_sets": {n: len(p) for n, p in sets.items()},
            **m.describe(),
        },
    }
    base.with_config(best.layers, best.alpha, provenance=provenance).plan.save(output)
    return result


def check_goal_reached(result: TuneResult, report: Path) -> None:
    """Refuse to write a plan that does not move refusal in the goal's direction."""
    best, goal = result.best, result.settings.goal
    name = "sensitive" if goal == "remove" else "target"
    base = result.baseline[name]
    if best is None or (best.primary < base if goal == "remove" else best.primary > base):
        return
    raise InputError(
        f"no configuration that kept the guards changed refusal on the {name} set "
        f"(unsteered {base:.0%}, best {best.primary:.0%}); no plan written, see {report} "
        "(try other --alphas, a looser guard, or other vectors)"
    )


def _digest(path: Path) -> str:
    from bake.files.fileio import sha256_file

    return sha256_file(Path(path))
