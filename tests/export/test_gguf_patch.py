"""Patching existing GGUFs with steering (export.gguf_patch) and quantized builds
(export.quantize), checked in llama.cpp against the transformers hook reference.

The fixture model has hidden and intermediate sizes that are multiples of 256, so llama.cpp's
k-quants apply without falling back (FACTS.md), and every test reads the tensor types back.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bake.artifacts.plan import Plan, make_plan
from bake.artifacts.vectors import SteeringVectors
from bake.errors import InputError, OutputError, PlanMismatchError, UnsupportedError
from bake.files.gguf_file import STEERBAKE_PLAN_KEY, read_layout
from bake.model.fingerprint import Fingerprint
from export.llamacpp.patch import PHASE
from export.llamacpp.quantize import run_quantize
from export.llamacpp.verify import REL_TOLERANCE, compare_lossy
from tests.conftest import run_cli
from tests.pipeline import convert, patch, plan_vectors
from tests.tiny_models import CORPUS, build_model, random_raw_vectors

HIDDEN, FFN, N_LAYERS = 256, 512, 2
PROBES = CORPUS[:4]


# --------------------------------------------------------------------------- fixtures
def write_plan(folder: Path, fp: Fingerprint, layers: list[int], alpha: float = -0.3) -> Plan:
    """Random vectors for every layer of `fp` and a plan over `layers`."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = random_raw_vectors(fp.hidden_size, list(range(fp.num_layers)), seed=7)
    SteeringVectors.from_raw(raw, fp).save(folder / "vectors.safetensors")
    plan = make_plan(folder / "vectors.safetensors", layers, alpha)
    plan.save(folder / "plan.json")
    return Plan.load(folder / "plan.json")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 256-wide Llama, a plan over both blocks, and its F32 GGUFs: base, baked, patched."""
    root = tmp_path_factory.mktemp("gguf_patch")
    model = build_model(
        root / "model", "llama", hidden=HIDDEN, intermediate=FFN, n_layers=N_LAYERS, seed=5
    )
    plan = write_plan(root / "plan", Fingerprint("llama", HIDDEN, N_LAYERS), [0, 1])
    convert(model, root / "base.gguf", "F32")
    convert(model, root / "baked.gguf", "F32", plan=plan)
    patch(root / "base.gguf", plan, root / "patched.gguf")
    return {"root": root, "model": model, "plan": plan}


@pytest.fixture(scope="module")
def hf_logits(work: dict[str, Any]) -> dict[str, Any]:
    """Probe token ids and transformers logits (float32), unsteered and hooked."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bake.artifacts.steering import open_plan_only
    from bake.runtime.hooks import hooked

    tok = AutoTokenizer.from_pretrained(work["model"])
    ids = [list(tok(text, add_special_tokens=False).input_ids) for text in PROBES]
    model = AutoModelForCausalLM.from_pretrained(work["model"], dtype=torch.float32).eval()
    out: dict[str, Any] = {"ids": ids}
    steering = open_plan_only(work["plan"])  # the plan's vectors in float32
    with torch.no_grad():
        out["base"] = [model(input_ids=torch.tensor([x])).logits[0].numpy() for x in ids]
        with hooked(model, steering):
            out["hooked"] = [model(input_ids=torch.tensor([x])).logits[0].numpy() for x in ids]
    return out


def llama_logits(path: Path, ids: list[list[int]]) -> list[np.ndarray]:
    from bake.runtime.llama import LlamaRuntime

    with LlamaRuntime(path, n_ctx=128) as rt:
        return [rt.logits(x) for x in ids]


def tensor_bytes(path: Path) -> dict[str, tuple[str, bytes]]:
    """name -> (type name, raw data bytes), read with gguf-py's own reader."""
    import gguf

    reader = gguf.GGUFReader(path)
    return {
        t.name: (t.tensor_type.name, bytes(np.asarray(t.data).tobytes())) for t in reader.tensors
    }


def max_mean(ref: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, float, float]:
    d = np.concatenate([np.abs(g - r).reshape(-1) for r, g in zip(ref, got, strict=True)])
    scale = max(1.0, max(float(np.abs(r).max()) for r in ref))
    return float(d.max()), float(d.mean()), scale


# --------------------------------------------------------------------------- patching
def test_patch_copies_base_and_adds_f32_biases(work: dict[str, Any]) -> None:
    import gguf

    root, plan = work["root"], work["plan"]
    base, patched = tensor_bytes(root / "base.gguf"), tensor_bytes(root / "patched.gguf")
    for name, (ttype, data) in base.items():
        assert patched[name] == (ttype, data), f"{name} changed"
    added = sorted(set(patched) - set(base))
    assert added == ["blk.0.ffn_down.bias", "blk.1.ffn_down.bias"]
    for layer, v in plan_vectors(plan).items():
        ttype, data = patched[f"blk.{layer}.ffn_down.bias"]
        assert ttype == "F32"
        np.testing.assert_array_equal(np.frombuffer(data, np.float32), v.astype(np.float32))
    # every key of the base, unchanged, plus the plan
    rb, rp = gguf.GGUFReader(root / "base.gguf"), gguf.GGUFReader(root / "patched.gguf")
    for key, f in rb.fields.items():
        if key.startswith(("GGUF.", "steerbake.version")):
            continue
        assert rp.fields[key].contents() == f.contents(), key
    assert rp.fields[STEERBAKE_PLAN_KEY].contents() == json.dumps(plan.to_json(), sort_keys=True)
    # BASE's data keeps its offset modulo 64 KiB (fast kernel copies), biases at the end
    lb, lp = read_layout(root / "base.gguf"), read_layout(root / "patched.gguf")
    assert (lp.data_start - lb.data_start) % PHASE == 0
    assert [t.name for t in lp.tensors] == [t.name for t in lb.tensors] + added
    # an f32 checkpoint: the patched file holds the same tensors as the converter's bake
    assert tensor_bytes(root / "baked.gguf") == patched


def test_patched_logits_match_hook_reference(
    work: dict[str, Any], hf_logits: dict[str, Any]
) -> None:
    """f32 weights, f32 KV cache: patched GGUF in llama.cpp vs transformers + hooks."""
    got = llama_logits(work["root"] / "patched.gguf", hf_logits["ids"])
    mx, mean, scale = max_mean(hf_logits["hooked"], got)
    effect, _, _ = max_mean(hf_logits["base"], hf_logits["hooked"])
    print(
        f"patched GGUF vs hooks: max {mx:.3g} mean {mean:.3g} (tolerance "
        f"{REL_TOLERANCE * scale:.3g}); steering effect max {effect:.3g}"
    )
    assert mx <= REL_TOLERANCE * scale, f"max {mx:.3g} mean {mean:.3g}"
    assert effect > 100 * REL_TOLERANCE * scale, "the plan should visibly change the logits"


def rewrite_without_steering_keys(src: Path, dst: Path, bias_dtype: Any) -> None:
    """src's keys and tensors through gguf-py, minus steerbake.*, biases cast to bias_dtype:
    a GGUF that already has ffn_down biases but no steering record."""
    import gguf

    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(dst, arch)
    for key, f in reader.fields.items():
        if key.startswith(("GGUF.", "steerbake.")) or key == "general.architecture":
            continue
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, f.contents(), f.types[0], sub)
    for t in reader.tensors:
        data = np.array(t.data)
        if t.name.endswith("ffn_down.bias"):
            data = data.astype(bias_dtype)
        writer.add_tensor(t.name, data)  # F32 / F16 arrays: type from the dtype
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_patch_adds_to_an_existing_f16_bias(work: dict[str, Any]) -> None:
    """A base whose ffn_down biases exist (F16): the output bias is F32(old + v), v rounded
    to the plan's dtype first (F32 here) as on every route; the tensor grows, later offsets
    move, and llama.cpp still loads the file."""
    root, plan = work["root"], work["plan"]
    base = root / "with_bias.gguf"
    rewrite_without_steering_keys(root / "baked.gguf", base, np.float16)
    old = tensor_bytes(base)
    assert old["blk.0.ffn_down.bias"][0] == "F16"
    out = root / "with_bias_patched.gguf"
    result = patch(base, plan, out)
    assert result.updated == [0, 1] and "existing bias" in result.summary()
    new = tensor_bytes(out)
    for layer, v in plan_vectors(plan).items():
        name = f"blk.{layer}.ffn_down.bias"
        prev = np.frombuffer(old[name][1], np.float16).astype(np.float64)
        assert new[name][0] == "F32"
        np.testing.assert_array_equal(
            np.frombuffer(new[name][1], np.float32),
            (prev + v.astype(np.float32)).astype(np.float32),
        )
    assert {k: v for k, v in new.items() if "ffn_down.bias" not in k} == {
        k: v for k, v in old.items() if "ffn_down.bias" not in k
    }
    logits = llama_logits(out, [[5, 6, 7]])[0]
    assert np.all(np.isfinite(logits))


# --------------------------------------------------------------------------- quantized
QUANT_EXPECTED = {"Q8_0": {"Q8_0"}, "Q4_K_M": {"Q4_K", "Q6_K"}}


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K_M"])
def test_patching_a_quantized_base_equals_quantizing_the_baked_model(
    work: dict[str, Any], hf_logits: dict[str, Any], qtype: str
) -> None:
    """quantize(base) + patch  ==  quantize(baked f32): same tensor types and bytes, so the
    same logits; and the quantized steered model stays close to the f32 hook reference."""
    root, plan = work["root"], work["plan"]
    q_base, q_patched, q_baked = (root / f"{n}-{qtype}.gguf" for n in ("base", "patched", "baked"))
    run_quantize(root / "base.gguf", q_base, qtype)
    result = run_quantize(root / "baked.gguf", q_baked, qtype)
    patch(q_base, plan, q_patched)
    assert result.steering_biases == ["blk.0.ffn_down.bias", "blk.1.ffn_down.bias"]
    assert not result.fallbacks, f"k-quant fallbacks: {result.fallbacks}"
    patched, baked = tensor_bytes(q_patched), tensor_bytes(q_baked)
    weight_types = {
        t for name, (t, _) in patched.items() if name.endswith("weight") and "_norm" not in name
    }
    print(f"{qtype}: weight types {sorted(weight_types)}")
    assert weight_types <= QUANT_EXPECTED[qtype] and weight_types & QUANT_EXPECTED[qtype]
    assert {n: t for n, (t, _) in patched.items() if n.endswith(".bias")} == {
        "blk.0.ffn_down.bias": "F32",
        "blk.1.ffn_down.bias": "F32",
    }
    assert {n: t for n, (t, _) in patched.items()} == {n: t for n, (t, _) in baked.items()}
    differing = [n for n in patched if patched[n][1] != baked[n][1]]
    assert not differing, f"tensor bytes differ: {differing}"

    ids = hf_logits["ids"]
    got, ref = llama_logits(q_patched, ids), llama_logits(q_baked, ids)
    mx, mean, scale = max_mean(ref, got)
    print(f"{qtype}: patched quantized base vs quantized baked: max {mx:.3g} mean {mean:.3g}")
    # identical bytes and graph: llama.cpp's CPU kernels are deterministic, so this is exact;
    # the bound only leaves room for a future kernel reordering a float sum
    assert mx <= 1e-6 * scale, f"max {mx:.3g} mean {mean:.3g}"
    quality = compare_lossy(qtype, hf_logits["hooked"], got, []).to_json()
    unsteered = compare_lossy(qtype, hf_logits["hooked"], llama_logits(q_base, ids), []).to_json()
    noise = compare_lossy(qtype, hf_logits["base"], llama_logits(q_base, ids), []).to_json()
    print(
        f"{qtype} steered vs f32 hooked reference: top-1 agreement "
        f"{quality['top1_agreement']:.3f}, mean KL {quality['mean_kl']:.3g}, max |dlogit| "
        f"{quality['max_abs_diff']:.3g} (unsteered {qtype} vs the same reference: top-1 "
        f"{unsteered['top1_agreement']:.3f}, KL {unsteered['mean_kl']:.3g}; quantization "
        f"alone, unsteered vs unsteered f32: top-1 {noise['top1_agreement']:.3f}, KL "
        f"{noise['mean_kl']:.3g})"
    )
    # sanity only (a random tiny model has flat logits, so top-1 is fragile under Q4): the
    # steering survives quantization, i.e. the steered build is nearer the hooked reference
    assert quality["mean_kl"] < unsteered["mean_kl"]
    assert quality["mean_kl"] <= 0.5 and quality["top1_agreement"] >= 0.3


# --------------------------------------------------------------------------- bad input
def craft_gguf(
    path: Path,
    arch: str,
    *,
    hidden: int = HIDDEN,
    n_layer: int = N_LAYERS,
    extra: dict[str, float] | None = None,
) -> Path:
    """A header-only model GGUF (ffn_down weights F16): enough for the patcher's checks."""
    import gguf

    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(n_layer)
    writer.add_embedding_length(hidden)
    for key, value in (extra or {}).items():
        writer.add_float32(key.format(arch=arch), value)
    for layer in range(n_layer):
        w = np.full((hidden, FFN), 0.5, dtype=np.float16)  # (n_embd out, n_ff in)
        writer.add_tensor(f"blk.{layer}.ffn_down.weight", w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_unknown_tensor_type_is_copied_untouched(work: dict[str, Any], tmp_path: Path) -> None:
    """A tensor type id gguf-py does not know (edited in with gguf-py's r+ mode): copied
    byte for byte, never decoded."""
    import gguf

    src = tmp_path / "unknown.gguf"
    shutil.copy(work["root"] / "base.gguf", src)
    reader = gguf.GGUFReader(src, "r+")
    target = next(t for t in reader.tensors if t.name == "blk.1.attn_q.weight")
    original = bytes(np.asarray(target.data).tobytes())
    target.field.parts[4][0] = 200  # the tensor-info type field
    reader.data.flush()
    del reader
    with pytest.raises(ValueError):
        gguf.GGUFReader(src)  # gguf-py itself cannot read it
    out = tmp_path / "out.gguf"
    result = patch(src, work["plan"], out)
    assert result.unknown_types == ["blk.1.attn_q.weight"]
    assert "does not know" in result.summary()
    layout = read_layout(out)
    entry = layout.tensor("blk.1.attn_q.weight")
    assert entry is not None and entry.type_id == 200
    with open(out, "rb") as f:
        f.seek(layout.data_start + entry.offset)
        assert f.read(len(original)) == original


def test_truncated_and_non_gguf_files(work: dict[str, Any], tmp_path: Path) -> None:
    data = (work["root"] / "base.gguf").read_bytes()
    layout = read_layout(work["root"] / "base.gguf")
    for cut in (100, layout.data_start + 1000, len(data) - 10):  # header, data, last tensor
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(InputError, match="truncated"):
            patch(bad, work["plan"], tmp_path / "out.gguf")
    text = tmp_path / "notes.gguf"
    text.write_text("not a model\n")
    with pytest.raises(InputError, match="not a GGUF"):
        patch(text, work["plan"], tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_plan_and_file_mismatch(work: dict[str, Any], tmp_path: Path) -> None:
    base = work["root"] / "base.gguf"
    for fp, what in (
        (Fingerprint("llama", 128, N_LAYERS), "hidden size 128 vs file's 256"),
        (Fingerprint("llama", HIDDEN, 3), "layer count 3 vs file's 2"),
        (Fingerprint("qwen3", HIDDEN, N_LAYERS), "is arch llama"),
    ):
        plan = write_plan(tmp_path / f"{fp.architecture}{fp.hidden_size}{fp.num_layers}", fp, [1])
        with pytest.raises(PlanMismatchError, match=what):
            patch(base, plan, tmp_path / "out.gguf")


def test_no_bias_slot_points_to_cvec(tmp_path: Path) -> None:
    """qwen3 (loader refuses extra tensors) and a mixture-of-experts llama: use a control
    vector with the unsteered file."""
    qwen = craft_gguf(tmp_path / "qwen3.gguf", "qwen3")
    moe = craft_gguf(tmp_path / "moe.gguf", "llama", extra={"{arch}.expert_count": 8})
    for path, arch in ((qwen, "qwen3"), (moe, "llama")):
        plan = write_plan(tmp_path / arch, Fingerprint(arch, HIDDEN, N_LAYERS), [1])
        with pytest.raises(UnsupportedError, match="steerbake cvec") as e:
            patch(path, plan, tmp_path / "out.gguf")
        assert "\n" not in str(e.value)


def test_granite_bias_is_divided_by_residual_scale(tmp_path: Path) -> None:
    """Granite scales the MLP output by residual_scale: the bias holds v / residual_scale."""
    base = craft_gguf(tmp_path / "granite.gguf", "granite", extra={"{arch}.residual_scale": 0.25})
    plan = write_plan(tmp_path / "plan", Fingerprint("granite", HIDDEN, N_LAYERS), [1])
    patch(base, plan, tmp_path / "out.gguf")
    got = np.frombuffer(tensor_bytes(tmp_path / "out.gguf")["blk.1.ffn_down.bias"][1], np.float32)
    np.testing.assert_allclose(got, plan_vectors(plan)[1] / 0.25, rtol=1e-6)


def test_output_equal_to_input_and_already_steered(work: dict[str, Any]) -> None:
    root, plan = work["root"], work["plan"]
    before = (root / "base.gguf").read_bytes()
    with pytest.raises(OutputError, match="is the input"):
        patch(root / "base.gguf", plan, root / "base.gguf", overwrite=True)
    assert (root / "base.gguf").read_bytes() == before
    with pytest.raises(InputError, match="already steered"):
        patch(root / "patched.gguf", plan, root / "twice.gguf")
    with pytest.raises(OutputError, match="already exists"):
        patch(root / "base.gguf", plan, root / "baked.gguf")


def test_not_enough_disk_space(
    work: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = shutil.disk_usage

    def tiny_disk(path: Any) -> Any:
        usage = real(path)
        return type(usage)(usage.total, usage.total - 1000, 1000)

    monkeypatch.setattr(shutil, "disk_usage", tiny_disk)
    with pytest.raises(OutputError, match="not enough disk space"):
        patch(work["root"] / "base.gguf", work["plan"], tmp_path / "out.gguf")
    with pytest.raises(OutputError, match="not enough disk space"):
        run_quantize(work["root"] / "base.gguf", tmp_path / "q.gguf", "Q8_0")
    assert list(tmp_path.iterdir()) == []


def test_quantize_bad_input(work: dict[str, Any], tmp_path: Path) -> None:
    root = work["root"]
    with pytest.raises(InputError, match="choose Q8_0 or Q4_K_M"):
        run_quantize(root / "base.gguf", tmp_path / "q.gguf", "Q3_K")
    run_quantize(root / "base.gguf", tmp_path / "q8.gguf", "Q8_0")
    with pytest.raises(InputError, match="already quantized"):
        run_quantize(tmp_path / "q8.gguf", tmp_path / "q4.gguf", "Q4_K_M")
    (tmp_path / "cut.gguf").write_bytes((root / "base.gguf").read_bytes()[:5000])
    with pytest.raises(InputError, match="truncated"):
        run_quantize(tmp_path / "cut.gguf", tmp_path / "q4.gguf", "Q4_K_M")
    with pytest.raises(OutputError, match="is the input"):
        run_quantize(tmp_path / "q8.gguf", tmp_path / "q8.gguf", "Q8_0", overwrite=True)
    incomplete = craft_gguf(tmp_path / "incomplete.gguf", "llama")  # no head counts, vocab
    with pytest.raises(InputError, match="could not quantize") as e:
        run_quantize(incomplete, tmp_path / "q4.gguf", "Q4_K_M")
    print(e.value)
    assert not (tmp_path / "q4.gguf").exists()


# --------------------------------------------------------------------------- CLI
def test_cli_patch_and_quantize(work: dict[str, Any], tmp_path: Path) -> None:
    root = work["root"]
    plan_path = root / "plan" / "plan.json"
    q8 = tmp_path / "q8.gguf"
    proc = run_cli("quantize", str(root / "base.gguf"), str(q8), "--type", "Q8_0", check=True)
    assert "Q8_0" in proc.stdout
    out = tmp_path / "steered-q8.gguf"
    proc = run_cli(
        "gguf", "--base-gguf", str(q8), "--plan", str(plan_path), "-o", str(out), check=True
    )
    assert "ffn_down.bias" in proc.stdout and out.is_file()
    assert tensor_bytes(out)["blk.1.ffn_down.bias"][0] == "F32"
    bad = run_cli(
        "gguf",
        "--base-gguf",
        str(plan_path),
        "--plan",
        str(plan_path),
        "-o",
        str(tmp_path / "x.gguf"),
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "not a GGUF" in bad.stderr
    for extra, message in (
        ([], "needs --plan"),
        (["--plan", str(plan_path), str(work["model"])], "not both"),
        (["--plan", str(plan_path), "--type", "F16"], "--type does not apply"),
    ):
        bad = run_cli("gguf", "--base-gguf", str(q8), "-o", str(tmp_path / "y.gguf"), *extra)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr


def test_patched_bf16_plan_verifies_like_the_bias_bake(
    llama_tied_bf16_sharded_dir: Path, tmp_path: Path
) -> None:
    """The plan records the dtype its vectors round to (the bf16 checkpoint's), so the GGUF
    patched from it holds the values the bias bake and the hook reference hold: verify
    passes on the project's own output (it failed by ~1e-2 when the patch kept float32)."""
    from bake.model.checkpoint import open_checkpoint

    model = llama_tied_bf16_sharded_dir
    ckpt = open_checkpoint(model)
    raw = random_raw_vectors(ckpt.hidden_size, list(range(ckpt.num_layers)))
    vecs = SteeringVectors.from_raw(raw, ckpt.fingerprint, rounding=ckpt.dtype)
    vecs.save(tmp_path / "v.safetensors")
    plan = make_plan(tmp_path / "v.safetensors", [1, 2], -0.4)
    assert plan.rounding == "BF16"
    plan.save(tmp_path / "plan.json")
    convert(model, tmp_path / "base.gguf", "F32")
    patch(tmp_path / "base.gguf", tmp_path / "plan.json", tmp_path / "patched.gguf")
    proc = run_cli(
        "verify", str(model), str(tmp_path / "plan.json"), str(tmp_path / "patched.gguf")
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
