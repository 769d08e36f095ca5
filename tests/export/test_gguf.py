"""HF -> GGUF writer, llama.cpp runtime and the GGUF verification (export/gguf_*.py,
export/llama_runtime.py), on tiny Llama (byte-level BPE), Mistral (SentencePiece trained
here) and Qwen3 models. Numeric checks print max and mean |delta logit|."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bake.artifacts.plan import Plan, make_plan
from bake.artifacts.vectors import SteeringVectors
from bake.errors import InputError, PlanMismatchError, UnsupportedError
from bake.files.gguf_file import STEERBAKE_PLAN_KEY
from bake.model.fingerprint import Fingerprint
from bake.runtime.llama import LlamaRuntime
from export.llamacpp.verify import REL_TOLERANCE
from tests.conftest import run_cli, tree_digest
from tests.pipeline import convert, cvec, plan_vectors, verify_gguf_file
from tests.tiny_models import build_model, random_raw_vectors

CHAT_PROMPTS = [
    "How do I bake bread at home?",
    "Tell me  about\nthe river valley, its 1234 old towns!",
    "  leading spaces and ünïcödé — ok?",
]


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def mistral_spm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Mistral with a SentencePiece tokenizer (tokenizer.model) trained locally."""
    return build_model(
        tmp_path_factory.mktemp("mistral_spm") / "model", family="mistral", seed=5, tokenizer="spm"
    )


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen2: q/k/v projections with biases (made non-zero here)."""
    from safetensors.numpy import load_file, save_file

    folder = build_model(tmp_path_factory.mktemp("qwen2") / "model", family="qwen2", seed=6)
    tensors = load_file(str(folder / "model.safetensors"))
    rng = np.random.default_rng(6)
    for name in [n for n in tensors if n.endswith("_proj.bias")]:
        tensors[name] = rng.normal(0.0, 0.5, size=tensors[name].shape).astype(np.float32)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def write_plan(folder: Path, fp: Fingerprint, layers: list[int], alpha: float = -0.3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    raw = random_raw_vectors(fp.hidden_size, list(range(fp.num_layers)), seed=11)
    SteeringVectors.from_raw(raw, fp).save(folder / "vectors.safetensors")
    make_plan(folder / "vectors.safetensors", layers, alpha).save(folder / "plan.json")
    return folder / "plan.json"


@pytest.fixture(scope="module")
def work(
    tmp_path_factory: pytest.TempPathFactory, llama_dir: Path, qwen3_dir: Path
) -> dict[str, Path]:
    """Plans (blocks 1-3) and the GGUFs most tests read."""
    root = tmp_path_factory.mktemp("gguf")
    w = {
        "llama_plan": write_plan(root / "llama_plan", Fingerprint("llama", 64, 4), [1, 2, 3]),
        "qwen3_plan": write_plan(root / "qwen3_plan", Fingerprint("qwen3", 64, 4), [1, 2, 3]),
    }
    w["llama_base"] = convert(llama_dir, root / "llama.gguf").output
    w["llama_baked"] = convert(llama_dir, root / "llama-baked.gguf", "F32", w["llama_plan"]).output
    w["qwen3_base"] = convert(qwen3_dir, root / "qwen3.gguf").output
    w["qwen3_cvec"] = root / "qwen3-steer.gguf"
    cvec(w["qwen3_plan"], w["qwen3_cvec"], model=qwen3_dir)
    return w


def hf_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    """(len(ids), vocab) float32 logits of transformers, the reference."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def chat_ids(model_dir: Path, prompt: str) -> tuple[str, list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    text = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return text, tok(text, add_special_tokens=False).input_ids


def assert_close(name: str, ref: np.ndarray, got: np.ndarray) -> None:
    diff = np.abs(got - ref)
    tol = REL_TOLERANCE * max(1.0, float(np.abs(ref).max()))
    print(
        f"{name}: max |delta logit| {diff.max():.3g}, mean {diff.mean():.3g}, tolerance {tol:.3g}"
    )
    assert diff.max() <= tol, f"{name}: max {diff.max():.3g} mean {diff.mean():.3g} > {tol:.3g}"


# --------------------------------------------------------------------------- file layout
@pytest.mark.parametrize("family", ["llama", "qwen3", "mistral_spm"])
def test_gguf_reader_parses_our_files(
    family: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    import gguf

    from bake.model.checkpoint import open_checkpoint

    model_dir = request.getfixturevalue(f"{family}_dir")
    out = convert(model_dir, tmp_path / "m.gguf").output
    reader = gguf.GGUFReader(str(out))
    field = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    arch = "qwen3" if family == "qwen3" else "llama"
    assert field["general.architecture"] == arch
    assert field[f"{arch}.block_count"] == 4 and field[f"{arch}.embedding_length"] == 64
    assert field[f"{arch}.attention.head_count_kv"] == 2
    assert field["general.name"] and field["steerbake.version"]
    assert field["tokenizer.chat_template"] == (model_dir / "chat_template.jinja").read_text()
    ckpt = open_checkpoint(model_dir)
    assert len(field["tokenizer.ggml.tokens"]) == ckpt.config["vocab_size"]
    if family == "mistral_spm":
        assert field["tokenizer.ggml.model"] == "llama"
        assert field["tokenizer.ggml.bos_token_id"] == 1
        assert len(field["tokenizer.ggml.scores"]) == ckpt.config["vocab_size"]
    else:
        assert field["tokenizer.ggml.model"] == "gpt2"
        assert field["tokenizer.ggml.pre"] == "gpt-2"
        assert field["tokenizer.ggml.merges"]
    tmap = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), 4)
    expected = {tmap.get_name(n, try_suffixes=(".weight", ".bias")) for n in ckpt.tensors}
    assert {t.name for t in reader.tensors} == expected
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in reader.tensors)


def test_general_metadata_from_model_card(tmp_path: Path, llama_dir: Path) -> None:
    import gguf

    model_dir = tmp_path / "card"
    shutil.copytree(llama_dir, model_dir)
    (model_dir / "README.md").write_text(
        "---\nlicense: apache-2.0\nbase_model: meta-llama/Llama-3.2-1B\ntags:\n- tiny\n---\n"
    )
    out = convert(model_dir, tmp_path / "m.gguf", name="tiny-llama").output
    fields = {k: f.contents() for k, f in gguf.GGUFReader(str(out)).fields.items()}
    assert fields["general.name"] == "tiny-llama"
    assert fields["general.license"] == "apache-2.0"
    assert fields["general.base_model.count"] == 1
    assert fields["general.base_model.0.repo_url"].endswith("meta-llama/Llama-3.2-1B")
    assert fields["general.tags"] == ["tiny"]
    assert fields["general.size_label"]


def test_weight_types_permutation_and_tied_embeddings(
    tmp_path: Path, llama_tied_bf16_sharded_dir: Path
) -> None:
    """bf16 shards -> F32/F16/BF16: 2-D weights take the type, 1-D stay F32; values are the
    source cast (BF16 bit for bit); q/k rows are regrouped per head; tied: no output.weight."""
    import gguf
    import torch
    from safetensors.torch import load_file

    from bake.model.checkpoint import open_checkpoint
    from export.llamacpp.writer import permute_rows

    src = llama_tied_bf16_sharded_dir
    ckpt = open_checkpoint(src)
    hf: dict[str, torch.Tensor] = {}
    for shard in ckpt.shards:
        hf.update(load_file(str(src / shard)))
    for out_type, torch_type in (
        ("F32", torch.float32),
        ("F16", torch.float16),
        ("BF16", torch.bfloat16),
    ):
        path = convert(src, tmp_path / f"{out_type}.gguf", out_type).output
        tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
        assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
        for t in tensors.values():
            want = out_type if len(t.shape) == 2 else "F32"
            assert t.tensor_type.name == want, t.name
        gguf_bytes = {n: np.asarray(t.data).reshape(-1).view(np.uint8) for n, t in tensors.items()}
        np.testing.assert_array_equal(
            gguf_bytes["token_embd.weight"],
            _cast_bytes(hf["model.embed_tokens.weight"], torch_type),
        )
        for name, heads in (("q", 4), ("k", 2)):
            w = hf[f"model.layers.1.self_attn.{name}_proj.weight"]
            permuted = torch.from_numpy(permute_rows(w.view(torch.int16).numpy(), heads))
            got = gguf_bytes[f"blk.1.attn_{name}.weight"]
            np.testing.assert_array_equal(
                got, _cast_bytes(permuted.view(torch.bfloat16), torch_type)
            )
            assert not np.array_equal(got, _cast_bytes(w, torch_type))  # it did permute


def _cast_bytes(x: Any, torch_type: Any) -> np.ndarray:
    """x cast to torch_type (round to nearest even), as raw bytes."""
    import torch

    y = x.to(torch_type)
    return (y.view(torch.int16) if y.itemsize == 2 else y).numpy().reshape(-1).view(np.uint8)


_TORCH_BITS = {"F32": "int32", "F16": "int16", "BF16": "int16"}
_TORCH_TYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def _torch_cast(bits: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Bit patterns of dtype src -> torch's `.to(dst)`, as raw bytes."""
    import torch

    x = torch.from_numpy(bits.view(_TORCH_BITS[src])).view(getattr(torch, _TORCH_TYPES[src]))
    return _cast_bytes(x, getattr(torch, _TORCH_TYPES[dst]))


def _writer_cast(bits: np.ndarray, src: str, dst: str) -> np.ndarray:
    from export.llamacpp.writer import convert_elements

    out = np.empty(bits.size * np.dtype(_TORCH_BITS[dst]).itemsize, dtype=np.uint8)
    convert_elements(bits, src, dst, out)
    return out


@pytest.mark.parametrize("src", ["BF16", "F16"])
@pytest.mark.parametrize("dst", ["F32", "F16", "BF16"])
def test_casts_of_every_16_bit_pattern_match_torch(src: str, dst: str) -> None:
    """The writer casts without torch: all 65536 patterns (NaN, inf, subnormals included)
    give torch's bytes exactly."""
    every = np.arange(1 << 16, dtype=np.uint16)
    ours, torch_bytes = _writer_cast(every, src, dst), _torch_cast(every, src, dst)
    assert np.array_equal(ours, torch_bytes), f"{int((ours != torch_bytes).sum())} bytes differ"


@pytest.mark.parametrize("dst", ["F16", "BF16"])
def test_float32_casts_match_torch(dst: str) -> None:
    """float32 sources: random values at several scales, every bit pattern class and the
    rounding edges give torch's bytes; NaNs stay NaN (torch's own NaN bits vary by path)."""
    rng = np.random.default_rng(0)
    edges = [np.inf, -np.inf, 65504, 65519.99, 65520, 6e-8, 3e-8, 2.98e-8, 1e-45, 0.0, -0.0]
    values = np.concatenate(
        [rng.normal(0, scale, 200_000).astype(np.float32) for scale in (1e-6, 1.0, 1e5)]
        + [rng.integers(0, 1 << 32, 200_000, dtype=np.uint32).view(np.float32)]
        + [np.asarray(edges, dtype=np.float32)]
    )
    bits = values.view(np.uint32)
    ours = _writer_cast(bits, "F32", dst).view(np.uint16)
    ref = _torch_cast(bits, "F32", dst).view(np.uint16)
    nan = np.isnan(values)
    assert np.array_equal(ours[~nan], ref[~nan]), (ours[~nan] != ref[~nan]).sum()
    back = _writer_cast(ours, dst, "F32").view(np.float32)
    assert nan.any() and np.isnan(back[nan]).all()


# --------------------------------------------------------------------------- parity
@pytest.mark.parametrize(
    "family", ["llama", "qwen3", "qwen2", "mistral_spm", "llama_tied_bf16_sharded"]
)
def test_unsteered_logits_match_transformers(
    family: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    model_dir = request.getfixturevalue(f"{family}_dir")
    out = convert(model_dir, tmp_path / "m.gguf").output
    _, ids = chat_ids(model_dir, CHAT_PROMPTS[1])
    with LlamaRuntime(out, n_ctx=128) as rt:
        got = rt.logits(ids)
    assert_close(f"{family} GGUF vs transformers", hf_logits(model_dir, ids), got)


def test_llama3_rope_scaling_matches(tmp_path: Path, llama_dir: Path) -> None:
    """rope_type llama3 is carried by a rope_freqs tensor; without it logits move by ~0.6."""
    model_dir = tmp_path / "llama3"
    shutil.copytree(llama_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["rope_parameters"] = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    (model_dir / "config.json").write_text(json.dumps(config))
    out = convert(model_dir, tmp_path / "m.gguf").output
    text = " ".join(CHAT_PROMPTS * 2)
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(model_dir)(text, add_special_tokens=False).input_ids
    assert 64 < len(ids) <= 256  # past the original context, where the factors matter
    with LlamaRuntime(out, n_ctx=256) as rt:
        got = rt.logits(ids)
    assert_close("llama3-rope GGUF vs transformers", hf_logits(model_dir, ids), got)


@pytest.mark.parametrize("family", ["llama", "mistral_spm", "qwen3"])
def test_tokenization_parity_on_chat_text(
    family: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    model_dir = request.getfixturevalue(f"{family}_dir")
    out = convert(model_dir, tmp_path / "m.gguf").output
    tok = AutoTokenizer.from_pretrained(model_dir)
    with LlamaRuntime(out, n_ctx=64) as rt:
        for prompt in CHAT_PROMPTS:
            text, ids = chat_ids(model_dir, prompt)
            assert rt.tokenize(text) == ids, f"{family}: {text!r}"
            # plain text with special tokens added as each side's defaults say: llama.cpp adds
            # BOS only where the GGUF's add_bos_token flag asks, as transformers does
            plain = tok(prompt.strip()).input_ids
            assert rt.tokenize(prompt.strip(), special=False, add_bos=True) == plain, prompt


def test_baked_hf_checkpoint_converts_exactly(
    tmp_path: Path, llama_dir: Path, work: dict[str, Path]
) -> None:
    """steerbake bake (HF bias route) then steerbake gguf: llama.cpp runs the baked
    checkpoint as transformers does (its mlp biases map to ffn_*.bias)."""
    from tests.pipeline import bake_model

    baked = bake_model(llama_dir, work["llama_plan"], tmp_path / "baked").output
    out = convert(baked, tmp_path / "baked.gguf").output
    _, ids = chat_ids(llama_dir, CHAT_PROMPTS[0])
    with LlamaRuntime(out, n_ctx=64) as rt:
        got = rt.logits(ids)
    assert_close("HF-baked checkpoint GGUF vs transformers", hf_logits(baked, ids), got)
    with pytest.raises(InputError, match="looks baked already"):
        convert(baked, tmp_path / "twice.gguf", "F32", work["llama_plan"])


# --------------------------------------------------------------------------- verification
def _print_report(report: dict[str, Any]) -> None:
    for check in report["checks"]:
        print(f"  {check['name']}: {'ok' if check['ok'] else 'FAILED'} {check['detail']}")


def test_verify_llama_baked_gguf(work: dict[str, Path], llama_dir: Path) -> None:
    import gguf

    reader = gguf.GGUFReader(str(work["llama_baked"]))
    bias = {t.name: np.asarray(t.data) for t in reader.tensors if "ffn_down.bias" in t.name}
    assert sorted(bias) == [f"blk.{n}.ffn_down.bias" for n in (1, 2, 3)]
    plan = Plan.load(work["llama_plan"])
    np.testing.assert_array_equal(
        bias["blk.2.ffn_down.bias"], plan_vectors(plan)[2].astype(np.float32)
    )
    assert json.loads(reader.get_field(STEERBAKE_PLAN_KEY).contents())["layers"] == [1, 2, 3]

    report = verify_gguf_file(llama_dir, work["llama_plan"], work["llama_baked"], max_new_tokens=8)
    _print_report(report)
    comps = report["comparisons"]
    assert set(comps) == {
        "unsteered_vs_transformers",
        "baked_vs_control_vector",
        "steered_vs_hooks",
    }
    assert all(c["mode"] == "exact" and c["passed"] for c in comps.values())
    assert report["tokenization"]["mismatched"] == []
    assert report["effect_max"] > 100 * report["tolerance"], "the plan must visibly steer"
    assert report["passed"] and json.dumps(report)


def test_verify_qwen3_control_vector(work: dict[str, Path], qwen3_dir: Path) -> None:
    report = verify_gguf_file(
        qwen3_dir,
        work["qwen3_plan"],
        work["qwen3_base"],
        control_vector=work["qwen3_cvec"],
        max_new_tokens=8,
    )
    _print_report(report)
    comps = report["comparisons"]
    assert set(comps) == {"unsteered_vs_transformers", "steered_vs_hooks"}  # no bias slot
    assert all(c["passed"] and c["max_abs_diff"] <= c["tolerance"] for c in comps.values())
    assert report["control_vector_check"]["hint_matches"]
    assert report["effect_max"] > 100 * report["tolerance"]
    assert report["passed"]


def test_verify_f16_reports_agreement_and_kl(
    tmp_path: Path, work: dict[str, Path], llama_dir: Path
) -> None:
    out = convert(llama_dir, tmp_path / "f16.gguf", "F16", work["llama_plan"]).output
    report = verify_gguf_file(llama_dir, work["llama_plan"], out, max_new_tokens=4)
    _print_report(report)
    main = report["comparisons"]["steered_vs_hooks"]
    assert main["mode"] == "lossy" and "max_abs_diff" not in report
    assert main["top1_agreement"] >= 0.9 and main["mean_kl"] < 1e-3
    assert report["passed"]


def test_verify_detects_wrong_steering(
    tmp_path: Path, work: dict[str, Path], qwen3_dir: Path, llama_dir: Path
) -> None:
    """A control vector that does not hold the plan's vectors (here: half strength) is
    refused before any model runs; a baked GGUF never takes a control vector."""
    from bake.artifacts.control_vector import read_control_vector, write_control_vector

    half = {k: v * 0.5 for k, v in read_control_vector(work["qwen3_cvec"]).items()}
    write_control_vector(tmp_path / "half.gguf", half, "qwen3", 4)
    with pytest.raises(PlanMismatchError, match="other vectors than the plan"):
        verify_gguf_file(
            qwen3_dir, work["qwen3_plan"], work["qwen3_base"], control_vector=tmp_path / "half.gguf"
        )
    with pytest.raises(InputError, match="applies twice"):
        verify_gguf_file(
            llama_dir, work["llama_plan"], work["llama_baked"], control_vector=work["qwen3_cvec"]
        )


def test_control_vector_loader_rules(work: dict[str, Path], qwen3_dir: Path) -> None:
    """scale multiplies; direction.N past the last block is ignored, as in llama.cpp."""
    from bake.artifacts.control_vector import read_control_vector

    cv = read_control_vector(work["qwen3_cvec"])
    _, ids = chat_ids(qwen3_dir, CHAT_PROMPTS[0])
    with LlamaRuntime(work["qwen3_base"], n_ctx=64, control_vector=cv, scale=2.0) as rt:
        doubled = rt.logits(ids)
    with LlamaRuntime(
        work["qwen3_base"], n_ctx=64, control_vector={k: 2 * v for k, v in cv.items()}
    ) as rt:
        assert_close("scale 2 vs doubled vectors", rt.logits(ids), doubled)
    extra = {**cv, 4: np.full(64, 100.0, np.float32)}
    with LlamaRuntime(work["qwen3_base"], n_ctx=64, control_vector=extra) as rt:
        assert rt.ignored_blocks == [4]
        with_extra = rt.logits(ids)
    with LlamaRuntime(work["qwen3_base"], n_ctx=64, control_vector=cv) as rt:
        assert_close("direction.n_layer ignored", rt.logits(ids), with_extra)


# --------------------------------------------------------------------------- commands
def test_chat_command_answers_with_control_vector(work: dict[str, Path], qwen3_dir: Path) -> None:
    """`steerbake chat --prompt` prints llama.cpp's greedy reply formatted with the GGUF's
    chat template, steered by the control vector."""
    text, ids = chat_ids(qwen3_dir, CHAT_PROMPTS[0])
    replies = {}
    for control in (None, work["qwen3_cvec"]):
        with LlamaRuntime(work["qwen3_base"], n_ctx=64, control_vector=control) as rt:
            assert rt.tokenize(text) == ids
            greedy = rt.greedy(ids, 6, (rt.llm.token_eos(),))
            replies[control] = rt.detokenize([t for t in greedy if t != rt.llm.token_eos()])
        args = [
            "chat",
            str(work["qwen3_base"]),
            "--prompt",
            CHAT_PROMPTS[0],
            "--temperature",
            "0",
            "--max-tokens",
            "6",
        ]
        proc = run_cli(*args, *(["--control-vector", str(control)] if control else []))
        assert proc.returncode == 0, proc.stderr
        # the streamed reply drops bytes of incomplete UTF-8 sequences (random tiny model)
        assert proc.stdout.strip() == replies[control].replace("\ufffd", "").strip()
    assert replies[None] != replies[work["qwen3_cvec"]]


def test_gguf_and_cvec_commands(tmp_path: Path, llama_dir: Path, work: dict[str, Path]) -> None:
    out = tmp_path / "m.gguf"
    proc = run_cli(
        "gguf", str(llama_dir), "-o", str(out), "--plan", str(work["llama_plan"]), "--type", "BF16"
    )
    assert proc.returncode == 0, proc.stderr
    assert "BF16" in proc.stdout and "blocks 1-3" in proc.stdout and out.is_file()
    again = run_cli("gguf", str(llama_dir), "-o", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr
    cv = tmp_path / "cv.gguf"
    proc = run_cli("cvec", str(work["qwen3_plan"]), "-o", str(cv))
    assert proc.returncode == 0, proc.stderr
    assert "qwen3" in proc.stdout and "blocks 1-3" in proc.stdout


# --------------------------------------------------------------------------- bad input
def _one_line_error(proc: Any, *needles: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_unsupported_architecture(tmp_path: Path, gemma3_dir: Path) -> None:
    proc = run_cli("gguf", str(gemma3_dir), "-o", str(tmp_path / "g.gguf"))
    _one_line_error(proc, "gemma3_text", "llama, mistral, qwen2, qwen3")
    assert not (tmp_path / "g.gguf").exists()


def test_plan_refused_where_no_bias_slot(
    tmp_path: Path, qwen3_dir: Path, work: dict[str, Path]
) -> None:
    proc = run_cli(
        "gguf", str(qwen3_dir), "-o", str(tmp_path / "q.gguf"), "--plan", str(work["qwen3_plan"])
    )
    _one_line_error(proc, "no ffn_down bias slot", "steerbake cvec")


def test_plan_fingerprint_mismatch(tmp_path: Path, llama_dir: Path, work: dict[str, Path]) -> None:
    proc = run_cli(
        "gguf", str(llama_dir), "-o", str(tmp_path / "x.gguf"), "--plan", str(work["qwen3_plan"])
    )
    _one_line_error(proc, "another model", "architecture qwen3")
    proc = run_cli(
        "cvec", str(work["qwen3_plan"]), "-o", str(tmp_path / "c.gguf"), "--model", str(llama_dir)
    )
    _one_line_error(proc, "another model")
    with pytest.raises(PlanMismatchError):
        verify_gguf_file(llama_dir, work["qwen3_plan"], work["llama_baked"])


def test_block_zero_control_vector_refused(tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan0", Fingerprint("qwen3", 64, 4), [0, 1])
    proc = run_cli("cvec", str(plan), "-o", str(tmp_path / "c.gguf"))
    _one_line_error(proc, "block 0")
    assert not (tmp_path / "c.gguf").exists()


def test_output_equal_to_input_refused(
    tmp_path: Path, llama_dir: Path, work: dict[str, Path]
) -> None:
    before = tree_digest(llama_dir)
    proc = run_cli(
        "gguf", str(llama_dir), "-o", str(llama_dir / "model.safetensors"), "--overwrite"
    )
    _one_line_error(proc, "one of the inputs")
    proc = run_cli("cvec", str(work["qwen3_plan"]), "-o", str(work["qwen3_plan"]), "--overwrite")
    _one_line_error(proc, "one of the inputs")
    assert tree_digest(llama_dir) == before


def test_truncated_or_non_gguf_files(
    tmp_path: Path, work: dict[str, Path], llama_dir: Path
) -> None:
    data = work["llama_base"].read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 2])
    proc = run_cli("chat", str(cut), "--prompt", "hi")
    _one_line_error(proc, "is truncated")  # read by steerbake before llama.cpp loads it
    text = tmp_path / "text.gguf"
    text.write_text("hello")
    proc = run_cli("chat", str(text), "--prompt", "hi")
    _one_line_error(proc, "not a GGUF file")
    with pytest.raises(InputError, match="truncated"):
        verify_gguf_file(llama_dir, work["llama_plan"], tmp_path / "cut.gguf")


def test_bias_ignored_by_transformers_refused(tmp_path: Path, llama_dir: Path) -> None:
    """A bias on disk that the config does not enable would run in llama.cpp only."""
    from safetensors.numpy import load_file, save_file

    model_dir = tmp_path / "m"
    shutil.copytree(llama_dir, model_dir)
    tensors = load_file(str(model_dir / "model.safetensors"))
    tensors["model.layers.0.mlp.down_proj.bias"] = np.ones(64, np.float32)
    save_file(tensors, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(InputError, match="transformers ignores it"):
        convert(model_dir, tmp_path / "m.gguf")
    with pytest.raises(UnsupportedError, match="supports llama, mistral, qwen2, qwen3"):
        config = json.loads((model_dir / "config.json").read_text())
        (model_dir / "config.json").write_text(json.dumps({**config, "model_type": "phi3"}))
        convert(model_dir, tmp_path / "m.gguf")
