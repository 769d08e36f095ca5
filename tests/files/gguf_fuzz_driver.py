"""Runs `steerbake` commands on GGUF mutants in this (child) process, one after the other,
for tests/files/test_gguf_fuzz.py: `python -m tests.files.gguf_fuzz_driver JOBS.json`.

JOBS.json: [{"id": ..., "args": [...]}]. For each job it prints a line {"start": id}, runs
the command through click's test runner with file descriptor 2 sent to a file (llama.cpp
writes there directly, past Python), then prints {"id", "exit", "stderr", "error"}: the
exit status, every stderr line (Python's and the native ones) and the exception the CLI
let escape, if any. The parent reads these lines: a job that started but has no result
crashed the process (or hung until the parent's timeout)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
from typing import Any


def run_job(args: list[str]) -> dict[str, Any]:
    from click.testing import CliRunner

    from export.cli import main

    with tempfile.TemporaryFile() as native:
        saved = os.dup(2)
        os.dup2(native.fileno(), 2)
        try:
            result = CliRunner().invoke(main, args)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        native.seek(0)
        native_err = native.read().decode("utf-8", "replace")
    error = None
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        error = "".join(traceback.format_exception(result.exception))
    lines = [x for x in (result.stderr + native_err).splitlines() if x.strip()]
    return {"exit": result.exit_code, "stderr": lines, "error": error}


def main(jobs_file: str) -> None:
    with open(jobs_file, encoding="utf-8") as f:
        jobs = json.load(f)
    for job in jobs:
        print(json.dumps({"start": job["id"]}), flush=True)
        print(json.dumps({"id": job["id"], **run_job(job["args"])}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
