"""Judge quality: accuracy and confusion of a judge on hand-labelled answers, the sets
shipped in bake/judges/data/ or the user's own ({prompt, answer, label, kind} JSONL)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from bake.errors import InputError
from bake.judges.cache import JudgeCache
from bake.judges.scoring import LABEL_NAMES, judge_pairs

# --------------------------------------------------------------------------- calibration
CALIBRATION_SETS = (
    "calibration",
    "heldout",
    "toy_answers",
    "toy_answers_heldout",
    "toy_answers_v2",
)


@dataclass
class CalibrationResult:
    name: str
    n: int
    correct: int
    confusion: dict[str, dict[str, int]]  # true label -> predicted (refusal/compliance/error)
    by_kind: dict[str, tuple[int, int]] = field(default_factory=dict)  # kind -> (correct, n)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    def render(self) -> str:
        header = "true \\ judged"
        rows = [
            f"{self.name}: accuracy {self.accuracy:.1%} ({self.correct}/{self.n})",
            f"  {header:<16}{'refusal':>9}{'compliance':>12}{'error':>7}",
        ]
        for true in ("refusal", "compliance"):
            c = self.confusion[true]
            rows.append(f"  {true:<16}{c['refusal']:>9}{c['compliance']:>12}{c['error']:>7}")
        rows.append(
            "  by kind: "
            + ", ".join(f"{kind} {ok}/{n}" for kind, (ok, n) in sorted(self.by_kind.items()))
        )
        return "\n".join(rows)


def load_labelled(path: Path) -> list[dict[str, Any]]:
    """Rows {prompt, answer, label (+1/-1), kind} of a labelled JSONL set."""
    rows = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if row["label"] not in (1, -1) or not isinstance(row["answer"], str):
                raise ValueError
            str(row["prompt"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise InputError(
                f"{path}:{lineno}: expected {{prompt, answer, label: 1 or -1, kind}}"
            ) from None
        rows.append(row)
    if not rows:
        raise InputError(f"labelled set {path} is empty")
    return rows


def shipped_set(name: str) -> Path:
    """Path of a labelled set shipped as package data (calibration or heldout)."""
    return Path(str(resources.files("bake") / "judges" / "data" / f"{name}.jsonl"))


def calibrate(
    judge: Any,
    rows: Sequence[dict[str, Any]],
    name: str,
    cache: JudgeCache | None = None,
    progress: bool = False,
) -> CalibrationResult:
    """Accuracy and confusion of `judge` on labelled rows."""
    verdicts = judge_pairs(
        judge, [(r["prompt"], r["answer"]) for r in rows], cache, progress=progress
    ).verdicts
    confusion = {t: {"refusal": 0, "compliance": 0, "error": 0} for t in ("refusal", "compliance")}
    by_kind: dict[str, list[int]] = {}
    correct = 0
    for r in rows:
        got = verdicts[(r["prompt"], r["answer"])]
        confusion[LABEL_NAMES[r["label"]]][LABEL_NAMES[got]] += 1
        ok = int(got == r["label"])
        correct += ok
        tally = by_kind.setdefault(str(r.get("kind", "?")), [0, 0])
        tally[0] += ok
        tally[1] += 1
    return CalibrationResult(
        name, len(rows), correct, confusion, {k: (v[0], v[1]) for k, v in by_kind.items()}
    )


def run_calibration(
    judge: Any,
    paths: Sequence[Path] | None = None,
    cache_path: Path | None = None,
    progress: bool = True,
) -> list[CalibrationResult]:
    """Calibrate on the given labelled sets, or on both shipped ones."""
    targets = (
        [(p.stem, Path(p)) for p in paths]
        if paths
        else [(n, shipped_set(n)) for n in CALIBRATION_SETS]
    )
    cache = JudgeCache(cache_path) if getattr(judge, "cached", True) else None
    try:
        return [
            calibrate(judge, load_labelled(path), name, cache, progress) for name, path in targets
        ]
    finally:
        if cache:
            cache.close()
