"""Every failure of the CLI is one line on stderr and exit status 2 (130 for Ctrl-C): typed
errors say what to fix, OS errors are mapped by errno in one place, and an unexpected
exception names a file holding its full trace (issue 22, item 2)."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from bake.files.fileio import TMP_PREFIX
from tests.cli_runner import assert_one_line, invoke


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, llama_dir: Path) -> Path:
    """vec.safetensors imported for llama_dir and plan.json over its layers 1-2."""
    from bake.stages.plan import run_plan
    from bake.stages.vectors import run_vectors_import

    work = tmp_path_factory.mktemp("errors")
    np.save(work / "raw.npy", np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32))
    run_vectors_import(work / "raw.npy", llama_dir, work / "vec.safetensors")
    run_plan(work / "vec.safetensors", "1-2", -0.3, work / "plan.json")
    return work


# --------------------------------------------------------------------------- the handler
def test_unexpected_exception_is_one_line_with_a_trace_file(
    work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object, **kw: object) -> None:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr("bake.stages.plan.run_plan", boom)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = invoke("plan", work / "vec.safetensors", "--layers", "1", "--alpha", "1", "-o", "p")
    line = assert_one_line(result, "internal error: RuntimeError: boom second line")
    m = re.search(r"\(full trace in (\S+); please report it\)$", line)
    assert m, line
    trace = Path(m.group(1))
    assert trace.parent == tmp_path and trace.name.startswith("steerbake-trace-")
    text = trace.read_text()
    assert "Traceback" in text and "RuntimeError: boom" in text and "def boom" not in line


def test_ctrl_c_exits_130(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kw: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("bake.stages.plan.run_plan", interrupted)
    result = invoke("plan", work / "vec.safetensors", "--layers", "1", "--alpha", "1", "-o", "p")
    assert result.exit_code == 130 and "interrupted" in result.stderr


# --------------------------------------------------------------------------- OS errors
def test_permission_denied_names_the_path(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = work / "plan.json"
    read_text = Path.read_text

    def denied(self: Path, *args: object, **kw: object) -> str:
        if self.name == "plan.json":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return read_text(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", denied)
    result = invoke("cvec", plan, "-o", work / "cv.gguf")
    assert_one_line(result, f"{plan}: permission denied", "check its permissions")


def test_disk_full_mid_copy_leaves_nothing(
    llama_dir: Path, work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("bake.files.fileio._try_reflink", lambda *a: False)
    monkeypatch.setattr(os, "pwrite", full)
    out = tmp_path / "baked"
    result = invoke("bake", llama_dir, work / "plan.json", "-o", out)
    assert_one_line(result, str(out), "no space left on the device", "free space")
    assert os.listdir(tmp_path) == [], "a partial output or temporary folder was left"


def test_plan_path_that_is_a_folder(llama_dir: Path, tmp_path: Path) -> None:
    result = invoke("bake", llama_dir, tmp_path, "-o", tmp_path / "out")
    assert_one_line(result, f"{tmp_path}: is a folder; pass a file path")


@pytest.mark.parametrize("blocker", ["file", "dangling symlink"])
def test_output_below_a_file_or_dangling_symlink(
    work: Path, llama_dir: Path, tmp_path: Path, blocker: str
) -> None:
    below = tmp_path / "x"
    if blocker == "file":
        below.write_text("")
    else:
        below.symlink_to(tmp_path / "nowhere")
    what = "a file" if blocker == "file" else "a symlink to nothing"
    for args in (
        ("plan", work / "vec.safetensors", "--layers", "1", "--alpha", "1", "-o", below / "p"),
        ("bake", llama_dir, work / "plan.json", "-o", below / "out"),
    ):
        assert_one_line(invoke(*args), f"cannot create {below}/", f"{below} is {what}")


def test_output_file_that_is_a_folder(work: Path, tmp_path: Path) -> None:
    result = invoke(
        "plan", work / "vec.safetensors", "--layers", "1", "--alpha", "1", "-o", tmp_path
    )
    assert_one_line(result, f"{tmp_path} is a folder; pass a file path")


# --------------------------------------------------------------------------- known failures
def test_corrupt_vector_metadata(work: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(work / "vec.safetensors"))
    for meta, needle in (("{not json", "JSONDecodeError"), ('{"format": 1}', "KeyError")):
        bad = tmp_path / "bad.safetensors"
        save_file(tensors, str(bad), metadata={"steerbake": meta})
        for args in (("vectors", "show", bad), ("plan", bad, "--layers", "1", "--alpha", "1")):
            extra = ("-o", tmp_path / "p.json") if args[0] == "plan" else ()
            assert_one_line(invoke(*args, *extra), f"{bad}: damaged vector file", needle)


def test_model_index_that_is_a_json_list(llama_tied_bf16_sharded_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(llama_tied_bf16_sharded_dir, model)
    (model / "model.safetensors.index.json").write_text("[1, 2]")
    assert_one_line(invoke("inspect", model), "index.json is not a JSON object")


def test_malformed_eval_report(work: Path, llama_dir: Path, tmp_path: Path) -> None:
    summary = {"n": "x", "scored": 1, "refusal_rate": "abc", "compliance_rate": 0}
    report = {
        "model": "m",
        "steering": "s",
        "mode": "hooks",
        "judge": "j",
        "decoding": "d",
        "max_new_tokens": 8,
        "band": 0.1,
        "sets": {"a": {"before": summary, "after": summary}},
        "kl": {},
    }
    (tmp_path / "ev.json").write_text(json.dumps(report))
    args = ("export", llama_dir, work / "plan.json", "-o", tmp_path / "out", "--no-gguf")
    result = invoke(*args, "--skip-verify", "--eval-report", tmp_path / "ev.json")
    assert_one_line(result, "is not a `steerbake evaluate` report", "'x' is not an integer")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("device", ["nonsense", "cuda"])
def test_verify_device_checked_first(
    work: Path, llama_dir: Path, tmp_path: Path, device: str
) -> None:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = invoke("verify", llama_dir, work / "plan.json", tmp_path, "--device", device)
    assert_one_line(result, f"--device {device}", "use one of cpu")


def test_tokenizer_that_needs_remote_code(work: Path, llama_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(llama_dir, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config |= {"auto_map": {"AutoTokenizer": ["tok.Tok", None]}, "tokenizer_class": "Tok"}
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    (model / "tok.py").write_text("raise SystemExit('remote code ran')\n")
    result = invoke("verify", model, work / "plan.json", model)
    assert_one_line(result, "needs custom Python code", "never runs such code")


@pytest.mark.parametrize(
    "option, value, needle",
    [("--alphas", "abc", "--alphas 'abc'"), ("--layer-counts", "x", "--layer-counts 'x'")],
)
def test_tune_number_lists(
    work: Path, llama_dir: Path, option: str, value: str, needle: str
) -> None:
    sets = [f"--{s}={work / 'raw.npy'}" for s in ("sensitive", "harmful", "benign")]
    args = ("tune", llama_dir, work / "vec.safetensors", *sets, "-o", work / "t.json")
    assert_one_line(invoke(*args, option, value), needle)


def test_chat_context_too_small(llama_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    from tests.pipeline import convert

    gguf = convert(llama_dir, tmp_path / "m.gguf").output
    result = invoke("chat", gguf, "--ctx", "1", "--prompt", "hi", "--max-tokens", "2")
    assert_one_line(result, "context of 1 tokens", "raise --ctx")
    result = invoke("chat", gguf, "--ctx", "-5", "--prompt", "hi")
    assert_one_line(result, "context length -5: give a number of tokens")


def test_reports_are_copied_into_exports_without_bare_nan(
    work: Path, llama_dir: Path, tmp_path: Path
) -> None:
    """A tuning report written before NaN became null is published as JSON."""
    report = tmp_path / "tuning_report.json"
    report.write_text('{"trials": [{"primary": NaN, "kl": 0.5}]}\n')
    args = ("export", llama_dir, work / "plan.json", "-o", tmp_path / "out", "--no-gguf")
    result = invoke(*args, "--skip-verify", "--tuning-report", report, "--name", "m")
    assert result.exit_code == 0, result.output
    copied = (tmp_path / "out" / "m" / "steering" / "tuning" / "tuning_report.json").read_text()
    assert "NaN" not in copied and json.loads(copied)["trials"][0]["primary"] is None


def test_no_temporary_output_left_by_failures(tmp_path: Path, work: Path) -> None:
    """After the failures above, a refused output leaves no `.steerbake-tmp-*` behind."""
    result = invoke("plan", work / "vec.safetensors", "--layers", "9", "--alpha", "1", "-o", "p")
    assert result.exit_code == 2
    assert not [p for p in work.iterdir() if p.name.startswith(TMP_PREFIX)]
