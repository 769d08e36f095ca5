"""Temporary outputs of killed runs are removed by the next output in the same folder once
their owner is provably gone, and never otherwise; the free-space check counts what that
frees (issue 22, item 4b)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bake.errors import OutputError
from bake.files import fileio
from bake.files.fileio import (
    OWNER_SUFFIX,
    TMP_PREFIX,
    atomic_output_dir,
    atomic_write_path,
    check_free_space,
    owner_record,
)

KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from bake.files.fileio import atomic_output_dir, atomic_write_path
dest = Path(sys.argv[1])
if sys.argv[2] == "dir":
    with atomic_output_dir(dest, overwrite=False) as tmp:
        (tmp / "shard.bin").write_bytes(b"x" * 100_000)
        os.kill(os.getpid(), signal.SIGKILL)
else:
    with atomic_write_path(dest) as tmp:
        tmp.write_bytes(b"x" * 1000)
        os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_run(dest: Path, kind: str) -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, str(dest), kind], cwd=root)
    assert proc.returncode == -signal.SIGKILL


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TMP_PREFIX))


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_next_output_removes_what_a_killed_run_left(tmp_path: Path, kind: str) -> None:
    _killed_run(tmp_path / "out", kind)
    left = _leftovers(tmp_path)
    assert len(left) == 2 and sum(n.endswith(OWNER_SUFFIX) for n in left) == 1, left
    owner = tmp_path / next(n for n in left if n.endswith(OWNER_SUFFIX))
    record = json.loads(owner.read_text())
    assert set(record) == {"pid", "host", "start", "boot"}
    assert record["host"] == socket.gethostname()
    with atomic_output_dir(tmp_path / "other", overwrite=False) as tmp:
        (tmp / "a").write_text("a")
    assert _leftovers(tmp_path) == [] and (tmp_path / "other" / "a").is_file()


def _fake_leftover(folder: Path, record: dict[str, object] | None, size: int = 10) -> Path:
    tmp = folder / f"{TMP_PREFIX}fake"
    tmp.mkdir()
    (tmp / "data").write_bytes(b"x" * size)
    if record is not None:
        (folder / f"{tmp.name}{OWNER_SUFFIX}").write_text(json.dumps(record))
    return tmp


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize(
    "change, removed",
    [
        ({}, False),  # this very process: alive
        ({"pid": "dead"}, True),
        ({"start": "1"}, True),  # the pid now runs a process started at another time
        ({"boot": "another-boot"}, True),  # the machine rebooted since
        ({"host": "another-host", "pid": "dead"}, False),  # a shared disk: cannot tell
        ({"pid": -1}, False),  # a damaged record
    ],
)
def test_only_leftovers_whose_owner_is_gone_are_removed(
    tmp_path: Path, change: dict[str, object], removed: bool
) -> None:
    record = owner_record() | change
    if record["pid"] == "dead":
        record["pid"] = _dead_pid()
    tmp = _fake_leftover(tmp_path, record)
    with atomic_write_path(tmp_path / "out.json") as out:
        out.write_text("{}")
    assert tmp.exists() != removed


def test_a_leftover_without_owner_file_is_never_touched(tmp_path: Path) -> None:
    tmp = _fake_leftover(tmp_path, None)
    with atomic_output_dir(tmp_path / "out", overwrite=False) as out:
        (out / "a").write_text("a")
    assert tmp.is_dir() and (tmp / "data").is_file()


def test_free_space_counts_what_the_cleanup_frees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = _fake_leftover(tmp_path, owner_record() | {"pid": _dead_pid()}, size=1_000_000)
    real = shutil.disk_usage

    def usage(path: object) -> object:  # the disk is "full" while the leftover is there
        u = real(path)
        free = 2_000_000 if not stale.exists() else 1_000_000
        return type(u)(u.total, u.total - free, free)

    monkeypatch.setattr(fileio.shutil, "disk_usage", usage)
    with pytest.raises(OutputError, match="not enough disk space"):
        check_free_space(tmp_path / "out", 3_000_000)
    check_free_space(tmp_path / "out", 1_500_000)
    assert not stale.exists()


def test_owner_file_is_never_part_of_the_output(tmp_path: Path) -> None:
    with atomic_output_dir(tmp_path / "out", overwrite=False) as tmp:
        (tmp / "a").write_text("a")
        assert [p.name for p in tmp.iterdir()] == ["a"]
        owners = [n for n in _leftovers(tmp_path) if n.endswith(OWNER_SUFFIX)]
        assert json.loads((tmp_path / owners[0]).read_text())["pid"] == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
