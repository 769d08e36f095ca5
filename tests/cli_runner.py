"""The `steerbake` CLI in-process (click's test runner): fast, and an exception that the
CLI lets escape fails the test with its traceback instead of passing as exit code 1."""

from __future__ import annotations

from typing import Any

from click.testing import CliRunner, Result


def invoke(*args: Any, input: str | None = None) -> Result:
    """`steerbake ARGS...`, run in this process; stdout and stderr kept apart."""
    from export.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)


def assert_one_line(result: Result, *needles: str, code: int = 2) -> str:
    """The run ended with exit `code` and exactly one `steerbake: error:` line on stderr
    holding every needle; returns that line."""
    err = result.stderr.strip()
    assert result.exit_code == code, f"exit {result.exit_code}\n{result.stdout}\n{err}"
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("steerbake: error: "), err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    return err
