"""`steerbake push`: upload an exported folder to the Hugging Face Hub.

Creates the repository if it is missing (and the branch, with --revision), then uploads the
folder with huggingface_hub's `upload_folder` (large files go through its LFS/Xet path). The
folder's SHA256SUMS is checked first, so a file edited or damaged since the export is never
published. `--dry-run` lists the operations and sizes and touches no network.

The token comes from HF_TOKEN or the login cache (`hf auth login`); it is handed to
huggingface_hub and never printed, logged or written. Errors are one line each: no token,
offline mode, endpoint unreachable, token rejected, no permission.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from bake.errors import InputError, OutputError, VerificationError
from bake.files.fileio import sha256_file
from bake.options import opt

SUMS_FILE = "SHA256SUMS"
LFS_THRESHOLD = 10 * 1000 * 1000  # the Hub stores files above 10 MB (and binaries) via LFS
_BINARY_SUFFIXES = (".safetensors", ".gguf", ".bin", ".png", ".pt", ".npy", ".npz")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class PushOptions:
    """Where `run_push` uploads, and how."""

    repo_id: str = opt(help="Hub repository to upload to.", metavar="USER/NAME")
    private: bool = opt(False, "Create the repository private.")
    revision: str | None = opt(None, "Branch to upload to (created if missing).")
    dry_run: bool = opt(False, "List what would be uploaded; no network.")
    commit_message: str | None = opt(None, "[default: Upload NAME with steerbake].")


@dataclass
class UploadFile:
    path: str  # path in the repository (posix, relative to the folder)
    size: int

    @property
    def lfs(self) -> bool:
        return self.size > LFS_THRESHOLD or self.path.endswith(_BINARY_SUFFIXES)


@dataclass
class PushResult:
    repo_id: str
    revision: str
    private: bool
    files: list[UploadFile]
    dry_run: bool
    endpoint: str
    token_source: str  # where a token would come from; never the token
    url: str | None = None
    operations: list[str] = field(default_factory=list)

    def render(self) -> str:
        from export.publish.cards import human_size

        total = sum(f.size for f in self.files)
        head = "dry run, nothing sent: would" if self.dry_run else "done:"
        lines = [
            f"{head} push {len(self.files)} files ({human_size(total)}) to {self.repo_id} "
            f"(revision {self.revision}) at {self.endpoint}"
        ]
        lines += [f"  {op}" for op in self.operations]
        width = max((len(f.path) for f in self.files), default=0)
        lines += [
            f"  upload {f.path:<{width}}  {human_size(f.size):>10}{'  (LFS)' if f.lfs else ''}"
            for f in self.files
        ]
        if self.dry_run:
            lines.append(f"  token: {self.token_source}")
        if self.url:
            lines.append(f"  {self.url}")
        return "\n".join(lines)


def upload_plan(folder: Path) -> list[UploadFile]:
    """Every file to upload, after checking SHA256SUMS (export's own record of them)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; pass a folder written by `steerbake export`")
    sums = folder / SUMS_FILE
    if not sums.is_file():
        raise InputError(
            f"{folder} has no {SUMS_FILE}: push folders written by "
            "`steerbake export` (or write one with `sha256sum`)"
        )
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not _hidden(p, folder))
    _check_sums(folder, sums, {p.relative_to(folder).as_posix() for p in files})
    return [UploadFile(p.relative_to(folder).as_posix(), p.stat().st_size) for p in files]


def _hidden(path: Path, folder: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(folder).parts)


def _check_sums(folder: Path, sums: Path, present: set[str]) -> None:
    listed: dict[str, str] = {}
    for line in sums.read_text(encoding="utf-8").splitlines():
        digest, _, rel = line.partition("  ")
        if len(digest) != 64 or not rel:
            raise InputError(f"{sums}: malformed line {line!r}; re-run `steerbake export`")
        listed[rel] = digest
    missing = sorted(set(listed) - present)
    if missing:
        raise VerificationError(
            f"{folder}: {missing[0]} is listed in {SUMS_FILE} but missing; "
            "re-run `steerbake export`"
        )
    unlisted = sorted(present - set(listed) - {SUMS_FILE})
    if unlisted:
        raise VerificationError(
            f"{folder}: {unlisted[0]} is not in {SUMS_FILE} (added after the "
            "export?); remove it or re-run `steerbake export`"
        )
    for rel, digest in sorted(listed.items()):
        if sha256_file(folder / rel) != digest:
            raise VerificationError(
                f"{folder / rel} changed since the export (its SHA256 differs "
                f"from {SUMS_FILE}); re-run `steerbake export`"
            )


def token_source() -> tuple[str | None, str]:
    """(token, where it came from). The token is only ever passed to huggingface_hub."""
    import os

    from huggingface_hub import get_token

    token = get_token()
    if not token:
        return None, "missing"
    return token, "HF_TOKEN" if os.environ.get("HF_TOKEN") else "the login cache"


def run_push(
    folder: Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
    commit_message: str | None = None,
) -> PushResult:
    """Check the folder and the repo id, then upload (or, with dry_run, only list)."""
    from huggingface_hub import constants

    if not _REPO_ID.match(repo_id) or ".." in repo_id or "--" in repo_id:
        raise InputError(
            f"--repo-id {repo_id!r} is not USER/NAME (letters, digits, '.', '_', "
            "'-'), e.g. alice/llama-steered"
        )
    files = upload_plan(folder)
    token, source = token_source()
    result = PushResult(
        repo_id, revision or "main", private, files, dry_run, constants.ENDPOINT, source
    )
    result.operations = [
        f"create repository {repo_id} ({'private' if private else 'public'}) if missing",
        *([f"create branch {revision} if missing"] if revision else []),
        f"one commit: {len(files)} files, {sum(f.lfs for f in files)} through LFS",
    ]
    if dry_run:
        return result
    if token is None:
        raise InputError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    if constants.HF_HUB_OFFLINE:
        raise OutputError("HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it to push")
    result.url = _upload(
        Path(folder),
        repo_id,
        token,
        private=private,
        revision=revision,
        message=commit_message or f"Upload {Path(folder).name} with steerbake",
    )
    return result


def _upload(
    folder: Path, repo_id: str, token: str, *, private: bool, revision: str | None, message: str
) -> str:
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=revision,
            commit_message=message,
            ignore_patterns=[".*", "**/.*"],
        )
    except Exception as e:
        known = _one_line(e, api.endpoint)
        if known is None:
            raise
        raise known from None
    return str(getattr(info, "commit_url", "") or f"{api.endpoint}/{repo_id}")


def _one_line(e: Exception, endpoint: str) -> OutputError | None:
    """The Hub's failure as one line that says what to do (never echoing the token); None
    for anything else, which keeps its traceback (a bug)."""
    from huggingface_hub.errors import HfHubHTTPError

    if _is_transport_error(e):
        return OutputError(
            f"cannot reach the Hugging Face Hub at {endpoint} "
            f"({type(e).__name__}); check the network, or HF_ENDPOINT"
        )
    if isinstance(e, HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 401:
            return OutputError(
                "the Hub rejected the token (401); create a token with write "
                "access and set HF_TOKEN or run `hf auth login`"
            )
        if status == 403:
            return OutputError(
                "the token may not write to this repository (403); use a token "
                "with write access to its owner"
            )
        return OutputError(f"the Hub refused the upload (HTTP {status}); try again later")
    return None


def _is_transport_error(e: BaseException) -> bool:
    """Connection refused, DNS failure, timeout: httpx (huggingface_hub's client) or OS."""
    if isinstance(e, OSError):
        return True
    names = {c.__name__ for c in type(e).__mro__}
    modules = {c.__module__.split(".")[0] for c in type(e).__mro__}
    return "TransportError" in names and bool(modules & {"httpx", "httpx2", "httpcore"})
