"""Refusal rates and benign KL, for a model unsteered, hooked with a plan, or baked.

Refusal rate of a set = share of its prompts with c(x) > band (DESIGN.md), c(x) from the
judged answers (bake.judges.scoring.aggregate). KL = mean over prompts of KL(base || steered) of the
next-token distribution at the first generated position:
    KL(x) = sum_v p_base(v|x) (log p_base(v|x) - log p_steered(v|x)).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bake.artifacts.prompts import Prompt
from bake.artifacts.reports import AnswerSample, EvaluationReport, SetEvaluation
from bake.artifacts.steering import Steering
from bake.errors import InputError, PlanMismatchError
from bake.model.resolve import resolve_model
from bake.options import opt
from bake.runtime.forward import mean_kl, next_token_logprobs
from bake.runtime.hooks import hooked
from bake.runtime.loader import load_model_and_tokenizer
from bake.stages.measure import Measurer, SetResult, measure_refusal, read_sets


@dataclass(frozen=True, kw_only=True)
class EvaluateOptions:
    """What `steerbake evaluate` compares, and where its report goes."""

    plan: Path | None = opt(None, "Steer with hooks from this plan.")
    baked: Path | None = opt(None, "Evaluate this baked checkpoint or adapter.")
    prompts: tuple[Path, ...] = opt(
        help="Prompt set (repeatable); named by file stem.", multiple=True
    )
    kl_sets: tuple[str, ...] = opt(
        (),
        "Set names for KL (default: names containing 'benign').",
        flags=("--kl-set",),
        multiple=True,
    )
    report: Path | None = opt(None)


def run_evaluate(
    model: str | Path | None,
    prompt_files: Sequence[Path],
    *,
    steering: Steering | None = None,
    baked: Path | None = None,
    measurer: Measurer | None = None,
    kl_sets: Sequence[str] | None = None,
    dtype: str = "float32",
    device: str = "cpu",
) -> EvaluationReport:
    """Refusal per set before and after steering (hooks from a Steering bound to MODEL, or
    a baked folder), and KL on the benign sets (names containing 'benign' unless kl_sets)."""
    if (steering is None) == (baked is None):
        raise InputError("pass exactly one of --plan PLAN or --baked DIR")
    m = measurer or Measurer()
    src = resolve_model(model)
    if steering is not None and steering.model.path.resolve() != src.resolve():
        raise PlanMismatchError(f"the steering was opened for {steering.model.path}, not {src}")
    sets = read_sets(prompt_files)
    kl_names = list(kl_sets) if kl_sets else [n for n in sets if "benign" in n]
    base_model, tok = load_model_and_tokenizer(src, dtype, device)
    before = {n: measure_refusal(base_model, tok, n, ps, m) for n, ps in sets.items()}
    base_logp = {n: next_token_logprobs(base_model, tok, sets[n]) for n in kl_names}
    after_model = base_model
    if baked is not None:
        after_model, _ = load_model_and_tokenizer(Path(baked), dtype, device)
    with hooked(after_model, steering):
        after = {n: measure_refusal(after_model, tok, n, ps, m) for n, ps in sets.items()}
        kl = {
            n: mean_kl(base_logp[n], next_token_logprobs(after_model, tok, sets[n]))
            for n in kl_names
        }
    return EvaluationReport(
        model=str(src),
        steering=str(steering.plan_file if steering is not None else baked),
        mode="hooks" if steering is not None else "baked",
        **m.describe(),
        sets={n: _set_evaluation(sets[n], before[n], after[n]) for n in sets},
        kl=kl,
    )


def _set_evaluation(prompts: list[Prompt], before: SetResult, after: SetResult) -> SetEvaluation:
    samples = [
        AnswerSample(p.text, b, a)
        for p, b, a in zip(prompts[:3], before.answers[:3], after.answers[:3], strict=False)
    ]
    return SetEvaluation(before.summary(), after.summary(), samples)


def render_evaluation(r: EvaluationReport) -> str:
    lines = [f"{'set':<24}{'n':>5}{'refusal before':>17}{'refusal after':>16}", "-" * 62]
    for name, s in r.sets.items():
        lines.append(
            f"{name:<24}{s.before.n:>5}{s.before.refusal_rate:>16.0%}{s.after.refusal_rate:>16.0%}"
        )
    for name, value in r.kl.items():
        lines.append(f"KL(base || steered) on {name}: {value:.4f}")
    lines.append(f"judge: {r.judge}; decoding: {r.decoding}, {r.max_new_tokens} new tokens")
    return "\n".join(lines)
