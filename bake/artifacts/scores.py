"""SCORES.jsonl, written by `judge` and read by `fit`: one line per scored prompt,
{"id", "score", "label", "n_valid", "counts", ["category"]} (`fit` reads "id" and "score",
and "category" to fit within categories; other fields are ignored).

Beside it, SCORES.jsonl.provenance.json records where the scores came from: the judge, its
rubric version, the band and the answers file. A scores file without one holds labels from
elsewhere (written by hand or by another tool), and `fit` and the cards say so.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bake.errors import InputError

PROVENANCE_SUFFIX = ".provenance.json"


def provenance_path(scores: Path) -> Path:
    return Path(scores).with_name(Path(scores).name + PROVENANCE_SUFFIX)


def write_provenance(scores: Path, record: dict[str, Any]) -> None:
    """Record beside SCORES how its scores were made (judge, rubric version, ...)."""
    from bake.files.fileio import atomic_write_path

    with atomic_write_path(provenance_path(scores)) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")


def read_provenance(scores: Path) -> dict[str, Any] | None:
    """The judge record beside SCORES, or None when the scores came from elsewhere."""
    path = provenance_path(scores)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON ({e}); delete it or judge again") from None
    return record if isinstance(record, dict) else None


def scores_source(scores: Path) -> dict[str, Any]:
    """What a vector file records about its scores: the judge and rubric that made them, or
    that they are labels from the file."""
    record = read_provenance(scores)
    if record is None or "judge" not in record:
        return {"scores_source": f"labels from {Path(scores).name}"}
    return {
        "scores_source": "judged answers",
        "judge": record["judge"],
        "rubric_version": record.get("rubric_version"),
    }


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


def load_score_categories(path: Path) -> dict[str, str]:
    """id -> category of the lines of a scores file that carry one (written by `judge` when
    the prompts had categories); {} when none does. Read after load_scores has checked it."""
    found: dict[str, str] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            obj = json.loads(line)
            if isinstance(obj.get("category"), str):
                found[str(obj["id"])] = obj["category"]
    return found
