"""Typed errors, and the one place warnings are printed. Every message says what went
wrong and what to do about it.

The CLI turns a SteerbakeError into one line on stderr and exit status 2; an OSError
becomes one line by its errno (`os_error_message`), and anything else one line naming a
file that holds the full trace (a bug: please report it).
"""

from __future__ import annotations

import errno


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


class RemoteCodeError(InputError):
    """The model or tokenizer needs Python code from its own folder, which is never run."""


def warn(message: str) -> None:
    """One line on stderr, `steerbake: warning: ...`; the run goes on."""
    import sys

    print(f"steerbake: warning: {message}", file=sys.stderr, flush=True)


# errno -> what it means for the path, and what to do (the path is prepended)
_OS_ERRORS: dict[int, str] = {
    errno.EACCES: "permission denied; check its permissions or choose another path",
    errno.EPERM: "operation not permitted; check its permissions or choose another path",
    errno.ENOSPC: (
        "no space left on the device; free space or choose an output on another disk "
        "(no partial output was left at the final path)"
    ),
    errno.EDQUOT: "disk quota exceeded; free space or choose an output on another disk",
    errno.EISDIR: "is a folder; pass a file path",
    errno.ENOTDIR: (
        "a part of this path is a file, not a folder (or a symlink to nothing); "
        "choose a path whose folders exist or can be created"
    ),
    errno.ENOENT: "no such file or folder; check the path",
    errno.EROFS: "read-only file system; choose an output on a writable disk",
    errno.ELOOP: "too many levels of symbolic links (a symlink loop); fix or remove the link",
    errno.EEXIST: "already exists; remove it or choose another path",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n) and rerun",
    errno.ENFILE: "too many open files on the system; close some programs and rerun",
    errno.EIO: "input/output error; the disk or network file system may be failing",
    errno.EXDEV: "cannot move across file systems; keep the output on one disk",
    errno.ETXTBSY: "the file is busy (in use by another program); close it and rerun",
    errno.EFBIG: "file too large for this file system; choose an output on another disk",
    errno.ENOMEM: "out of memory; close other programs or use a machine with more memory",
}


def os_error_message(e: OSError) -> str:
    """One line for an OSError: the path(s) it names, what the errno means, the fix."""
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    where = " -> ".join(paths) if paths else "a file"
    what = _OS_ERRORS.get(e.errno or -1) or f"{e.strerror or e}; check the path and rerun"
    return f"{where}: {what}"


def remote_code_error(e: BaseException) -> RemoteCodeError | None:
    """The RemoteCodeError for transformers' refusal to load custom code, else None."""
    text = str(e)
    if not isinstance(e, ValueError) or "trust_remote_code" not in text:
        return None
    return RemoteCodeError(
        "the model or tokenizer needs custom Python code from its folder (auto_map in "
        "config.json or tokenizer_config.json), and steerbake never runs such code; use a "
        "model whose architecture and tokenizer transformers has built in"
    )
