"""`steerbake generate`: K answers per prompt with their mean token log-probs, appended to
ANSWERS.jsonl prompt by prompt (bake.artifacts.answers), so a rerun resumes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bake.artifacts.answers import AnswerRecord, _append, _done_ids
from bake.artifacts.prompts import load_prompts
from bake.runtime.sampling import SamplingOptions, _batches, _progress


@dataclass
class GenerateSummary:
    output: Path
    total: int
    skipped: int
    written: int
    flagged: int
    backend: str = ""  # how the answers were made, as recorded in each line

    def render(self) -> str:
        line = (
            f"wrote {self.output}: {self.written} prompts answered, {self.skipped} "
            f"already done, {self.total} in all"
        )
        if self.backend:
            line += f"; backend {self.backend}"
        if self.flagged:
            line += f"; {self.flagged} answers without the end-of-thinking marker (flagged)"
        return line


def run_generate(
    backend: Any,
    prompts_path: Path,
    output: Path,
    *,
    options: SamplingOptions | None = None,
    chunk: int = 8,
    progress: bool = True,
) -> GenerateSummary:
    """Answer every prompt not yet in output; append each chunk as it completes."""
    options = options or SamplingOptions()
    prompts = load_prompts(prompts_path)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    done = _done_ids(output, prompts, backend.model_id, options.k)
    todo = [p for p in prompts if p.id not in done]
    bar = _progress(len(prompts), "generating", progress, unit="prompt")
    bar.update(len(prompts) - len(todo))
    flagged = 0
    try:
        for part in _batches(todo, max(1, chunk)):
            answers = backend.sample([p.text for p in part], options)
            records = [
                AnswerRecord(p.id, p.text, s, backend.model_id, backend.name, p.category)
                for p, s in zip(part, answers, strict=True)
            ]
            flagged += sum(s.flagged for r in records for s in r.samples)
            _append(output, records)
            bar.update(len(part))
    finally:
        bar.close()
    skipped = len(prompts) - len(todo)
    return GenerateSummary(output, len(prompts), skipped, len(todo), flagged, backend.name)
