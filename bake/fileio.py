"""Safe output: files and folders are built aside and renamed into place, copies use the
kernel's fastest safe path, and every output can be hashed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bake.errors import OutputError

_CHUNK = 16 * 1024 * 1024
TMP_PREFIX = ".steerbake-tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path: Path, is_dir: bool) -> None:
    """mkstemp/mkdtemp create 0600/0700; give outputs the usual permissions."""
    os.chmod(path, (0o777 if is_dir else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_write_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it replaces `dest` atomically."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=dest.suffix, dir=dest.parent)
    os.close(fd)
    # Free the name again: writers then create a new file rather than truncate an existing
    # one, which on ext4 (auto_da_alloc) would force a flush of the whole file on close.
    os.unlink(tmp)
    try:
        yield Path(tmp)
        if not os.path.exists(tmp):
            raise OutputError(f"nothing was written for {dest}")
        _publish_mode(Path(tmp), is_dir=False)
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def check_output_dir(dest: Path, *, overwrite: bool, sources: tuple[Path, ...] = ()) -> None:
    """Refuse an existing output (unless overwrite) and an output inside a source."""
    dest_abs = dest.resolve()
    for src in sources:
        src_abs = Path(src).resolve()
        if dest_abs == src_abs or src_abs in dest_abs.parents:
            raise OutputError(
                f"output {dest} is inside the source {src}; choose a folder "
                "outside it (the source is never modified)"
            )
        if dest_abs in src_abs.parents:
            raise OutputError(f"output {dest} contains the source {src}; choose another folder")
    if dest.exists() and not overwrite:
        raise OutputError(f"{dest} already exists; pass --overwrite to replace it")


def check_free_space(folder: Path, needed: int) -> None:
    """Raise before writing when the disk holding `folder` has less than `needed` bytes."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise OutputError(
            f"not enough disk space in {probe}: {needed / 1e9:.2f} GB needed, "
            f"{free / 1e9:.2f} GB free; free space or choose another output"
        )


@contextlib.contextmanager
def atomic_output_dir(dest: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder beside `dest`; on success it is renamed to `dest`.

    An interrupted run leaves only a `.steerbake-tmp-*` folder, never a complete-looking
    output. With overwrite, the old output is removed only after the new one is built.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=dest.parent))
    try:
        yield tmp
        _publish_mode(tmp, is_dir=True)
        if dest.exists():
            if not overwrite:
                raise OutputError(f"{dest} appeared while writing; pass --overwrite")
            old = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=dest.parent))
            os.replace(dest, old / "old")
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fast_copy(src: Path, dst: Path) -> None:
    """Copy bytes without a userspace round trip where the kernel can (reflink or
    copy_file_range); never a hard link, so editing one copy cannot change the other."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        if _try_reflink(fin.fileno(), fout.fileno()):
            return
        copied = 0
        try:
            while copied < size:
                n = os.copy_file_range(fin.fileno(), fout.fileno(), size - copied)
                if n == 0:
                    break
                copied += n
        except OSError:
            fin.seek(copied)
            fout.seek(copied)
            shutil.copyfileobj(fin, fout, _CHUNK)
            return
        if copied < size:
            shutil.copyfileobj(fin, fout, _CHUNK)
    shutil.copystat(src, dst)


def _try_reflink(fd_in: int, fd_out: int) -> bool:
    """FICLONE ioctl (btrfs, xfs): shares extents copy-on-write. False where unsupported."""
    try:
        import fcntl

        fcntl.ioctl(fd_out, 0x40049409, fd_in)  # FICLONE
        return True
    except (OSError, ImportError):
        return False


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_sha256sums(
    folder: Path, *, known: dict[str, str] | None = None, skip_links: bool = False
) -> None:
    """SHA256SUMS in `sha256sum -c` format for every file below `folder`; `known` holds
    digests already computed (relative path -> hex). Symlinked files are left out with
    skip_links: link mode lists only the bytes it wrote."""
    known = known or {}
    lines = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == "SHA256SUMS" or (skip_links and path.is_symlink()):
            continue
        lines.append(f"{known.get(rel) or sha256_file(path)}  {rel}\n")
    (folder / "SHA256SUMS").write_text("".join(lines))
