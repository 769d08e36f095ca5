"""Opt-in tests (markers `slow`, `retrain`) are deselected by default and selected by `-m`
(issue 22, item 6): `make test` must not retrain the toy refuser."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOY = "tests/model/test_toy_refuser.py"


def _collected(*args: str) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    proc = subprocess.run([*cmd, *args, TOY], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [line for line in proc.stdout.splitlines() if "::" in line]


def test_retrain_is_opt_in() -> None:
    default = _collected()
    assert default and not [t for t in default if "retrain" in t], default
    assert [t.split("::")[1] for t in _collected("-m", "retrain")] == [
        "test_retrain_is_deterministic"
    ]
