"""SQLite store of judge calls, so an interrupted judge run resumes without repeating or
losing a call.

Table `verdicts`: one row per key = sha256(judge model, rubric version, prompt, answer),
holding the verdict (+1 / -1 / 0) and the judge's raw reply. Table `calls`: one row per
completed judge call, appended in the same transaction; a key appearing twice there would
mean a call was repeated. Each call commits on its own, so a kill loses at most the calls
still in flight.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from bake.errors import InputError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (
    key TEXT PRIMARY KEY, judge TEXT NOT NULL, rubric TEXT NOT NULL, prompt TEXT NOT NULL,
    answer TEXT NOT NULL, verdict INTEGER NOT NULL, reply TEXT, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS calls (
    n INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, created REAL NOT NULL);
"""


def cache_key(judge: str, rubric: str, prompt: str, answer: str) -> str:
    """sha256 over the four fields, JSON-encoded so no two tuples collide."""
    return hashlib.sha256(json.dumps([judge, rubric, prompt, answer]).encode()).hexdigest()


class JudgeCache:
    """Verdicts by key; `path` None keeps them in memory only."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        target = ":memory:" if path is None else str(path)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(target, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise InputError(
                f"judge cache {path} is not usable ({e}); delete it or pass another --cache"
            ) from None

    def get_many(self, keys: Iterable[str]) -> dict[str, tuple[int, str]]:
        """Cached (verdict, reply) of those keys that have one."""
        found: dict[str, tuple[int, str]] = {}
        keys = list(keys)
        for start in range(0, len(keys), 500):
            part = keys[start : start + 500]
            marks = ",".join("?" * len(part))
            rows = self.db.execute(
                f"SELECT key, verdict, reply FROM verdicts WHERE key IN ({marks})", part
            )
            found.update((str(k), (int(v), str(r or ""))) for k, v, r in rows)
        return found

    def put(
        self, key: str, judge: str, rubric: str, prompt: str, answer: str, verdict: int, reply: str
    ) -> None:
        """Store one completed call (verdict row + call log row) in one transaction."""
        now = time.time()
        with self.db:
            self.db.execute(
                "INSERT INTO verdicts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, judge, rubric, prompt, answer, verdict, reply, now),
            )
            self.db.execute("INSERT INTO calls (key, created) VALUES (?, ?)", (key, now))

    def call_counts(self) -> dict[str, int]:
        """How many completed calls each key has had (1 each when nothing was repeated)."""
        rows = self.db.execute("SELECT key, COUNT(*) FROM calls GROUP BY key")
        return {str(k): int(n) for k, n in rows}

    def close(self) -> None:
        self.db.close()
