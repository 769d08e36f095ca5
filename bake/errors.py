"""Typed errors, and the one place warnings are printed. Every message says what went
wrong and what to do about it.

The CLI turns a SteerbakeError into one line on stderr and exit status 2; anything
else is a bug and keeps its traceback.
"""


class SteerbakeError(Exception):
    """Base class: a problem the user can fix; the message says how."""


class InputError(SteerbakeError):
    """A file or argument is malformed, missing or inconsistent."""


class UnsupportedError(SteerbakeError):
    """The architecture or route is not supported (the message lists what is)."""


class PlanMismatchError(SteerbakeError):
    """A plan or vector file was made for a different model."""


class OutputError(SteerbakeError):
    """The output cannot be written safely (exists, inside the source, no space)."""


class VerificationError(SteerbakeError):
    """A baked artifact does not match the hook reference."""


def warn(message: str) -> None:
    """One line on stderr, `steerbake: warning: ...`; the run goes on."""
    import sys

    print(f"steerbake: warning: {message}", file=sys.stderr, flush=True)
