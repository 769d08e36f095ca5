"""Safe output: files and folders are built aside and renamed into place, copies use the
kernel's fastest safe path, and every output can be hashed. Large outputs stream through
StreamWriter, which hashes them as they are written and writes them with O_DIRECT.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import mmap
import os
import shutil
import socket
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from io import RawIOBase
from pathlib import Path
from typing import Any

from bake.errors import InputError, OutputError, warn

_CHUNK = 16 * 1024 * 1024
TMP_PREFIX = ".steerbake-tmp-"
OWNER_SUFFIX = ".owner"  # beside each temporary output: who is building it (see claim)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path: Path, is_dir: bool) -> None:
    """mkstemp/mkdtemp create 0600/0700; give outputs the usual permissions."""
    os.chmod(path, (0o777 if is_dir else 0o666) & ~_umask())


# --------------------------------------------------------------------------- temporary outputs
# Every temporary output (`.steerbake-tmp-*`, a file or a folder) has an owner file beside
# it, `<name>.owner`: JSON {pid, host, start, boot} of the process building it (start: the
# process start time in clock ticks since boot, from /proc; boot: the kernel's boot id).
# A run that is killed leaves both behind; the next output started in the same folder
# removes them once the owner is provably gone (same host, and the pid is not running, or
# runs a process that started at another time, or the machine has rebooted). A temporary
# output without an owner file, or whose owner may live, is never touched.


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _process_start(pid: int) -> str | None:
    """Start time of process `pid` in clock ticks since boot (/proc/PID/stat field 22)."""
    stat = _read_text(f"/proc/{pid}/stat")
    if not stat or ")" not in stat:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19] if len(fields) > 19 else None  # fields[0] is field 3 (state)


def owner_record(pid: int | None = None) -> dict[str, object]:
    pid = os.getpid() if pid is None else pid
    return {
        "pid": pid,
        "host": socket.gethostname(),
        "start": _process_start(pid),
        "boot": _read_text("/proc/sys/kernel/random/boot_id"),
    }


def claim(tmp: Path) -> Path:
    """Write the owner file of the temporary output `tmp`; returns its path."""
    owner = tmp.with_name(tmp.name + OWNER_SUFFIX)
    fd = os.open(owner, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with open(fd, "w", encoding="ascii") as f:
        f.write(json.dumps(owner_record()) + "\n")
    return owner


def owner_gone(record: dict[str, object]) -> bool:
    """Whether the process an owner record names has certainly ended (False: maybe not)."""
    me = owner_record()
    pid = record.get("pid")
    if record.get("host") != me["host"] or not isinstance(pid, int) or pid <= 0:
        return False  # another machine (a shared disk) or a damaged record: cannot tell
    if record.get("boot") and me["boot"] and record["boot"] != me["boot"]:
        return True  # the machine has rebooted since
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # a live process of another user
    start = _process_start(pid)
    return bool(record.get("start") and start and start != record["start"])  # pid reused


def _tree_bytes(path: Path) -> int:
    """Bytes of the files at or below `path` (symlinks not followed)."""
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size if path.is_symlink() or path.exists() else 0
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.lstat(os.path.join(root, f)).st_size for f in files)
    return total


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def reclaim_stale(folder: Path) -> int:
    """Remove the temporary outputs in `folder` whose owner is gone (see above), with their
    owner files; returns the bytes freed and says so in one line when there were any."""
    freed, count = 0, 0
    try:
        owners = sorted(Path(folder).glob(f"{TMP_PREFIX}*{OWNER_SUFFIX}"))
    except OSError:
        return 0
    for owner in owners:
        try:
            record = json.loads(owner.read_text(encoding="ascii"))
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or not owner_gone(record):
            continue
        tmp = owner.with_name(owner.name[: -len(OWNER_SUFFIX)])
        with contextlib.suppress(OSError):
            size = _tree_bytes(tmp)
            _remove(tmp)
            if tmp.exists() or tmp.is_symlink():
                continue  # not removed (permissions?): its owner file stays, to retry later
            owner.unlink()
            freed, count = freed + size, count + 1
    if count:
        warn(
            f"removed {count} temporary output(s) left in {folder} by killed runs "
            f"({freed / 1e6:.1f} MB)"
        )
    return freed


def make_parent(dest: Path) -> None:
    """Create the folders above `dest`; a file or a dangling symlink in the way is an
    OutputError naming it."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(
            f"cannot create {dest}: {_blocker(dest.parent)}; choose another output path"
        ) from None


def _blocker(folder: Path) -> str:
    """What stands where a folder above an output should be: the first file or dangling
    symlink on the way down from the root."""
    for p in [*reversed(folder.parents), folder]:
        if p.is_symlink() and not p.exists():
            return f"{p} is a symlink to nothing ({os.readlink(p)}), not a folder"
        if p.exists() and not p.is_dir():
            return f"{p} is a file, not a folder"
    return f"{folder} cannot be created"


@contextlib.contextmanager
def atomic_write_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it replaces `dest` atomically."""
    dest = Path(dest)
    if dest.is_dir():
        raise OutputError(f"{dest} is a folder; pass a file path")
    make_parent(dest)
    reclaim_stale(dest.parent)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=dest.suffix, dir=dest.parent)
    os.close(fd)
    owner = claim(Path(tmp))
    # Free the name again: writers then create a new file rather than truncate an existing
    # one, which on ext4 (auto_da_alloc) would force a flush of the whole file on close.
    os.unlink(tmp)
    try:
        with _naming(dest):
            yield Path(tmp)
        if not os.path.exists(tmp):
            raise OutputError(f"nothing was written for {dest}")
        _publish_mode(Path(tmp), is_dir=False)
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        owner.unlink(missing_ok=True)


def plain_file_name(name: object, what: str) -> str:
    """`name` if it is a bare file name (no folder part, no '..', not absolute), else an
    InputError: names read from input files (a shard index, an activation index) must not
    make us read or write outside the folder they describe."""
    text = str(name) if isinstance(name, str) else ""
    bad = (
        not text
        or text in (".", "..")
        or "/" in text
        or "\\" in text
        or "\0" in text
        or Path(text).is_absolute()
    )
    if bad:
        raise InputError(
            f"{what} names the file {name!r}, which is not a plain file name in its folder; "
            "the index is corrupted or hostile: re-download the model"
        )
    return text


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies below it: by resolved paths (symlinks followed)
    and by identity of every existing ancestor (bind mounts, other names for one folder)."""
    path_abs, folder_abs = path.resolve(), folder.resolve()
    if path_abs == folder_abs or folder_abs in path_abs.parents:
        return True
    if not folder.exists():
        return False
    return any(p.exists() and os.path.samefile(p, folder) for p in (path, *path.parents))


def check_output_dir(dest: Path, *, overwrite: bool, sources: tuple[Path, ...] = ()) -> None:
    """Refuse an existing output (unless overwrite), an output that is, lies inside or
    contains a source, and one whose temporary build folder (created beside `dest`, see
    atomic_output_dir) would land inside a source; symlinks are followed."""
    dest = Path(dest)
    for src in sources:
        src = Path(src)
        if _inside(dest, src) or _inside(dest.parent, src):
            raise OutputError(
                f"output {dest} is or lies inside the source {src} (symlinks followed); "
                "choose a folder outside it (the source is never modified)"
            )
        if _inside(src, dest):
            raise OutputError(f"output {dest} contains the source {src}; choose another folder")
    if (dest.exists() or dest.is_symlink()) and not overwrite:
        raise OutputError(f"{dest} already exists; pass --overwrite to replace it")


def check_output_file(out: Path, inputs: list[Path], *, overwrite: bool) -> None:
    """Refuse a file output that is one of the inputs (also through a symlink or another
    name for the same file), a folder, or exists without overwrite."""
    out = Path(out)
    for f in inputs:
        f = Path(f)
        if not f.exists():
            continue
        same = out.resolve() == f.resolve() or (out.exists() and os.path.samefile(out, f))
        if same:
            raise OutputError(
                f"output {out} is the input {f}, one of the inputs; write to another path "
                "(inputs are never modified)"
            )
    if out.is_dir():
        raise OutputError(f"{out} is a folder; pass a file path inside it")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise OutputError(f"{out} already exists; pass --overwrite to replace it")


def check_free_space(folder: Path, needed: int) -> None:
    """Raise before writing when the disk holding `folder` has less than `needed` bytes,
    after removing what killed runs left there (reclaim_stale), so their space counts."""
    probe = Path(folder)
    while not probe.exists():
        probe = probe.parent
    if probe.is_dir():
        reclaim_stale(probe)
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise OutputError(
            f"not enough disk space in {probe}: {needed / 1e9:.2f} GB needed, "
            f"{free / 1e9:.2f} GB free; free space or choose another output"
        )


@contextlib.contextmanager
def atomic_output_dir(dest: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder beside `dest`; on success it is renamed to `dest`.

    An interrupted run leaves only a `.steerbake-tmp-*` folder (and its owner file, so the
    next output in the same folder removes it), never a complete-looking output. With
    overwrite, the old output is removed only after the new one is built.
    """
    dest = Path(dest)
    make_parent(dest)
    reclaim_stale(dest.parent)
    tmp, owner = _owned_tmpdir(dest.parent)
    try:
        with _naming(dest):
            yield tmp
        _publish_mode(tmp, is_dir=True)
        if dest.exists() or dest.is_symlink():
            if not overwrite:
                raise OutputError(f"{dest} appeared while writing; pass --overwrite")
            old, old_owner = _owned_tmpdir(dest.parent)
            os.replace(dest, old / "old")
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
            old_owner.unlink(missing_ok=True)
        else:
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        owner.unlink(missing_ok=True)


@contextlib.contextmanager
def _naming(dest: Path) -> Iterator[None]:
    """An OSError that names no file (a failed write: disk full, I/O error) names `dest`."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = str(dest)
        raise


def _owned_tmpdir(parent: Path) -> tuple[Path, Path]:
    """A new temporary folder in `parent` and its owner file."""
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=parent))
    return tmp, claim(tmp)


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
    """Hex SHA-256 of a file, read through one reused buffer (no allocation per chunk)."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = memoryview(bytearray(max(1, min(_CHUNK, os.fstat(f.fileno()).st_size))))
        while n := f.readinto(buf):
            h.update(buf[:n])
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


# --------------------------------------------------------------------------- streamed writes
STREAM_BUFFER = 8 * 1024 * 1024  # bytes per buffer; a StreamWriter holds three
_BLOCK = 4096  # O_DIRECT alignment of offsets, lengths and addresses (512- and 4K-sector disks)


class StreamWriter:
    """Writes one file front to back through three page-aligned buffers: the caller fills
    one while one thread hashes (optional SHA-256) and another writes those already full,
    so the caller's reads and casts, the hashing and the disk all overlap. `copy_from` a
    file skips the buffers where it can: windows of the source are mapped, then hashed and
    written straight from the page cache.

    Writes bypass the page cache (O_DIRECT) where the filesystem allows: a multi-GB output
    is then not copied into memory to be flushed later, and does not evict the source's
    cached pages. Elsewhere (tmpfs, some network filesystems) they are plain writes. The
    last block is padded for O_DIRECT and cut off again, so the file holds exactly the bytes
    given. Use as a context manager; `close()` returns the hex digest when hashing."""

    def __init__(self, path: Path, *, sha256: bool = False, direct: bool = True) -> None:
        self.fd, self.direct = _open_stream(Path(path), direct)
        self.sha256 = hashlib.sha256() if sha256 else None
        self.buffers = [mmap.mmap(-1, STREAM_BUFFER) for _ in range(3)]
        # hash and write jobs of each chunk handed off, oldest first; at most len(buffers) - 1
        # are pending, so the buffer about to be filled (handed off 3 chunks ago) is free
        self.inflight: deque[list[Future[None]]] = deque()
        self.current = 0  # index of the buffer being filled
        self.filled = 0  # bytes in it
        self.offset = 0  # file offset of its first byte
        self.scratch = bytearray()  # write_into's, for data that straddles two buffers
        self.hasher = ThreadPoolExecutor(1, thread_name_prefix="steerbake-hash")  # in order
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="steerbake-write")
        self.digest: str | None = None
        self.closed = False

    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._release()

    def write(self, data: Any) -> None:
        """Append `data` (bytes, memoryview or contiguous numpy array)."""
        view = memoryview(data).cast("B")
        while view:
            n = min(len(view), STREAM_BUFFER - self.filled)
            self.buffers[self.current][self.filled : self.filled + n] = view[:n]
            self.filled += n
            view = view[n:]
            if self.filled == STREAM_BUFFER:
                self._hand_off()

    def write_into(self, n: int, fill: Callable[[memoryview], object]) -> None:
        """Append `n` bytes that fill(view) writes into the view it is given: straight into
        the current buffer when they fit there (no copy), else into a scratch buffer that is
        then copied. `fill` must not keep the view."""
        if self.filled + n <= STREAM_BUFFER:
            fill(memoryview(self.buffers[self.current])[self.filled : self.filled + n])
            self.filled += n
            if self.filled == STREAM_BUFFER:
                self._hand_off()
            return
        if len(self.scratch) < n:
            self.scratch = bytearray(n)
        view = memoryview(self.scratch)[:n]
        fill(view)
        self.write(view)

    def copy_from(self, f: RawIOBase, count: int) -> None:
        """Append the next `count` bytes of the unbuffered file `f`. Whole buffer-sized
        windows are mapped and handed off as they are (no copy) while the output and the
        source position allow O_DIRECT from them; the rest is read into the buffers.
        Raises EOFError if the file ends first."""
        count = self._copy_mapped(f, count)
        while count:
            n = min(count, STREAM_BUFFER - self.filled)
            with memoryview(self.buffers[self.current]) as view:
                got = f.readinto(view[self.filled : self.filled + n])
            if not got:
                raise EOFError(f"file ended {count} bytes early")
            self.filled += got
            count -= got
            if self.filled == STREAM_BUFFER:
                self._hand_off()

    def _copy_mapped(self, f: RawIOBase, count: int) -> int:
        """Hand off mapped windows of `f` while whole ones remain; returns the count left.
        (A source truncated by someone else while mapped would end the process with SIGBUS;
        the output is then still only a temporary folder.)"""
        pos = f.tell()
        populate = getattr(mmap, "MAP_POPULATE", 0)  # Linux: map all its pages at once
        while (
            self.direct
            and self.filled == 0
            and count >= STREAM_BUFFER
            and pos % mmap.ALLOCATIONGRANULARITY == 0
        ):
            try:
                window = mmap.mmap(
                    f.fileno(),
                    STREAM_BUFFER,
                    flags=mmap.MAP_SHARED | populate,
                    prot=mmap.PROT_READ,
                    offset=pos,
                )
            except ValueError:  # shorter than when the copy began
                raise EOFError(f"file ended {count} bytes early") from None
            self._submit(window, STREAM_BUFFER)
            pos += STREAM_BUFFER
            count -= STREAM_BUFFER
        f.seek(pos)
        return count

    def close(self) -> str | None:
        """Write what is left and wait for it; returns the SHA-256 (hex) when hashing."""
        if not self.closed:
            if self.filled:
                self._hand_off()
            while self.inflight:
                _wait_all(self.inflight.popleft())
            os.ftruncate(self.fd, self.offset)  # cut the O_DIRECT padding of the last block
            self.digest = self.sha256.hexdigest() if self.sha256 is not None else None
            self._release()
        return self.digest

    def _hand_off(self) -> None:
        """Queue the current buffer for hashing and writing; go on in the next one."""
        self._submit(self.buffers[self.current], self.filled)
        self.filled = 0
        self.current = (self.current + 1) % len(self.buffers)

    def _submit(self, buf: mmap.mmap, n: int) -> None:
        """Hash buf[:n] (in order, one thread) and write it at self.offset (another)."""
        jobs = [self.writer.submit(self._write_out, buf, n, self.offset)]
        if self.sha256 is not None:
            jobs.append(self.hasher.submit(self.sha256.update, memoryview(buf)[:n]))
        self.inflight.append(jobs)
        self.offset += n
        while len(self.inflight) >= len(self.buffers):
            _wait_all(self.inflight.popleft())

    def _write_out(self, buf: mmap.mmap, n: int, offset: int) -> None:
        """In the writer thread: buf[:n] written at `offset`; with O_DIRECT the length is
        rounded up to whole blocks (zero padding past n, cut off by close)."""
        with memoryview(buf) as view:
            size = -(-n // _BLOCK) * _BLOCK if self.direct else n
            if size > n:  # (never for mapped windows: those are whole buffers, read-only)
                view[n:size] = bytes(size - n)
            done = 0
            while done < size:
                done += self._pwrite(view[done:size], offset + done)

    def _pwrite(self, data: memoryview, offset: int) -> int:
        try:
            return os.pwrite(self.fd, data, offset)
        except OSError as e:
            if not self.direct or e.errno != errno.EINVAL:
                raise
        import fcntl  # this file refuses O_DIRECT after all (alignment, filesystem): plain writes

        fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        self.direct = False
        return os.pwrite(self.fd, data, offset)

    def _release(self) -> None:
        """Stop the threads and close the file (also after an error)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.hasher.shutdown(wait=True)
            self.writer.shutdown(wait=True)
        finally:
            os.close(self.fd)


def _wait_all(jobs: list[Future[None]]) -> None:
    for job in jobs:
        job.result()


def _open_stream(path: Path, direct: bool) -> tuple[int, bool]:
    """(fd, O_DIRECT in effect). The file is created if missing, never truncated: it is
    written from offset 0 and cut to its length at the end."""
    flags = os.O_WRONLY | os.O_CREAT
    o_direct = getattr(os, "O_DIRECT", 0)  # Linux; absent on macOS and Windows
    if direct and o_direct:
        try:
            return os.open(path, flags | o_direct, 0o666), True
        except OSError:  # EINVAL: this filesystem has no O_DIRECT
            pass
    return os.open(path, flags, 0o666), False


def copy_hashed(src: Path, dst: Path) -> str:
    """Copy `src` to the new file `dst`; returns its SHA-256 (hex). A reflink where the
    filesystem shares extents (btrfs, xfs; the source is then read once, to hash it); else
    a StreamWriter hashes and writes each byte from the source's mapped pages (the tail
    through its buffers), so each byte is read once and copied at most once. Never a hard
    link, so editing one copy cannot change the other."""
    with open(src, "rb", buffering=0) as fin:
        with open(dst, "wb") as fout:
            reflinked = _try_reflink(fin.fileno(), fout.fileno())
        if reflinked:
            digest = sha256_file(src)
        else:
            with StreamWriter(dst, sha256=True) as out:
                try:
                    out.copy_from(fin, os.fstat(fin.fileno()).st_size)
                except EOFError as e:
                    raise OutputError(f"{src} changed while it was copied ({e})") from None
                digest = str(out.close())
    shutil.copystat(src, dst)
    return digest
