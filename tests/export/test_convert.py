"""`steerbake convert FILE.gguf -o DIR` (export/llamacpp/convert.py): tiny GGUFs written by
our own writer from the tests' tiny Llama, converted back and compared with the original
checkpoint; and once the real SmolLM2 Q4_1 from the model cache (`make models`)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bake.errors import InputError, OutputError, VerificationError
from bake.files.gguf_file import read_layout
from bake.files.shards import read_header
from export.llamacpp import convert as convert_module
from export.llamacpp.convert import REPORT_FILE, SAFE_INDEX, SAFE_SINGLE, run_convert
from export.publish.cards import source_record
from tests.conftest import run_cli
from tests.pipeline import convert

PROMPTS = ["How do I bake bread at home?", "Tell me  about\nthe river valley, 1234 old towns!"]


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, llama_dir: Path) -> dict[str, Any]:
    """An F32 GGUF of the tiny Llama (its card gives a license), converted once (f32)."""
    root = tmp_path_factory.mktemp("convert")
    src = root / "llama"
    shutil.copytree(llama_dir, src)
    (src / "README.md").write_text("---\nlicense: apache-2.0\n---\n\n# tiny llama\n")
    gguf_file = convert(src, root / "models" / "tiny.gguf").output
    out = root / "models" / "tiny-hf"  # beside the GGUF: allowed
    return {
        "root": root,
        "src": src,
        "gguf": gguf_file,
        "out": out,
        "report": run_convert(gguf_file, out),
    }


def hf_logits(folder: Path, prompts: list[str] = PROMPTS) -> list[np.ndarray]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    loaded: Any = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, output_loading_info=True
    )
    model, info = loaded
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():
        return [
            model(input_ids=torch.tensor([tok(p).input_ids])).logits[0].numpy() for p in prompts
        ]


def weight_headers(folder: Path) -> dict[str, Any]:
    """tensor name -> its safetensors header entry, over every weight file of `folder`."""
    out: dict[str, Any] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out |= read_header(shard).tensors
    return out


# --------------------------------------------------------------------------- tiny GGUF
def test_converted_folder_equals_the_original_checkpoint(tiny: dict[str, Any]) -> None:
    """Loads with no missing or unexpected key; logits equal the checkpoint the GGUF was
    written from, within 1e-5 of the logit scale (an F32 GGUF is lossless)."""
    ref, got = hf_logits(tiny["src"]), hf_logits(tiny["out"])
    scale = max(1.0, max(float(np.abs(r).max()) for r in ref))
    diff = max(float(np.abs(g - r).max()) for r, g in zip(ref, got, strict=True))
    print(f"converted vs original: max |delta logit| {diff:.3g} (max |logit| {scale:.3g})")
    assert diff <= 1e-5 * scale
    config = json.loads((tiny["out"] / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "float32" and config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is False and "lm_head.weight" in weight_headers(
        tiny["out"]
    )


def test_report_token_parity_and_logits(tiny: dict[str, Any]) -> None:
    report = tiny["report"]
    ids = {p.id for p in report.token_parity}
    assert {"digits", "spaces", "newlines", "non_ascii", "prose", "chat"} <= ids
    assert report.token_parity_ok and all(p.identical for p in report.token_parity)
    assert report.loads_cleanly and report.checked
    c = report.logits
    assert c is not None and c.prompts == 8 and c.top1_agreement == 1.0
    print(f"llama.cpp vs transformers: max {c.max_abs_diff:.3g}, mean {c.mean_abs_diff:.3g}")
    assert c.max_abs_diff <= 5e-5 * max(1.0, c.max_abs_logit)  # F32: llama.cpp == torch
    saved = json.loads((tiny["out"] / REPORT_FILE).read_text())
    assert saved == json.loads(json.dumps(report.to_json()))
    sums = (tiny["out"] / "SHA256SUMS").read_text()
    assert REPORT_FILE in sums and SAFE_SINGLE in sums
    check = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=tiny["out"])
    assert check.returncode == 0
    assert "token ids, transformers vs llama.cpp: 7/7" in report.summary()


def test_chat_template_and_license_are_carried(tiny: dict[str, Any]) -> None:
    layout = read_layout(tiny["gguf"])
    template = layout.string("tokenizer.chat_template")
    assert template and (tiny["out"] / "chat_template.jinja").read_bytes() == template.encode()
    assert source_record(tiny["out"], None, None).license == "apache-2.0"  # what export reads
    readme = (tiny["out"] / "README.md").read_text()
    assert "tiny.gguf" in readme and tiny["report"].source_sha256 in readme


def test_bfloat16_sharded(tiny: dict[str, Any]) -> None:
    """--dtype bfloat16 writes BF16 tensors; small shards get an index of plain names."""
    out = tiny["root"] / "bf16"
    report = run_convert(tiny["gguf"], out, dtype="bfloat16", check=False, shard_bytes=100_000)
    assert report.dtype == "bfloat16" and not report.checked
    index = json.loads((out / SAFE_INDEX).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all("/" not in s for s in shards)
    headers = weight_headers(out)
    assert set(headers) == set(index["weight_map"])
    assert {t["dtype"] for t in headers.values()} == {"BF16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    ref, got = hf_logits(tiny["src"]), hf_logits(out)
    scale = max(float(np.abs(r).max()) for r in ref)
    assert max(float(np.abs(g - r).max()) for r, g in zip(ref, got, strict=True)) < 0.05 * scale


def test_tied_embeddings_write_no_head(tmp_path: Path, llama_tied_bf16_sharded_dir: Path) -> None:
    """A tied model is written as save_pretrained would: no lm_head.weight."""
    gguf_file = convert(llama_tied_bf16_sharded_dir, tmp_path / "tied.gguf").output
    report = run_convert(gguf_file, tmp_path / "out")
    assert report.tied_embeddings and report.token_parity_ok and report.loads_cleanly
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["tie_word_embeddings"] is True
    assert "lm_head.weight" not in weight_headers(tmp_path / "out")
    assert report.license is None and source_record(tmp_path / "out", None, None).license is None
    assert "names no license" in (tmp_path / "out" / "README.md").read_text()
    print(f"tied: llama.cpp vs transformers max {report.logits.max_abs_diff:.3g}")  # type: ignore[union-attr]


def test_outputs_refused(tiny: dict[str, Any]) -> None:
    """An existing DIR without --overwrite; a DIR that is the GGUF or contains it."""
    gguf_file, out = tiny["gguf"], tiny["out"]
    before = (out / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        run_convert(gguf_file, out, check=False)
    assert (out / "model.safetensors").stat().st_mtime_ns == before
    with pytest.raises(OutputError, match="contains the source"):
        run_convert(gguf_file, gguf_file.parent, overwrite=True, check=False)
    with pytest.raises(OutputError, match="is or lies inside the source"):
        run_convert(gguf_file, gguf_file, overwrite=True, check=False)
    assert gguf_file.is_file()
    other = tiny["root"] / "again"
    other.mkdir()
    run_convert(gguf_file, other, overwrite=True, check=False)
    assert (other / SAFE_SINGLE).is_file()


def test_token_mismatch_fails_and_writes_nothing(
    tiny: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bake.runtime.llama import LlamaRuntime

    real = LlamaRuntime.tokenize

    def shifted(self: Any, text: str, **kw: Any) -> list[int]:
        ids = real(self, text, **kw)
        return [i + 1 for i in ids] if "日本語" in text else ids

    monkeypatch.setattr(LlamaRuntime, "tokenize", shifted)
    out = tiny["root"] / "mismatch"
    with pytest.raises(VerificationError, match=r"'non_ascii'.*nothing was written.*--no-check"):
        run_convert(tiny["gguf"], out)
    assert not out.exists() and not list(out.parent.glob(".steerbake-tmp-*"))


def test_without_llama_cpp_the_comparison_is_skipped_with_a_note(
    tiny: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(convert_module, "llama_available", lambda: False)
    report = run_convert(tiny["gguf"], tiny["root"] / "nollama")
    assert report.loads_cleanly and report.logits is None and not report.token_parity
    assert report.token_parity_ok is None and "llama-cpp-python is not installed" in report.notes[0]


def test_cli_steered_gguf_refused_in_one_line(tiny: dict[str, Any]) -> None:
    from bake.model.fingerprint import Fingerprint
    from tests.export.test_gguf import write_plan

    root = tiny["root"]
    plan = write_plan(root / "plan", Fingerprint("llama", 64, 4), [1, 2])
    baked = convert(tiny["src"], root / "baked.gguf", "F32", plan).output
    proc = run_cli("convert", str(baked), "-o", str(root / "steered-out"), "--threads", "1")
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "carries steering" in proc.stderr
    assert not (root / "steered-out").exists()


def test_cli_convert_then_inspect(tiny: dict[str, Any]) -> None:
    out = tiny["root"] / "cli-bf16"
    args = ("convert", str(tiny["gguf"]), "-o", str(out), "--dtype", "bfloat16", "--threads", "1")
    proc = run_cli(*args, check=True)
    assert f"wrote {out}" in proc.stdout and "7/7 probe strings identical" in proc.stdout
    info = json.loads(run_cli("inspect", str(out), "--json", check=True).stdout)
    assert info["model_type"] == "llama" and info["dtype"] == "BF16"
    assert info["num_layers"] == 4 and info["hidden_size"] == 64


def test_missing_gguf_is_one_line() -> None:
    with pytest.raises(InputError, match="does not exist"):
        run_convert(Path("no-such.gguf"), Path("never"))


# --------------------------------------------------------------------------- real model
def test_real_smollm2_converts(smollm2: dict[str, Any]) -> None:
    report, c = smollm2["report"], smollm2["report"].logits
    print(
        f"\nSmolLM2 Q4_1 convert: {smollm2['seconds']:.1f} s (load {report.load_seconds:.1f}, "
        f"write {report.write_seconds:.1f}, check {report.check_seconds:.1f}), peak RSS "
        f"{(report.peak_rss_bytes or 0) / 1e6:.0f} MB; llama.cpp vs transformers on "
        f"{c.positions} positions: max |delta| {c.max_abs_diff:.3g}, mean "
        f"{c.mean_abs_diff:.3g}, max |logit| {c.max_abs_logit:.3g}, top-1 "
        f"{c.top1_agreement:.3f}, mean KL {c.mean_kl:.3g}"
    )
    assert report.token_parity_ok and all(p.identical for p in report.token_parity)
    assert report.loads_cleanly  # strict load: no missing or unexpected tensor
    assert report.tied_embeddings and "lm_head.weight" not in weight_headers(smollm2["out"])
    assert report.license == "apache-2.0"
    assert c.top1_agreement > 0.9 and c.max_abs_logit > 20  # reported numbers are sane
