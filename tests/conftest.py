"""Session-scoped tiny models: built once, shared by every test, never modified."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

# Set before numpy or torch is imported (tests.tiny_models imports both): their thread
# pools read these once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models are latency-bound: one intra-op thread is several times faster on 2 cores
# (also for the CLI subprocesses, which inherit it).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("STEERBAKE_THREADS", "1")  # what steerbake gives torch and llama.cpp

import pytest

from tests.tiny_models import build_model


def _build(factory: pytest.TempPathFactory, name: str, **kw: object) -> Path:
    return build_model(factory.mktemp(name) / "model", **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama, grouped-query attention (4 heads, 2 kv), untied, float32, one file."""
    return _build(tmp_path_factory, "llama", family="llama")


@pytest.fixture(scope="session")
def llama_tied_bf16_sharded_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama, tied embeddings, bfloat16, several shards with an index."""
    return _build(
        tmp_path_factory,
        "llama_bf16",
        family="llama",
        tied=True,
        dtype="bfloat16",
        shard_size="60KB",
        seed=1,
    )


@pytest.fixture(scope="session")
def llama_tied_f32_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama, tied embeddings, float32, one file."""
    return _build(tmp_path_factory, "llama_tied32", family="llama", tied=True, seed=7)


@pytest.fixture(scope="session")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory, "qwen3", family="qwen3", seed=2)


@pytest.fixture(scope="session")
def mistral_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory, "mistral", family="mistral", seed=3)


@pytest.fixture(scope="session")
def gemma3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory, "gemma3", family="gemma3_text", seed=4)


def tree_digest(folder: Path) -> str:
    """sha256 over every file's relative path and bytes: detects any change to a source."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def steerbake_exe() -> str:
    """The installed console script (tests run it as a user would)."""
    exe = shutil.which("steerbake") or str(Path(sys.executable).parent / "steerbake")
    return exe


def run_cli(
    *args: str,
    check: bool = False,
    cwd: Path | None = None,
    timeout: int = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [steerbake_exe(), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"steerbake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The real SmolLM2-135M-Instruct Q4_1 from the model cache (`make models`), converted
    to a float32 checkpoint once per session (1 thread for torch and llama.cpp)."""
    import time

    from export.llamacpp.convert import run_convert
    from tests.real_models import real_model

    gguf_file = real_model("smollm2-135m-instruct")
    out = tmp_path_factory.mktemp("smollm2") / "smollm2"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STEERBAKE_THREADS", "1")
        start = time.perf_counter()
        report = run_convert(gguf_file, out)
        seconds = time.perf_counter() - start
    return {"gguf": gguf_file, "out": out, "report": report, "seconds": seconds}
