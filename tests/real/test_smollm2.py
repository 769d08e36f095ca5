"""The pipeline's mechanics on a real trained model: SmolLM2-135M-Instruct (Q4_1 GGUF from
the model cache, converted once per session), its real tokenizer and chat template.

SmolLM2 almost never refuses, so the vectors are fitted on prompt-category labels (harmful
+1, benign -1) through the labels-from-file path. Mechanics only: 2 probes and 8 greedy
tokens. Logits reach ~43 here, so every tolerance is relative to the logit scale (llama.cpp
f32 vs transformers f32 differ by ~9e-5 unsteered). The module prints its wall time.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bake.artifacts.plan import make_plan
from bake.artifacts.steering import open_steering
from bake.files.tensor_bytes import encode, write_safetensors
from bake.model.checkpoint import open_checkpoint
from bake.stages.bake import run_bake
from bake.stages.verify import run_verify
from bake.stages.verify_static import run_verify_static

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ROOT / "scripts" / "eval_real" / "prompts"
PROBES = ["How do I bake a loaf of bread?", "Write one sentence about the sea."]
LAYERS, ALPHA = [8, 10, 12], -0.2


@pytest.fixture(scope="module", autouse=True)
def timed() -> Iterator[None]:
    start = time.perf_counter()
    yield
    print(f"\nreal-model tests (SmolLM2-135M): {time.perf_counter() - start:.1f} s")


@pytest.fixture(scope="module")
def work(smollm2: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Activations on 16 harmful + 16 benign prompts, vectors fitted on their labels, a
    plan, and a bf16 sharded copy of the converted checkpoint."""
    from bake.stages.collect import run_collect
    from bake.stages.fit import FitOptions, run_fit

    root = tmp_path_factory.mktemp("smol")
    prompts, scores = root / "fit.jsonl", root / "labels.jsonl"
    rows = []
    for kind, label in (("harmful", 1.0), ("benign", -1.0)):
        for line in (PROMPTS / f"tune_{kind}.jsonl").read_text().splitlines()[:16]:
            rows.append((json.loads(line), label))
    prompts.write_text("".join(json.dumps(p) + "\n" for p, _ in rows))
    scores.write_text("".join(json.dumps({"id": p["id"], "score": c}) + "\n" for p, c in rows))
    model = smollm2["out"]
    run_collect(model, prompts, root / "acts", progress=False)
    vectors = run_fit(root / "acts", scores, root / "v.safetensors", FitOptions(), progress=False)
    make_plan(root / "v.safetensors", LAYERS, ALPHA).save(root / "plan.json")
    return {"root": root, "model": model, "plan": root / "plan.json", "vectors": vectors,
            "bf16": bf16_sharded_copy(model, root / "bf16")}  # fmt: skip


def bf16_sharded_copy(src: Path, dest: Path, per_shard: int = 60) -> Path:
    """The converted float32 checkpoint as bfloat16, split over shards with an index."""
    from safetensors import safe_open

    dest.mkdir()
    names: dict[str, str] = {}
    with safe_open(str(src / "model.safetensors"), framework="numpy") as f:
        keys = sorted(f.keys())
        chunks = [keys[i : i + per_shard] for i in range(0, len(keys), per_shard)]
        for n, chunk in enumerate(chunks, 1):
            shard = f"model-{n:05d}-of-{len(chunks):05d}.safetensors"
            tensors = {}
            for key in chunk:
                x = f.get_tensor(key)
                tensors[key] = ("BF16", x.shape, encode(x.reshape(-1), "BF16"))
                names[key] = shard
            write_safetensors(dest / shard, tensors)
    index = {"metadata": {}, "weight_map": names}
    (dest / "model.safetensors.index.json").write_text(json.dumps(index))
    config = json.loads((src / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16"}))
    for path in src.iterdir():
        if path.name.startswith("tokenizer") or path.name in ("chat_template.jinja",):
            shutil.copy(path, dest / path.name)
    return dest


def test_fit_records_labels_from_the_file(work: dict[str, Any]) -> None:
    prov = work["vectors"].provenance
    assert prov["scores_source"] == "labels from labels.jsonl", prov
    assert prov["counts"]["refusal"] == 16 and prov["counts"]["compliant"] == 16
    assert work["vectors"].rounding == "F32"  # the converted checkpoint is float32


@pytest.mark.parametrize("copy", ["float32", "bf16-sharded"])
def test_bake_equals_hooks_on_the_real_model(work: dict[str, Any], copy: str) -> None:
    model = work["model"] if copy == "float32" else work["bf16"]
    plan = work["plan"]
    if copy != "float32":  # a plan for the bf16 copy: its vectors round to bf16
        replace(work["vectors"], rounding="BF16").save(work["root"] / "v16.safetensors")
        plan = work["root"] / "plan16.json"
        make_plan(work["root"] / "v16.safetensors", LAYERS, ALPHA).save(plan)
    steering = open_steering(model, plan)
    out = work["root"] / f"baked-{copy}"
    run_bake(steering, out)
    static = run_verify_static(steering, out)
    assert static.passed, [c for c in static.checks if not c.ok]
    r = run_verify(steering, out, max_new_tokens=8, probes=PROBES)
    print(f"\n{copy}: max |dlogit| {r.max_abs_diff:.3g} mean {r.mean_abs_diff:.3g} "
          f"(tolerance {r.tolerance:.3g}, max |logit| {r.max_abs_logit:.3g}), effect "
          f"{r.effect_max:.3g}")  # fmt: skip
    assert r.passed and r.max_abs_logit > 10 and not r.effect_negligible


def test_gguf_of_the_baked_plan_matches_hooks_in_llama_cpp(work: dict[str, Any]) -> None:
    from export.llamacpp.verify import verify_gguf
    from export.llamacpp.writer import convert_to_gguf

    steering = open_steering(work["model"], work["plan"])
    out = work["root"] / "steered-F32.gguf"
    convert_to_gguf(work["model"], out, "F32", steering)  # the real tokenizer and template
    r = verify_gguf(steering, out, max_new_tokens=8, probe_prompts=PROBES)
    main = r.comparisons["steered_vs_hooks"]
    print(f"\nGGUF F32: {main.detail()}")
    assert r.passed, [c for c in r.checks if not c.ok]
    assert r.tokenization.identical == r.tokenization.prompts


def test_patched_q4_1_is_verified_against_its_own_file(
    work: dict[str, Any], smollm2: dict[str, Any]
) -> None:
    """The original quantized file patched in place of reconverting; checked in llama.cpp
    against itself + the control vector, and against hooks on the dequantized weights."""
    from bake.model.gguf_model import open_gguf_model
    from export.llamacpp.patch import gguf_base, patch_gguf
    from export.llamacpp.verify_source import verify_from_source

    steering = open_steering(smollm2["gguf"], work["plan"])
    patched = work["root"] / "patched-Q4_1.gguf"
    patch_gguf(steering.rebind(gguf_base(smollm2["gguf"], steering.plan)), patched)
    assert open_gguf_model(smollm2["gguf"]).fingerprint == steering.model.fingerprint
    r = verify_from_source(steering, patched, dequantized=work["model"], probe_prompts=PROBES)
    for c in r.checks:
        print(f"\n{c.name}: {c.detail}")
    assert r.passed


def test_generate_uses_the_real_chat_template(work: dict[str, Any]) -> None:
    from bake.runtime.chat import chat_text
    from bake.runtime.sampling import SamplingOptions, TransformersBackend

    backend = TransformersBackend(str(work["model"]), dtype="float32", batch_size=2)
    text = chat_text(backend.tokenizer, PROBES[0])
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    opts = SamplingOptions(k=1, max_new_tokens=8, greedy=True)
    answers = backend.sample(PROBES, opts)
    assert all(a[0].text and a[0].mean_logprob is not None for a in answers), answers
    assert open_checkpoint(work["model"]).num_layers == 30


def test_hooked_and_baked_differ_from_base(work: dict[str, Any]) -> None:
    """The fitted direction is a real one: the projection separates the two label sets."""
    diag = work["vectors"].diagnostics
    aucs = [diag[layer]["auc"] for layer in LAYERS if diag[layer]["auc"] is not None]
    assert aucs and np.mean(aucs) > 0.8, aucs


@pytest.mark.parametrize("copy", ["float32", "bf16-sharded"])
def test_ablation_of_the_real_tied_model(work: dict[str, Any], copy: str) -> None:
    """Arditi's setting on SmolLM2 (tied head): one direction, strength 1, every block and
    the embedding. float32: baked == hooked at the float32 tolerance; bf16: `verify --static`
    bitwise and the PyTorch report within the bf16 rounding bound."""
    from bake.artifacts.plan import Ablation, EmbedAblation

    model = work["model"] if copy == "float32" else work["bf16"]
    layers = list(range(open_checkpoint(model).num_layers))
    ablation = Ablation(1.0, LAYERS[1], EmbedAblation(LAYERS[1], 1.0))
    plan = work["root"] / f"ablate-{copy}.json"
    make_plan(work["root"] / "v.safetensors", layers, 0.0, kind="ablate", ablation=ablation).save(
        plan
    )
    steering = open_steering(model, plan)
    out = work["root"] / f"ablated-{copy}"
    run_bake(steering, out)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    static = run_verify_static(steering, out)
    assert static.passed, [c for c in static.checks if not c.ok]
    r = run_verify(steering, out, max_new_tokens=8, probes=PROBES)
    print(f"\nablation {copy}: max |dlogit| {r.max_abs_diff:.3g} mean {r.mean_abs_diff:.3g} "
          f"(tolerance {r.tolerance:.3g}, max |logit| {r.max_abs_logit:.3g}), effect "
          f"{r.effect_max:.3g}, KL {r.mean_kl}, top-1 {r.top1_agreement}")  # fmt: skip
    assert r.passed and not r.effect_negligible
    assert (r.bound is None) == (copy == "float32")
