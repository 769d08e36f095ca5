"""SCORES.jsonl, written by `judge` and read by `fit`: one line per scored prompt,
{"id", "score", "label", "n_valid", "counts"} (other fields are ignored when reading)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from bake.errors import InputError

if TYPE_CHECKING:
    pass


# --------------------------------------------------------------------------- scores
def load_scores(path: Path) -> dict[str, float]:
    """id -> score from a JSONL of {"id": ..., "score": c in [-1, 1]} (other fields ignored)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"score file {path} not found") from None
    except UnicodeDecodeError:
        raise InputError(f"score file {path} is not UTF-8 text") from None
    scores: dict[str, float] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(
                f"{where}: malformed JSON ({e.msg}); each line must be an object "
                'like {"id": "a1", "score": -0.8}'
            ) from None
        if not isinstance(obj, dict) or "id" not in obj or "score" not in obj:
            raise InputError(f"{where}: each line needs an 'id' and a 'score'")
        pid, score = str(obj["id"]), obj["score"]
        if (
            isinstance(score, bool)
            or not isinstance(score, int | float)
            or not math.isfinite(score)
            or not -1.0 <= score <= 1.0
        ):
            raise InputError(f"{where}: score {score!r} for id {pid!r} is not a number in [-1, 1]")
        if pid in scores:
            raise InputError(f"{where}: duplicate id {pid!r}; each prompt needs one score")
        scores[pid] = float(score)
    if not scores:
        raise InputError(
            f"score file {path} is empty; score the prompts first "
            "(`steerbake judge`) or write {id, score} lines"
        )
    return scores
