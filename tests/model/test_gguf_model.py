"""MODEL may be a .gguf file: read from its header, run by transformers' GGUF loader
(dequantized), refused when it carries steering or would not fit; and the commands that
read a model take one (inspect, generate, collect, cvec --model, evaluate, export)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bake.errors import InputError
from bake.model import gguf_model
from bake.model.gguf_model import open_gguf_model
from bake.runtime.threads import threads, use_threads
from tests.conftest import run_cli
from tests.pipeline import convert, patch
from tests.stages.test_bake import make_plan_for

PROMPTS = ["How do I bake bread at home?", "Tell me about the river valley."]


@pytest.fixture(scope="module")
def ggufs(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny Llama as an F32 GGUF, a plan for it, the same file patched (steered), and a
    GGUF without a chat template."""
    root = tmp_path_factory.mktemp("gguf_model")
    plain = convert(llama_dir, root / "tiny.gguf", "F32").output
    model = open_gguf_model(plain)
    plan = make_plan_for(llama_dir, root / "plan", [1, 2], -0.5)
    patch(plain, plan, root / "steered.gguf")
    bare = root / "bare"
    shutil.copytree(llama_dir, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    no_template = convert(bare, root / "bare.gguf", "F32").output
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return {"root": root, "plain": plain, "model": model, "plan": plan,
            "steered": root / "steered.gguf", "bare": no_template, "prompts": prompts}  # fmt: skip


def test_header_fingerprint_matches_the_checkpoint(ggufs: dict[str, Any], llama_dir: Path) -> None:
    from bake.model.checkpoint import open_checkpoint

    assert ggufs["model"].fingerprint == open_checkpoint(llama_dir).fingerprint
    assert ggufs["model"].dtype == "F32"


def test_a_steered_gguf_is_refused_as_model(ggufs: dict[str, Any]) -> None:
    with pytest.raises(InputError, match="carries steering"):
        open_gguf_model(ggufs["steered"])
    for args in (["inspect"], ["collect", "-o", str(ggufs["root"] / "acts")]):
        extra = [str(ggufs["prompts"])] if args[0] == "collect" else []
        proc = run_cli(args[0], str(ggufs["steered"]), *extra, *args[1:])
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert "silently drop" in lines[0]


def test_not_enough_memory_names_the_fixes(
    ggufs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gguf_model, "available_memory", lambda: 1000)
    with pytest.raises(InputError, match=r"--dtype bfloat16.*steerbake convert"):
        ggufs["model"].check_fits("float32")


def test_generate_on_a_gguf_records_its_backend(ggufs: dict[str, Any]) -> None:
    out = ggufs["root"] / "answers.jsonl"
    proc = run_cli("generate", str(ggufs["plain"]), str(ggufs["prompts"]), "-o", str(out),
                   "-k", "1", "--greedy", "--max-new-tokens", "4", check=True)  # fmt: skip
    assert "backend transformers (dequantized GGUF)" in proc.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["backend"] for r in rows} == {"transformers (dequantized GGUF)"}


def test_collect_on_a_gguf_equals_the_checkpoint(ggufs: dict[str, Any], llama_dir: Path) -> None:
    from bake.artifacts.activations import ActivationSet

    a, b = ggufs["root"] / "acts-gguf", ggufs["root"] / "acts-ckpt"
    run_cli("collect", str(ggufs["plain"]), str(ggufs["prompts"]), "-o", str(a), check=True)
    run_cli("collect", str(llama_dir), str(ggufs["prompts"]), "-o", str(b), check=True)
    x, y = ActivationSet.open(a), ActivationSet.open(b)
    assert x.fingerprint == y.fingerprint and x.index["model"]["dtype"] == "F32"
    for layer in x.layers:
        np.testing.assert_allclose(x.layer(layer), y.layer(layer), rtol=1e-4, atol=1e-4)


def test_cvec_with_a_gguf_model_rounds_to_f32(ggufs: dict[str, Any]) -> None:
    out = ggufs["root"] / "cv.gguf"
    proc = run_cli("cvec", str(ggufs["plan"]), "-o", str(out), "--model", str(ggufs["plain"]))
    assert proc.returncode == 0, proc.stderr
    assert "rounded to the checkpoint dtype F32" in proc.stdout


def test_bake_on_a_gguf_names_convert(ggufs: dict[str, Any]) -> None:
    proc = run_cli("bake", str(ggufs["plain"]), str(ggufs["plan"]), "-o", str(ggufs["root"] / "b"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "steerbake convert" in lines[0]


def test_export_from_a_gguf_steers_that_file(ggufs: dict[str, Any]) -> None:
    out = ggufs["root"] / "export"
    args = ["export", str(ggufs["plain"]), str(ggufs["plan"]), "-o", str(out), "--name", "t"]
    dry = run_cli(*args, "--dry-run", check=True)
    run_cli(*args, check=True)
    folders = sorted(p.name for p in out.iterdir())
    assert folders == ["t-GGUF"], folders  # no safetensors build from a GGUF
    files = sorted(p.relative_to(out / "t-GGUF").as_posix() for p in (out / "t-GGUF").rglob("*")
                   if p.is_file())  # fmt: skip
    assert all(f in dry.stdout for f in files), (files, dry.stdout)
    assert "t-F32.gguf" in files and "steering/verify-t-F32.json" in files
    card = (out / "t-GGUF" / "README.md").read_text()
    assert "steerbake convert" in card
    report = json.loads((out / "t-GGUF" / "steering" / "verify-t-F32.json").read_text())
    assert report["passed"] and report["check"] == "gguf-source"


def test_chat_warns_without_a_chat_template(ggufs: dict[str, Any]) -> None:
    proc = run_cli("chat", str(ggufs["bare"]), "--prompt", "hi", "--max-tokens", "2")
    assert proc.returncode == 0, proc.stderr
    assert "no chat template" in proc.stderr
    proc = run_cli("chat", str(ggufs["plain"]), "--prompt", "hi", "--max-tokens", "2")
    assert "no chat template" not in proc.stderr


def test_threads_option_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        assert use_threads(3) == 3 and torch.get_num_threads() == 3 and threads() == 3
        monkeypatch.setenv("STEERBAKE_THREADS", "2")
        assert use_threads(None) == 2 and torch.get_num_threads() == 2
        monkeypatch.setenv("STEERBAKE_THREADS", "many")
        with pytest.raises(InputError, match="STEERBAKE_THREADS"):
            use_threads(None)
        with pytest.raises(InputError, match="--threads"):
            use_threads(0)
    finally:
        monkeypatch.delenv("STEERBAKE_THREADS")
        use_threads(before)
