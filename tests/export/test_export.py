"""`steerbake export`: both folders end to end (llama: bias route + baked GGUF; qwen3: adapter
+ unsteered GGUF + control vector), the usage snippets the cards print actually work, the
patch path, skipped GGUF parts with their one line, atomic folders and bad input."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bake.errors import InputError, OutputError, PlanMismatchError, UnsupportedError
from export.publish.build import ExportResult
from export.publish.job import ExportOptions
from tests.conftest import run_cli, steerbake_exe, tree_digest
from tests.pipeline import export_model, plan_vectors
from tests.stages.test_bake import make_plan_for

LLAMA_NAME = "tiny-llama-steered"


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models run ~5x faster on one thread than on oversubscribed cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def read_sums(folder: Path) -> dict[str, str]:
    return {
        rel: digest
        for digest, _, rel in (
            line.partition("  ") for line in (folder / "SHA256SUMS").read_text().splitlines()
        )
    }


def assert_sums_complete(folder: Path) -> None:
    """SHA256SUMS lists every file but itself, each with its real digest."""
    sums = read_sums(folder)
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert set(sums) == files - {"SHA256SUMS"}
    for rel, digest in sums.items():
        assert hashlib.sha256((folder / rel).read_bytes()).hexdigest() == digest, rel


def assert_card_lists_files(folder: Path) -> None:
    """The card's Files table names every file (but README.md and SHA256SUMS) with its digest."""
    from huggingface_hub import ModelCard

    text = (folder / "README.md").read_text()
    ModelCard.load(folder / "README.md")  # parses
    for rel, digest in read_sums(folder).items():
        if rel != "README.md":
            assert f"| `{rel}` |" in text and digest in text, rel


def no_leftovers(out: Path) -> None:
    assert not [p for p in out.rglob(".steerbake-*")], list(out.rglob(".steerbake-*"))


def python_blocks(card: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card.read_text(), flags=re.S)


def gguf_tensors(path: Path) -> dict[str, np.ndarray]:
    import gguf

    return {t.name: np.array(t.data) for t in gguf.GGUFReader(str(path)).tensors}


def rounded_vectors(model_dir: Path, plan_file: Path) -> dict[int, np.ndarray]:
    from bake.files.tensor_bytes import round_to
    from bake.model.checkpoint import open_checkpoint

    dtype = open_checkpoint(model_dir).dtype
    return {k: round_to(v, dtype).astype(np.float32) for k, v in plan_vectors(plan_file).items()}


# --------------------------------------------------------------------------- llama
@pytest.fixture(scope="module")
def llama_export(
    llama_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, ExportResult]:
    work = tmp_path_factory.mktemp("export_llama")
    plan = make_plan_for(llama_dir, work / "plan", [1, 2], alpha=-0.3)
    opts = ExportOptions(gguf_types=("F32",), base_model_id="acme/tiny-llama", progress=False)
    result = export_model(llama_dir, plan, work / "out", opts)
    return work / "out", plan, result


def test_llama_export_layout(llama_export: tuple[Path, Path, ExportResult]) -> None:
    out, _, result = llama_export
    model, gguf_dir = out / LLAMA_NAME, out / f"{LLAMA_NAME}-GGUF"
    assert list(result.folders) == [str(model), str(gguf_dir)]
    for folder in (model, gguf_dir):
        assert_sums_complete(folder)
        assert_card_lists_files(folder)
        assert (folder / "steering" / "plan.json").is_file()
        assert (folder / "steering" / "vectors.safetensors").is_file()
    assert (model / "tokenizer.json").is_file() and (model / "config.json").is_file()
    assert json.loads((model / "config.json").read_text())["mlp_bias"] is True
    report = json.loads((model / "steering" / "verify.json").read_text())
    assert report["passed"], report
    assert report["model"] == "acme/tiny-llama" and report["baked"] == LLAMA_NAME
    assert sorted(p.name for p in gguf_dir.glob("*.gguf")) == [f"{LLAMA_NAME}-F32.gguf"]
    gguf_report = json.loads((gguf_dir / "steering" / f"verify-{LLAMA_NAME}-F32.json").read_text())
    assert gguf_report["passed"] and gguf_report["kind"] == "baked"
    no_leftovers(out)


def test_llama_baked_gguf_holds_the_plan(llama_export: tuple[Path, Path, ExportResult]) -> None:
    out, plan, _ = llama_export
    tensors = gguf_tensors(out / f"{LLAMA_NAME}-GGUF" / f"{LLAMA_NAME}-F32.gguf")
    vectors = plan_vectors(plan)
    assert sorted(n for n in tensors if n.endswith("ffn_down.bias")) == [
        "blk.1.ffn_down.bias",
        "blk.2.ffn_down.bias",
    ]
    for layer, v in vectors.items():
        got = tensors[f"blk.{layer}.ffn_down.bias"]
        assert np.abs(got - v.astype(np.float32)).max() == 0.0
    card = (out / f"{LLAMA_NAME}-GGUF" / "README.md").read_text()
    assert "--control-vector" not in card.split("## How to use it")[1].split("## Files")[0]
    assert "without** a control vector" in card


def test_llama_cards(llama_export: tuple[Path, Path, ExportResult]) -> None:
    from huggingface_hub import ModelCard

    out, _, result = llama_export
    model = ModelCard.load(out / LLAMA_NAME / "README.md").data.to_dict()
    gguf = ModelCard.load(out / f"{LLAMA_NAME}-GGUF" / "README.md").data.to_dict()
    assert (model["base_model"], model["base_model_relation"]) == ("acme/tiny-llama", "finetune")
    assert (gguf["base_model"], gguf["base_model_relation"]) == ("acme/tiny-llama", "quantized")
    assert "gguf" in gguf["tags"] and "refusal-steering" in model["tags"]
    text = (out / LLAMA_NAME / "README.md").read_text()
    assert "| Result | **PASS** |" in text
    summary = result.summary()
    for folder, files in result.folders.items():
        for f in files:
            assert f.size == (Path(folder) / f.path).stat().st_size
            assert f.path in summary


def test_llama_card_transformers_snippet_runs(
    llama_export: tuple[Path, Path, ExportResult],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The card's code, run as written from the export folder, loads the steered model."""
    out, plan, _ = llama_export
    (code,) = python_blocks(out / LLAMA_NAME / "README.md")
    monkeypatch.chdir(out)
    ns: dict = {}
    exec(compile(code, "card-snippet", "exec"), ns)
    assert capsys.readouterr().out.strip() != ""
    for layer, v in plan_vectors(plan).items():
        got = ns["model"].model.layers[layer].mlp.down_proj.bias.detach().numpy()
        assert np.abs(got - v.astype(np.float32)).max() == 0.0


# --------------------------------------------------------------------------- qwen3
@pytest.fixture(scope="module")
def qwen3_export(qwen3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("export_qwen3")
    plan = make_plan_for(qwen3_dir, work / "plan", [1, 2], alpha=-0.4)
    opts = ExportOptions(name="q3", base_model_id="acme/tiny-qwen3", progress=False)
    export_model(qwen3_dir, plan, work / "out", opts)
    return work / "out", plan


def test_qwen3_adapter_and_control_vector(qwen3_export: tuple[Path, Path], qwen3_dir: Path) -> None:
    from bake.artifacts.control_vector import load_control_vector

    out, plan = qwen3_export
    model, gguf_dir = out / "q3", out / "q3-GGUF"
    for folder in (model, gguf_dir):
        assert_sums_complete(folder)
        assert_card_lists_files(folder)
    config = json.loads((model / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "acme/tiny-qwen3"
    assert json.loads((model / "steering" / "verify.json").read_text())["passed"]
    # unsteered GGUF named after the source, the control vector beside it
    assert sorted(p.name for p in gguf_dir.glob("*.gguf")) == [
        "q3-control-vector.gguf",
        "tiny-qwen3-F16.gguf",
    ]
    assert not [n for n in gguf_tensors(gguf_dir / "tiny-qwen3-F16.gguf") if ".bias" in n]
    cv = load_control_vector(gguf_dir / "q3-control-vector.gguf")
    want = rounded_vectors(qwen3_dir, plan)
    assert cv.model_hint == "qwen3" and sorted(cv.directions) == sorted(want)
    for layer, v in want.items():
        assert np.abs(cv.directions[layer] - v).max() == 0.0
    card = (gguf_dir / "README.md").read_text()
    assert "llama-cli -m tiny-qwen3-F16.gguf --control-vector q3-control-vector.gguf" in card
    assert "--control-vector-scaled q3-control-vector.gguf:0.5" in card
    report = json.loads((gguf_dir / "steering" / "verify-tiny-qwen3-F16.json").read_text())
    assert report["passed"] and report["kind"] == "control-vector"
    model_card = (model / "README.md").read_text()
    assert "merge_and_unload()" in model_card and "**unmerged**" in model_card


def test_qwen3_llama_cpp_python_snippet_applies_the_steering(
    qwen3_export: tuple[Path, Path], qwen3_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run the card's llama-cpp-python code as written; its context must match
    transformers + hooks (tolerance covers llama.cpp's default f16 KV cache)."""
    import llama_cpp
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bake.runtime.chat import chat_text
    from bake.runtime.hooks import add_to_blocks

    out, plan = qwen3_export
    gguf_dir = out / "q3-GGUF"
    (code,) = python_blocks(gguf_dir / "README.md")
    monkeypatch.chdir(gguf_dir)
    ns: dict = {}
    exec(compile(code, "card-snippet", "exec"), ns)
    tok = AutoTokenizer.from_pretrained(qwen3_dir)
    ids = tok(chat_text(tok, "Tell me about the river valley."), add_special_tokens=False)
    ids = list(ids.input_ids)

    def last_logits(llm: Llama) -> np.ndarray:
        """Next-token logits after `ids` (the snippet's Llama keeps no score history)."""
        llm.reset()
        llm.eval(ids)
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float64)

    steered_cpp = last_logits(ns["llm"])
    plain_cpp = last_logits(Llama(model_path="tiny-qwen3-F16.gguf", n_ctx=256, verbose=False))
    hf = AutoModelForCausalLM.from_pretrained(qwen3_dir, dtype=torch.float32).eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        base = hf(input_ids=x).logits[0, -1].double().numpy()
        with add_to_blocks(hf, rounded_vectors(qwen3_dir, plan)):
            hooked = hf(input_ids=x).logits[0, -1].double().numpy()
    effect = np.abs(hooked - base).max()
    err = np.abs(steered_cpp - hooked)
    print(f"effect {effect:.3g}; llama.cpp+cv vs hooks max {err.max():.3g} mean {err.mean():.3g}")
    assert effect > 0.5, "the plan should visibly change the logits"
    assert err.max() < 0.05 * effect, f"max {err.max():.3g} mean {err.mean():.3g}"
    assert np.abs(steered_cpp - plain_cpp).max() > 0.5 * effect, "control vector not applied"


# --------------------------------------------------------------------------- other routes
def test_mistral_adapter_with_baked_gguf_unverified(mistral_dir: Path, tmp_path: Path) -> None:
    """mistral: adapter in HF format, but arch llama in GGUF has the bias slot: baked GGUF,
    no control vector. --skip-verify: the cards say so."""
    plan = make_plan_for(mistral_dir, tmp_path / "plan", [0, 3])
    tuning = tmp_path / "plan" / "plan-tuning"  # where `steerbake tune` puts its report
    tuning.mkdir()
    (tuning / "tuning_report.json").write_text('{"trials": []}')
    (tuning / "refusal_vs_kl.png").write_bytes(b"png")
    out = tmp_path / "out"
    result = export_model(mistral_dir, plan, out, ExportOptions(skip_verify=True, progress=False))
    model, gguf_dir = out / "model-steered", out / "model-steered-GGUF"  # after the folder
    assert (model / "adapter_config.json").is_file()
    assert not (model / "steering" / "verify.json").exists()
    shipped = sorted(p.name for p in (model / "steering" / "tuning").iterdir())
    assert shipped == ["refusal_vs_kl.png", "tuning_report.json"]
    assert [p.name for p in gguf_dir.glob("*.gguf")] == ["model-steered-F16.gguf"]
    names = gguf_tensors(gguf_dir / "model-steered-F16.gguf")
    assert {"blk.0.ffn_down.bias", "blk.3.ffn_down.bias"} <= set(names)
    assert "**Not verified.**" in (model / "README.md").read_text()
    assert "**Not verified in llama.cpp.**" in (gguf_dir / "README.md").read_text()
    assert "WITHOUT verification" in result.summary()
    assert any("--base-model-id" in n for n in result.notes)


def test_base_gguf_patch_path(llama_dir: Path, tmp_path: Path) -> None:
    from tests.pipeline import convert

    base = tmp_path / "base-F16.gguf"
    convert(llama_dir, base, "F16")
    plan = make_plan_for(llama_dir, tmp_path / "plan", [2])
    out = tmp_path / "out"
    opts = ExportOptions(base_gguf=base, skip_verify=True, progress=False, name="p")
    export_model(llama_dir, plan, out, opts)
    patched = out / "p-GGUF" / "p-F16.gguf"
    tensors = gguf_tensors(patched)
    v = plan_vectors(plan)[2].astype(np.float32)
    assert np.abs(tensors["blk.2.ffn_down.bias"] - v).max() == 0.0
    assert "blk.1.ffn_down.bias" not in tensors
    assert "made from `base-F16.gguf`" in (out / "p-GGUF" / "README.md").read_text()
    with pytest.raises(InputError, match="--gguf-types cannot be combined"):
        export_model(llama_dir, plan, out, ExportOptions(base_gguf=base, gguf_types=("F16",)))


def test_base_gguf_without_bias_slot_ships_it_with_a_control_vector(
    qwen3_dir: Path, tmp_path: Path
) -> None:
    from tests.pipeline import convert

    base = tmp_path / "mine.gguf"
    convert(qwen3_dir, base, "F16")
    plan = make_plan_for(qwen3_dir, tmp_path / "plan", [1])
    out = tmp_path / "out"
    export_model(
        qwen3_dir,
        plan,
        out,
        ExportOptions(base_gguf=base, skip_verify=True, progress=False, name="c"),
    )
    gguf_dir = out / "c-GGUF"
    assert sorted(p.name for p in gguf_dir.glob("*.gguf")) == ["c-control-vector.gguf", "mine.gguf"]
    assert (gguf_dir / "mine.gguf").read_bytes() == base.read_bytes()


def test_quantized_builds(tmp_path: Path) -> None:
    """k-quants need rows that are multiples of 256: a 256-wide llama. F16 is verified and
    must pass; Q4_K_M is built from it, keeps the steering biases F32, and is reported."""
    import gguf

    from tests.tiny_models import build_model

    model = build_model(tmp_path / "m", "llama", hidden=256, intermediate=512, n_layers=2)
    plan = make_plan_for(model, tmp_path / "plan", [1])
    out = tmp_path / "out"
    result = export_model(
        model, plan, out, ExportOptions(gguf_types=("F16", "Q4_K_M"), progress=False, name="q")
    )
    gguf_dir = out / "q-GGUF"
    assert sorted(p.name for p in gguf_dir.glob("*.gguf")) == ["q-F16.gguf", "q-Q4_K_M.gguf"]
    reader = gguf.GGUFReader(str(gguf_dir / "q-Q4_K_M.gguf"))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.1.ffn_down.bias"] == "F32"
    assert types["blk.0.ffn_up.weight"] in ("Q4_K", "Q5_K", "Q6_K")
    for name in ("q-F16", "q-Q4_K_M"):
        assert (gguf_dir / "steering" / f"verify-{name}.json").is_file()
    assert json.loads((gguf_dir / "steering" / "verify-q-F16.json").read_text())["passed"]
    q4 = json.loads((gguf_dir / "steering" / "verify-q-Q4_K_M.json").read_text())
    assert q4["passed"] or any(n.startswith("q-Q4_K_M.gguf: quantized") for n in result.notes)
    assert "`q-Q4_K_M.gguf`" in (gguf_dir / "README.md").read_text()


# --------------------------------------------------------------------------- skipped GGUF parts
def test_block0_without_bias_slot_skips_gguf_with_one_line(qwen3_dir: Path, tmp_path: Path) -> None:
    plan = make_plan_for(qwen3_dir, tmp_path / "plan", [0, 1])
    out = tmp_path / "out"
    opts = ExportOptions(name="qwen3-steered", skip_verify=True, progress=False)
    result = export_model(qwen3_dir, plan, out, opts)
    assert [Path(f).name for f in result.folders] == ["qwen3-steered"]
    assert not (out / "qwen3-steered-GGUF").exists()
    (line,) = [n for n in result.notes if n.startswith("GGUF builds: skipped")]
    assert "block 0" in line and "\n" not in line
    assert "GGUF builds for llama.cpp" not in (out / "qwen3-steered" / "README.md").read_text()


def test_without_llama_cpp_quantized_types_and_gguf_checks_are_skipped(
    llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now fails
    plan = make_plan_for(llama_dir, tmp_path / "plan", [1])
    out = tmp_path / "out"
    result = export_model(
        llama_dir, plan, out, ExportOptions(gguf_types=("F16", "Q8_0"), progress=False, name="n")
    )
    assert [p.name for p in (out / "n-GGUF").glob("*.gguf")] == ["n-F16.gguf"]
    notes = "\n".join(result.notes)
    assert "Q8_0: not built" in notes and "not verified in llama.cpp" in notes
    card = (out / "n-GGUF" / "README.md").read_text()
    assert "**Not verified in llama.cpp.**" in card and "Q8_0: not built" in card
    assert json.loads((out / "n" / "steering" / "verify.json").read_text())["passed"]


def _granite(folder: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, GraniteConfig

    from tests.tiny_models import build_tokenizer

    folder.mkdir(parents=True)
    tok = build_tokenizer(folder)
    config = GraniteConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        residual_multiplier=0.5,
        eos_token_id=4,
        pad_token_id=0,
    )
    torch.manual_seed(5)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def test_family_without_gguf_writer_skips_gguf_with_one_line(tmp_path: Path) -> None:
    model = _granite(tmp_path / "granite")
    plan = make_plan_for(model, tmp_path / "plan", [1])
    out = tmp_path / "out"
    result = export_model(model, plan, out, ExportOptions(skip_verify=True, progress=False))
    assert [Path(f).name for f in result.folders] == ["granite-steered"]
    (line,) = [n for n in result.notes if n.startswith("GGUF builds: skipped")]
    assert "does not support granite" in line and "--base-gguf" in line


def test_unbakeable_family_fails_with_one_line(gemma3_dir: Path, tmp_path: Path) -> None:
    plan = make_plan_for(gemma3_dir, tmp_path / "plan", [1])
    with pytest.raises(UnsupportedError, match="cannot be baked"):
        export_model(gemma3_dir, plan, tmp_path / "out", ExportOptions(progress=False))
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


# --------------------------------------------------------------------------- atomic folders
def test_failure_in_the_gguf_stage_leaves_neither_folder(
    llama_dir: Path, qwen3_dir: Path, tmp_path: Path
) -> None:
    """A qwen3 GGUF as --base-gguf for a llama plan fails after the safetensors build is
    complete: neither folder may appear, and no temporary folder may stay behind."""
    from tests.pipeline import convert

    wrong = tmp_path / "qwen3.gguf"
    convert(qwen3_dir, wrong, "F16")
    plan = make_plan_for(llama_dir, tmp_path / "plan", [1])
    out = tmp_path / "out"
    with pytest.raises((PlanMismatchError, InputError, UnsupportedError)):
        export_model(
            llama_dir, plan, out, ExportOptions(base_gguf=wrong, skip_verify=True, progress=False)
        )
    assert sorted(p.name for p in out.iterdir()) == []


def test_failure_in_the_model_build_cancels_the_gguf_thread(
    llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GGUF files are written in a second thread while the safetensors build is made: a
    failure there (here once the GGUF writer has started) cancels that thread, which stops
    at its next tensor; neither folder nor a temporary one is left, and no thread lingers."""
    import threading

    import export.publish.build as build
    from export.llamacpp import writer as gguf_writer

    started, real_write = threading.Event(), gguf_writer.write_gguf

    def write_gguf(*args: object, **kwargs: object) -> str | None:
        started.set()
        cancel = kwargs["cancel"]
        assert isinstance(cancel, threading.Event) and cancel.wait(30)  # set by the failure
        return real_write(*args, **kwargs)  # type: ignore[arg-type]

    def failing_build(*args: object, **kwargs: object) -> None:
        assert started.wait(30)
        raise OutputError("disk full")

    monkeypatch.setattr(gguf_writer, "write_gguf", write_gguf)
    monkeypatch.setattr(build, "build_model_folder", failing_build)
    plan = make_plan_for(llama_dir, tmp_path / "plan", [1])
    out = tmp_path / "out"
    with pytest.raises(OutputError, match="disk full"):
        export_model(llama_dir, plan, out, ExportOptions(skip_verify=True, progress=False))
    assert sorted(p.name for p in out.iterdir()) == []
    assert not [t for t in threading.enumerate() if t.name.startswith("steerbake-")]


def test_existing_output_is_refused_then_replaced_with_overwrite(
    llama_dir: Path, tmp_path: Path
) -> None:
    plan = make_plan_for(llama_dir, tmp_path / "plan", [1])
    out = tmp_path / "out"
    (out / "m").mkdir(parents=True)
    (out / "m" / "keep.txt").write_text("mine")
    before = tree_digest(out)
    opts = ExportOptions(name="m", gguf=False, skip_verify=True, progress=False)
    with pytest.raises(OutputError, match="--overwrite"):
        export_model(llama_dir, plan, out, opts)
    assert tree_digest(out) == before
    opts.overwrite = True
    export_model(llama_dir, plan, out, opts)
    assert not (out / "m" / "keep.txt").exists() and (out / "m" / "README.md").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["m"]
    no_leftovers(out)


# --------------------------------------------------------------------------- CLI
def test_cli_export_prints_every_file_with_its_size(llama_dir: Path, tmp_path: Path) -> None:
    plan = make_plan_for(llama_dir, tmp_path / "plan", [1])
    out = tmp_path / "out"
    proc = run_cli(
        "export",
        str(llama_dir),
        str(plan),
        "-o",
        str(out),
        "--no-gguf",
        "--skip-verify",
        "--name",
        "cli",
        check=True,
    )
    from export.publish.cards import human_size

    for p in (out / "cli").rglob("*"):
        if p.is_file():
            rel = p.relative_to(out / "cli").as_posix()
            assert re.search(
                rf"{re.escape(rel)}\s+{re.escape(human_size(p.stat().st_size))}", proc.stdout
            ), rel
    assert "GGUF builds: skipped (--no-gguf)" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gguf-types", "F16,Q3_X"], "unknown GGUF type(s) Q3_X"),
        (["--gguf-types", "F16", "--base-gguf", "{plan}"], "cannot be combined"),
        (["--name", "bad/name"], "cannot be a Hub repo name"),
        (["--eval-report", "{missing}"], "not found"),
        (["--base-model-id", "nope"], "is not a Hub id"),
    ],
)
def test_cli_bad_input_is_one_line(
    llama_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    plan = make_plan_for(llama_dir, tmp_path / "plan", [1])
    args = [a.format(plan=plan, missing=tmp_path / "missing.json") for a in args]
    out = tmp_path / "out"
    proc = run_cli("export", str(llama_dir), str(plan), "-o", str(out), *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not out.exists()


def test_cli_unbakeable_family_is_one_line(gemma3_dir: Path, tmp_path: Path) -> None:
    plan = make_plan_for(gemma3_dir, tmp_path / "plan", [1])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [steerbake_exe(), "export", str(gemma3_dir), str(plan), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "cannot be baked" in line
