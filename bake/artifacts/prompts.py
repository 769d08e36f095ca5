"""Prompt files: JSONL with {"id": ..., "prompt": ...} per line (other fields kept), or
plain text with one prompt per line (ids p0, p1, ...). Ids are stable and unique.

An optional "category" (a non-empty string) names the kind of prompt; it travels with the
prompt through answers, scores and activations, so vectors can be fitted within a category.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bake.errors import InputError


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def category(self) -> str | None:
        """The prompt's "category" field, checked when the file was read (None: none)."""
        value = self.extra.get("category")
        return value if isinstance(value, str) else None


def prompt_id(text: str) -> str:
    """Stable id for a prompt that came without one: first 12 hex digits of its sha256."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _decode(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise InputError(f"prompt file {path} not found") from None
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not UTF-8 text; re-save the file as UTF-8") from None


def _from_json_line(path: Path, lineno: int, line: str) -> Prompt:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(
            f"{path}:{lineno}: malformed JSON ({e.msg}); each line must be one "
            'object like {"id": "a1", "prompt": "..."}'
        ) from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}:{lineno}: expected a JSON object with a 'prompt' field")
    text = obj.pop("prompt", None)
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{path}:{lineno}: missing or empty 'prompt' field")
    pid = obj.pop("id", None)
    category = obj.get("category")
    if category is not None and (not isinstance(category, str) or not category.strip()):
        raise InputError(
            f"{path}:{lineno}: 'category' must be a non-empty string (got {category!r}); "
            "name the kind of prompt, or leave the field out"
        )
    return Prompt(str(pid) if pid is not None else prompt_id(text), text, obj)


def load_prompts(path: Path) -> list[Prompt]:
    """Read and check a prompt file: non-empty, UTF-8, every line valid, ids unique."""
    path = Path(path)
    text = _decode(path)
    lines = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise InputError(f"prompt file {path} is empty; add one prompt per line")
    is_jsonl = path.suffix.lower() in (".jsonl", ".json") or lines[0][1].lstrip().startswith("{")
    if is_jsonl:
        prompts = [_from_json_line(path, i, line) for i, line in lines]
    else:
        prompts = [Prompt(f"p{k}", line.strip()) for k, (_, line) in enumerate(lines)]
    seen: dict[str, int] = {}
    for k, p in enumerate(prompts):
        if p.id in seen:
            raise InputError(
                f"{path}: duplicate prompt id {p.id!r} (entries {seen[p.id] + 1} "
                f"and {k + 1}); ids must be unique"
            )
        seen[p.id] = k
    return prompts
