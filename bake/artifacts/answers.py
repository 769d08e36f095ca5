"""ANSWERS.jsonl: one line per prompt, appended and fsynced as each prompt completes:
    {"id", "prompt", "model", "backend", ["category"], "samples": [{"text", "mean_logprob",
     "n_tokens", "flagged", ["raw"]}]}
("category" is the prompt's, when its prompt file gives one.)
A partially written last line (an interrupted run) is dropped when the file is read back."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bake.artifacts.prompts import Prompt
from bake.errors import InputError


@dataclass
class Sample:
    """One sampled answer."""

    text: str  # the answer (after the end-of-thinking marker when one is set)
    mean_logprob: float | None  # None when the answer span has no tokens
    n_tokens: int  # tokens in the answer span
    flagged: bool = False  # marker set but absent: left out of the score
    raw: str | None = None  # the whole generated text, kept when a marker is set
    token_ids: tuple[int, ...] = field(default=(), repr=False)  # transformers only; not saved

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("token_ids")
        if out["raw"] is None:
            out.pop("raw")
        return out

    @property
    def scorable(self) -> bool:
        return not self.flagged and self.mean_logprob is not None


# --------------------------------------------------------------------------- the file
@dataclass
class AnswerRecord:
    id: str
    prompt: str
    samples: list[Sample]
    model: str = ""
    backend: str = ""
    category: str | None = None  # the prompt's category, when its file gives one

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "prompt": self.prompt,
            "model": self.model,
            "backend": self.backend,
            **({"category": self.category} if self.category is not None else {}),
            "samples": [s.to_json() for s in self.samples],
        }


def _record_from_json(obj: Any, where: str) -> AnswerRecord:
    try:
        samples = [
            Sample(
                text=str(s["text"]),
                mean_logprob=(None if s.get("mean_logprob") is None else float(s["mean_logprob"])),
                n_tokens=int(s.get("n_tokens", 0)),
                flagged=bool(s.get("flagged", False)),
                raw=s.get("raw"),
            )
            for s in obj["samples"]
        ]
        return AnswerRecord(
            id=str(obj["id"]),
            prompt=str(obj["prompt"]),
            samples=samples,
            model=str(obj.get("model", "")),
            backend=str(obj.get("backend", "")),
            category=None if obj.get("category") is None else str(obj["category"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise InputError(
            f"{where}: not an answers record; expected "
            '{"id", "prompt", "samples": [{"text", "mean_logprob"}]} '
            "as written by `steerbake generate`"
        ) from None


def read_answers(path: Path, *, repair: bool = False) -> list[AnswerRecord]:
    """Records of an ANSWERS.jsonl. A partially written last line (an interrupted run) is
    ignored, and cut off the file when repair is set; any other bad line is an error."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(
            f"answers file {path} not found; write it with `steerbake generate`"
        ) from None
    complete = data[: data.rfind(b"\n") + 1]
    if repair and len(complete) < len(data):
        with open(path, "r+b") as f:
            f.truncate(len(complete))
    try:
        text = complete.decode("utf-8")
    except UnicodeDecodeError as e:
        bad_line = complete[: e.start].count(b"\n") + 1
        raise InputError(f"{path}:{bad_line}: not UTF-8 text") from None
    records, seen = [], set()
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
        record = _record_from_json(obj, f"{path}:{lineno}")
        if record.id in seen:
            raise InputError(f"{path}:{lineno}: duplicate prompt id {record.id!r}")
        seen.add(record.id)
        records.append(record)
    return records


def _append(path: Path, records: Sequence[AnswerRecord]) -> None:
    """Append whole lines and fsync: a kill leaves at most one partial line."""
    with open(path, "a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _done_ids(output: Path, prompts: Sequence[Prompt], model_id: str, k: int) -> set[str]:
    """Ids already answered in output, after checking the file belongs to this run."""
    if not output.exists():
        return set()
    by_id = {p.id: p for p in prompts}
    done = set()
    for record in read_answers(output, repair=True):
        if record.model and record.model != model_id:
            raise InputError(
                f"{output} holds answers from {record.model!r}, not {model_id!r}; "
                "write to another file"
            )
        if len(record.samples) != k:
            raise InputError(
                f"{output} has {len(record.samples)} answers per prompt, not {k}; "
                f"rerun with -k {len(record.samples)} or write to another file"
            )
        prompt = by_id.get(record.id)
        if prompt is not None and prompt.text != record.prompt:
            raise InputError(
                f"{output}: prompt {record.id!r} differs from the prompt file; "
                "write to another file"
            )
        done.add(record.id)
    return done
