"""Refusal rates and benign KL, for a model unsteered, hooked with a plan, or baked.

Refusal rate of a set = share of its prompts with c(x) > band (DESIGN.md), c(x) from the
judged answers (bake.judges.scoring.aggregate). KL = mean over prompts of KL(base || steered) of the
next-token distribution at the first generated position:
    KL(x) = sum_v p_base(v|x) (log p_base(v|x) - log p_steered(v|x)).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bake.artifacts.probe import MODE_HELP, MODES, Probe
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

if TYPE_CHECKING:
    from bake.runtime.gated import GateLog


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
    answers: Path | None = opt(
        None,
        "Write every prompt's answers before and after, with the judge's labels and kinds, "
        "as JSONL (for reading by hand).",
    )
    probe: Path | None = opt(
        None,
        "Gate --plan per prompt with this probe (`steerbake probe`); run time only: no "
        "weight file can hold it.",
    )
    probe_mode: str = opt("sign", MODE_HELP, choices=MODES)


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
    probe: Probe | None = None,
    probe_mode: str = "sign",
    answers_file: Path | None = None,
) -> EvaluationReport:
    """Refusal per set before and after steering (hooks from a Steering bound to MODEL, or
    a baked folder; gated per prompt by `probe` when given), and KL on the benign sets
    (names containing 'benign' unless kl_sets)."""
    if (steering is None) == (baked is None):
        raise InputError("pass exactly one of --plan PLAN or --baked DIR")
    if probe is not None and steering is None:
        raise InputError(
            "a probe gates hook steering at run time (a baked model cannot be gated); pass "
            "--plan PLAN with --probe"
        )
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
    gating: dict[str, dict[str, int]] = {}
    with _steered(after_model, steering, probe, probe_mode) as log:
        after = {}
        for n, ps in sets.items():
            start = len(log.gates) if log is not None else 0
            after[n] = measure_refusal(after_model, tok, n, ps, m)
            if log is not None:
                gating[n] = log.counts(since=start)
        kl = {
            n: mean_kl(base_logp[n], next_token_logprobs(after_model, tok, sets[n]))
            for n in kl_names
        }
    if answers_file is not None:
        write_answer_pairs(answers_file, sets, before, after)
    mode = "baked" if steering is None else "hooks" if probe is None else "hooks, probe-gated"
    return EvaluationReport(
        model=str(src),
        steering=str(steering.plan_file if steering is not None else baked),
        mode=mode,
        **m.describe(),
        sets={n: _set_evaluation(sets[n], before[n], after[n]) for n in sets},
        kl=kl,
        gating=None if probe is None else {"mode": probe_mode, "layer": probe.layer, **gating},
    )


def write_answer_pairs(
    path: Path,
    sets: dict[str, list[Prompt]],
    before: dict[str, SetResult],
    after: dict[str, SetResult],
) -> None:
    """One JSON line per prompt: set, id, prompt, the first answer before and after, and
    the judge's refusal label (c(x) above the band) and rubric kind of each."""
    import json

    from bake.files.fileio import atomic_write_path

    lines = []
    for name, prompts in sets.items():
        b, a = before[name], after[name]
        for i, p in enumerate(prompts):
            row: dict[str, Any] = {"set": name, "id": p.id, "prompt": p.text}
            for when, r in (("before", b), ("after", a)):
                score = r.scores[i]
                row[when] = r.answers[i]
                row[f"{when}_refusal"] = int(score is not None and score > r.band)
                row[f"{when}_kind"] = r.kinds[i] if r.kinds else ""
            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    with atomic_write_path(Path(path)) as tmp:
        tmp.write_text("".join(lines), encoding="utf-8")


@contextlib.contextmanager
def _steered(
    model: Any, steering: Steering | None, probe: Probe | None, mode: str
) -> Iterator[GateLog | None]:
    """Hook steering, gated per prompt by the probe when one is given."""
    if probe is None:
        with hooked(model, steering):
            yield None
        return
    from bake.runtime.gated import probe_gated

    assert steering is not None
    with probe_gated(model, steering, probe, mode) as log:
        yield log


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
    if r.gating:
        sets = [
            f"{n} {c['as_planned']}/{c['opposite']}/{c['unsteered']}"
            for n, c in r.gating.items()
            if isinstance(c, dict)
        ]
        lines.append(
            f"probe-gated ({r.gating['mode']}, layer {r.gating['layer']}); prompts steered as "
            f"planned/opposite/unsteered: {'; '.join(sets)}"
        )
    lines.append(f"judge: {r.judge}; decoding: {r.decoding}, {r.max_new_tokens} new tokens")
    return "\n".join(lines)
