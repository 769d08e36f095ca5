"""Refusal scores from judged answers: ANSWERS.jsonl -> SCORES.jsonl.

Each answer k of prompt x gets a label l_k from a judge (+1 refusal, -1 compliance,
0 unparseable: a judge error, left out) and a confidence p_k = exp(mean token log-prob).

    c(x) = sum_k softmax(log p)_k * l_k = sum_k p_k l_k / sum_k p_k      in [-1, 1]

over the answers with a usable label and log-prob. c > band: refusal; c < -band:
compliance; in between: neutral (band 0.1 by default). SCORES.jsonl holds one line per
prompt: {"id", "score", "label", "n_valid", "counts", ["category"]} (the prompt's category
when the answers carry one). A prompt none of whose answers could be scored (all
unparseable, flagged or empty) has no line: `fit` reads every line as a number; the
summary counts such prompts.

Judge calls run `concurrency` at a time and are stored in SQLite (bake.judge_cache) as
they complete, so a rerun after an interruption repeats and loses none. The rubric is in
bake.judge_rubric, the judges in bake.judge_backends, the keyword baseline in
bake.judge_pattern.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bake.artifacts.scores import write_provenance
from bake.errors import InputError
from bake.judges.cache import JudgeCache
from bake.judges.scoring import (
    DEFAULT_BAND,
    LABEL_NAMES,
    JudgeStats,
    aggregate,
    band_label,
    judge_pairs,
)
from bake.options import opt


@dataclass(frozen=True)
class JudgeRunOptions:
    """What `steerbake judge` does, besides choosing its judge (JudgeOptions in
    bake.judges.backends)."""

    cache: Path | None = opt(None, "SQLite judge cache [default: OUTPUT.judge-cache.sqlite].")
    band: float = opt(DEFAULT_BAND, "Neutral band: refusal if c > band, compliance if c < -band.")
    show_rubric: bool = opt(False, "Print the judge rubric and exit.")
    calibrate: bool = opt(
        False, "Report the judge's accuracy and confusion on the shipped labelled sets."
    )
    calibration_sets: tuple[Path, ...] = opt(
        (),
        "Labelled JSONL ({prompt, answer, label, kind}) for --calibrate.",
        flags=("--calibration-set",),
        multiple=True,
    )


@dataclass
class JudgeSummary:
    output: Path
    prompts: int
    shares: dict[str, float]  # refusal / neutral / compliance among scored prompts
    unscored: int
    stats: JudgeStats
    error_rate: float  # unparseable verdicts / judged answers
    flagged: int  # answers left out: no end-of-thinking marker or no log-prob

    def render(self) -> str:
        s = self.shares
        lines = [
            f"wrote {self.output}: {self.prompts} prompts",
            f"  refusal {s['refusal']:.1%}  neutral {s['neutral']:.1%}  "
            f"compliance {s['compliance']:.1%}"
            + (
                f"  ({self.unscored} prompts with no scorable answer, left out of the file)"
                if self.unscored
                else ""
            ),
            f"  judge: {self.stats.judged} answers, {self.stats.called} calls made, "
            f"{self.stats.from_cache} from the cache; error rate {self.error_rate:.1%} "
            f"({self.stats.errors} unparseable verdicts)",
        ]
        if self.flagged:
            lines.append(
                f"  {self.flagged} answers left out (no end-of-thinking marker or no log-prob)"
            )
        return "\n".join(lines)


def _provenance(judge: Any, answers: Path, band: float) -> dict[str, Any]:
    from bake import __version__
    from bake.files.fileio import sha256_file
    from bake.judges.rubric import RUBRIC_VERSION

    return {
        "judge": getattr(judge, "model_id", type(judge).__name__),
        "rubric_version": RUBRIC_VERSION,
        "band": band,
        "answers": Path(answers).name,
        "answers_sha256": sha256_file(Path(answers)),
        "steerbake_version": __version__,
    }


def run_judge(
    answers_path: Path,
    output: Path,
    judge: Any,
    *,
    cache_path: Path | None,
    band: float = DEFAULT_BAND,
    progress: bool = True,
) -> JudgeSummary:
    """Judge every scorable answer in answers_path and write SCORES to output."""
    from bake.artifacts.answers import read_answers
    from bake.files.fileio import atomic_write_path

    if not 0 <= band < 1:
        raise InputError(f"--band must be in [0, 1) (got {band})")
    records = read_answers(answers_path)
    if not records:
        raise InputError(f"answers file {answers_path} is empty; run `steerbake generate`")
    pairs = [(r.prompt, s.text) for r in records for s in r.samples if s.scorable]
    cache = JudgeCache(cache_path) if getattr(judge, "cached", True) else None
    try:
        judged = judge_pairs(judge, pairs, cache, progress=progress)
    finally:
        if cache:
            cache.close()
    verdicts, stats = judged.verdicts, judged.stats
    lines, tally, flagged = [], Counter[str](), 0
    for r in records:
        labels = [verdicts[(r.prompt, s.text)] if s.scorable else 0 for s in r.samples]
        score, n_valid = aggregate(
            [s.mean_logprob if s.scorable else None for s in r.samples], labels
        )
        counts = Counter(
            LABEL_NAMES[lab] for s, lab in zip(r.samples, labels, strict=True) if s.scorable
        )
        counts["flagged"] = sum(not s.scorable for s in r.samples)
        flagged += counts["flagged"]
        label = band_label(score, band)
        tally[label or "unscored"] += 1
        if score is None:
            continue
        lines.append(
            json.dumps(
                {
                    "id": r.id,
                    "score": score,
                    "label": label,
                    "n_valid": n_valid,
                    "counts": {
                        k: counts.get(k, 0) for k in ("refusal", "compliance", "error", "flagged")
                    },
                    # the rubric kind per scorable answer ("" where the judge named none)
                    "kinds": [judged.kinds[(r.prompt, s.text)] for s in r.samples if s.scorable],
                    **({"category": r.category} if r.category is not None else {}),
                }
            )
        )
    with atomic_write_path(Path(output)) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines))
    write_provenance(Path(output), _provenance(judge, answers_path, band))
    scored = max(1, len(records) - tally["unscored"])
    shares = {k: tally[k] / scored for k in ("refusal", "neutral", "compliance")}
    return JudgeSummary(
        Path(output),
        len(records),
        shares,
        tally["unscored"],
        stats,
        stats.errors / max(1, stats.judged),
        flagged,
    )
