"""Measuring refusal, shared by `tune` and `evaluate`: answers are generated (greedy by
default), judged and aggregated into c(x) per prompt; the refusal rate of a set is the share
of its prompts with c(x) > band (DESIGN.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bake.artifacts.prompts import Prompt, load_prompts
from bake.artifacts.reports import RefusalSummary
from bake.files.http import API_KEY_HELP
from bake.judges.backends import LEXICON_HELP, JudgeOptions, make_judge, parse_lexicon
from bake.judges.scoring import aggregate, judge_pairs
from bake.options import opt
from bake.runtime.sampling import SamplingOptions, generate_answers

DEFAULT_DECODING = SamplingOptions(k=1, max_new_tokens=48, greedy=True)


@dataclass
class Measurer:
    """How answers are produced and judged when measuring refusal."""

    judge: Any = field(default_factory=lambda: make_judge(JudgeOptions(backend="pattern")))
    sampling: SamplingOptions = DEFAULT_DECODING
    band: float = 0.1
    batch_size: int = 16

    def describe(self) -> dict[str, Any]:
        s = self.sampling
        return {
            "judge": getattr(self.judge, "model_id", type(self.judge).__name__),
            "decoding": "greedy" if s.greedy else f"{s.k} samples at temperature 1",
            "max_new_tokens": s.max_new_tokens,
            "band": self.band,
        }


@dataclass(frozen=True)
class MeasureOptions:
    """How `tune` and `evaluate` measure refusal: the judge, the decoding, the device."""

    judge: str = opt("pattern", "Judge backend: pattern, openai, llama, transformers.")
    judge_url: str | None = opt(None, "OpenAI-compatible judge server.")
    api_key_env: str | None = opt(None, API_KEY_HELP, metavar="NAME")
    judge_model: str | None = opt(None, "Judge model name, GGUF or folder.")
    lexicon: Path | None = opt(None, LEXICON_HELP, parse=parse_lexicon)
    samples: int = opt(1, "Answers per prompt (1 = greedy; more = sampled at temperature 1).")
    max_new_tokens: int = opt(48)
    device: str = opt("cpu")
    dtype: str = opt("float32")

    def measurer(self) -> Measurer:
        sampling = SamplingOptions(
            k=max(1, self.samples), max_new_tokens=self.max_new_tokens, greedy=self.samples <= 1
        )
        judge = JudgeOptions(
            backend=self.judge,
            url=self.judge_url,
            model=self.judge_model,
            lexicon=self.lexicon,
            api_key_env=self.api_key_env,
        )
        return Measurer(make_judge(judge), sampling)


@dataclass(frozen=True)
class TuneMeasureOptions(MeasureOptions):
    """`tune` measures many configurations: its default dtype is the fast one."""

    dtype: str = opt(
        "fast",
        "fast: bfloat16 where this machine computes it natively, else float32 (the plan is "
        "written for the model's own dtype either way).",
    )


@dataclass
class SetResult:
    name: str
    scores: list[float | None]
    answers: list[str]  # first answer per prompt, for reports
    band: float
    kinds: list[str] = field(default_factory=list)  # the judge's rubric kind, first answer
    token_ids: list[tuple[int, ...]] = field(default_factory=list)  # first answer's tokens

    @property
    def refusal_rate(self) -> float:
        return sum(s is not None and s > self.band for s in self.scores) / len(self.scores)

    def summary(self) -> RefusalSummary:
        scored = [s for s in self.scores if s is not None]
        return RefusalSummary(
            n=len(self.scores),
            scored=len(scored),
            refusal_rate=self.refusal_rate,
            compliance_rate=sum(s < -self.band for s in scored) / len(self.scores),
        )


def measure_refusal(
    model: Any,
    tokenizer: Any,
    name: str,
    prompts: Sequence[Prompt],
    m: Measurer,
    progress: bool = False,
) -> SetResult:
    """Generate, judge and aggregate c(x) for every prompt of one set."""
    samples = generate_answers(
        model,
        tokenizer,
        [p.text for p in prompts],
        options=m.sampling,
        batch_size=m.batch_size,
        progress=progress,
    )
    pairs = [(p.text, s.text) for p, group in zip(prompts, samples, strict=True) for s in group]
    judged = judge_pairs(m.judge, pairs)
    verdicts = judged.verdicts
    scores = []
    for p, group in zip(prompts, samples, strict=True):
        scorable = [s for s in group if s.scorable]
        score, _ = aggregate(
            [s.mean_logprob for s in scorable], [verdicts[(p.text, s.text)] for s in scorable]
        )
        scores.append(score)
    firsts = [g[0] for g in samples]
    kinds = [judged.kinds.get((p.text, s.text), "") for p, s in zip(prompts, firsts, strict=True)]
    return SetResult(
        name, scores, [s.text for s in firsts], m.band, kinds, [s.token_ids for s in firsts]
    )


def read_sets(files: Sequence[Path]) -> dict[str, list[Prompt]]:
    """Prompt sets named by file stem (heldout_sensitive.jsonl -> heldout_sensitive)."""
    sets: dict[str, list[Prompt]] = {}
    for f in files:
        name = Path(f).stem
        if name in sets:
            name = f"{name}-{len(sets)}"
        sets[name] = load_prompts(Path(f))
    return sets
