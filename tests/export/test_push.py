"""`steerbake push`: --dry-run lists files and sizes with no network; missing token, offline
mode, an unreachable endpoint and a changed folder are one line each; the token never
appears in any output or written file. The real Hub is never contacted: network cases point
HF_ENDPOINT at a closed port on 127.0.0.1."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from export.publish.cards import human_size
from export.publish.job import ExportOptions
from tests.conftest import steerbake_exe, tree_digest
from tests.pipeline import export_model
from tests.stages.test_bake import make_plan_for

SECRET = "hf_steerbakeTEST0123456789secretTOKEN"


@pytest.fixture(scope="module")
def exported(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("push")
    plan = make_plan_for(llama_dir, work / "plan", [1])
    opts = ExportOptions(name="pushme", gguf=False, skip_verify=True, progress=False)
    export_model(llama_dir, plan, work / "out", opts)
    return work / "out" / "pushme"


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def push(
    folder: Path,
    *args: str,
    token: str | None,
    home: Path,
    offline: bool = False,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(
        HF_HOME=str(home),
        HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}",
        HF_HUB_OFFLINE="1" if offline else "0",
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    if token is not None:
        env["HF_TOKEN"] = token
    return subprocess.run(
        [steerbake_exe(), "push", str(folder), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def assert_secret_nowhere(proc: subprocess.CompletedProcess[str], *folders: Path) -> None:
    assert SECRET not in proc.stdout and SECRET not in proc.stderr
    for folder in folders:
        for p in folder.rglob("*"):
            if p.is_file():
                assert SECRET.encode() not in p.read_bytes(), f"token written to {p}"


def test_dry_run_lists_files_and_sizes(exported: Path, tmp_path: Path) -> None:
    before = tree_digest(exported)
    proc = push(
        exported,
        "--repo-id",
        "alice/pushme",
        "--dry-run",
        "--private",
        "--revision",
        "v1",
        token=SECRET,
        home=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("dry run, nothing sent")
    assert "create repository alice/pushme (private) if missing" in out
    assert "create branch v1 if missing" in out
    files = sorted(p for p in exported.rglob("*") if p.is_file())
    for p in files:
        rel = p.relative_to(exported).as_posix()
        assert re.search(
            rf"upload {re.escape(rel)}\s+{re.escape(human_size(p.stat().st_size))}", out
        ), rel
    assert re.search(r"upload model-00001-of-00002\.safetensors .*\(LFS\)", out)
    assert f"push {len(files)} files" in out and "token: HF_TOKEN" in out
    assert tree_digest(exported) == before
    assert_secret_nowhere(proc, exported, tmp_path)


def test_missing_token_is_one_line(exported: Path, tmp_path: Path) -> None:
    proc = push(exported, "--repo-id", "alice/pushme", token=None, home=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert "no Hugging Face token" in line and "HF_TOKEN" in line


def test_unreachable_endpoint_is_one_line_and_never_shows_the_token(
    exported: Path, tmp_path: Path
) -> None:
    before = tree_digest(exported)
    proc = push(exported, "--repo-id", "alice/pushme", token=SECRET, home=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "cannot reach the Hugging Face Hub at http://127.0.0.1:" in line
    assert tree_digest(exported) == before
    assert_secret_nowhere(proc, exported, tmp_path)


def test_offline_mode_is_one_line(exported: Path, tmp_path: Path) -> None:
    proc = push(exported, "--repo-id", "alice/pushme", token=SECRET, home=tmp_path, offline=True)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "HF_HUB_OFFLINE" in line
    assert_secret_nowhere(proc, exported, tmp_path)


def test_changed_folder_is_refused(exported: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    proc = push(copy, "--repo-id", "alice/pushme", "--dry-run", token=SECRET, home=tmp_path)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "config.json changed since the export" in line
    (copy / "extra.txt").write_text("x")
    (copy / "config.json").write_bytes((exported / "config.json").read_bytes())
    proc = push(copy, "--repo-id", "alice/pushme", "--dry-run", token=SECRET, home=tmp_path)
    assert proc.returncode == 2 and "extra.txt is not in SHA256SUMS" in proc.stderr


@pytest.mark.parametrize("repo_id", ["no-slash", "a/b/c", "alice/bad name", "alice/x--y"])
def test_bad_repo_id_is_one_line(exported: Path, tmp_path: Path, repo_id: str) -> None:
    proc = push(exported, "--repo-id", repo_id, "--dry-run", token=SECRET, home=tmp_path)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "is not USER/NAME" in line


def test_not_an_export_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    proc = push(tmp_path / "folder", "--repo-id", "alice/x", "--dry-run", token=None, home=tmp_path)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "has no SHA256SUMS" in line
