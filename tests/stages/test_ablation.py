"""Ablation (weight orthogonalisation): the plan's kind, hooks on the residual writers as the
reference, the streaming bake, its proofs (float32: baked == hooked; 16-bit: bitwise static
recomputation plus a report against the dtype's rounding bound), tied heads, families, and
Arditi et al.'s residual-stream ablation as a second reference. Numeric checks print max and
mean |delta logit|."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bake.artifacts.plan import FORMAT, FORMAT_ABLATION, Ablation, EmbedAblation, Plan, make_plan
from bake.artifacts.steering import open_steering
from bake.artifacts.vectors import SteeringVectors
from bake.errors import InputError, UnsupportedError
from bake.model.checkpoint import open_checkpoint
from bake.model.fingerprint import Fingerprint
from bake.stages.verify import REL_TOLERANCE
from tests.conftest import run_cli, tree_digest
from tests.pipeline import bake_model, verify_baked, verify_static
from tests.tiny_models import random_raw_vectors

MAX_NEW = 8  # greedy tokens per probe: enough to see a divergence, cheap on 1 core


# --------------------------------------------------------------------------- fixtures
def _moe(folder: Path, family: str) -> Path:
    """A tiny mixture of experts (4 experts, 2 active) saved by transformers itself."""
    import torch
    import transformers

    from tests.tiny_models import build_tokenizer

    tok = build_tokenizer(folder)
    common = dict(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        eos_token_id=4, pad_token_id=0, bos_token_id=None, tie_word_embeddings=False,
    )  # fmt: skip
    if family == "mixtral":
        config: Any = transformers.MixtralConfig(**common, num_local_experts=4)
    else:
        config = transformers.Qwen3MoeConfig(
            **common, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, head_dim=16
        )
    torch.manual_seed(3)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.08)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def moe_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("moe")
    return {f: _moe(root / f, f) for f in ("qwen3_moe", "mixtral")}


def vectors_for(model: Path, folder: Path, seed: int = 1) -> Path:
    """Random vectors for every layer of `model`, saved in `folder`."""
    ckpt = open_checkpoint(model)
    fp = Fingerprint(ckpt.model_type, ckpt.hidden_size, ckpt.num_layers)
    raw = random_raw_vectors(ckpt.hidden_size, list(range(ckpt.num_layers)), seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    SteeringVectors.from_raw(raw, fp).save(folder / "vectors.safetensors")
    return folder / "vectors.safetensors"


def ablation_plan(
    model: Path,
    folder: Path,
    layers: list[int],
    *,
    kind: str = "ablate",
    strength: float = 1.0,
    direction_layer: int | None = None,
    embed: float | None = None,
    alpha: float = 0.0,
) -> Path:
    vectors = vectors_for(model, folder)
    source = direction_layer if direction_layer is not None else min(layers)
    ablation = Ablation(
        strength, direction_layer, EmbedAblation(source, embed) if embed is not None else None
    )
    plan = make_plan(vectors, layers, alpha, kind=kind, ablation=ablation)
    plan.save(folder / "plan.json")
    return folder / "plan.json"


def assert_passed(report: dict[str, Any], what: str) -> None:
    print(
        f"{what}: max |dlogit| {report['max_abs_diff']:.3g} mean {report['mean_abs_diff']:.3g} "
        f"tolerance {report['tolerance']:.3g} effect {report['effect_max']:.3g}"
    )
    assert report["passed"], (
        f"{what}: baked != hooked: max |dlogit| {report['max_abs_diff']:.3g}, mean "
        f"{report['mean_abs_diff']:.3g}, tolerance {report['tolerance']:.3g}, greedy "
        f"{report['greedy_identical']}/{report['prompts']}"
    )
    assert not report["effect_negligible"], "the plan should visibly change the model"


# --------------------------------------------------------------------------- the plan
def test_plan_kinds_round_trip_and_refuse_contradictions(llama_dir: Path, tmp_path: Path) -> None:
    path = ablation_plan(llama_dir, tmp_path / "a", [1, 2], direction_layer=2, embed=0.5)
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT_ABLATION and data["kind"] == "ablate" and "alpha" not in data
    plan = Plan.load(path)
    assert plan.ablation == Ablation(1.0, 2, EmbedAblation(2, 0.5))
    assert plan.vector_layers() == [2]  # one direction everywhere: only its vector is read
    vectors = path.parent / "vectors.safetensors"
    added = make_plan(vectors, [1], -0.2)
    assert added.to_json()["format"] == FORMAT and "kind" not in added.to_json()
    with pytest.raises(InputError, match="adds nothing"):
        make_plan(vectors, [1], -0.2, kind="ablate")
    with pytest.raises(InputError, match="out of range: use 0 to 2"):
        make_plan(vectors, [1], 0.0, kind="ablate", ablation=Ablation(2.5))
    with pytest.raises(InputError, match="no ablation entry"):
        make_plan(vectors, [1], -0.2, ablation=Ablation())


def test_plan_cli_writes_each_kind_and_refuses_bad_input_in_one_line(
    llama_dir: Path, tmp_path: Path
) -> None:
    vectors = vectors_for(llama_dir, tmp_path)
    ok = run_cli(
        "plan", str(vectors), "--kind", "both", "--layers", "1-3", "--alpha", "-0.2",
        "--strength", "0.8", "--embed", "-o", str(tmp_path / "both.json"), check=True,
    )  # fmt: skip
    assert "both layers 1-3, alpha -0.2, strength 0.8" in ok.stdout
    assert "embedding along layer 1's at 0.8" in ok.stdout
    plan = Plan.load(tmp_path / "both.json")
    assert plan.kind == "both" and plan.ablation == Ablation(0.8, None, EmbedAblation(1, 0.8))
    for args, message in (
        (["--kind", "ablate", "--alpha", "-0.1"], "drop --alpha"),
        (["--kind", "both"], "needs --alpha"),
        (["--alpha", "-0.1", "--strength", "0.5"], "apply to --kind ablate or both"),
    ):
        bad = run_cli("plan", str(vectors), "--layers", "1", *args, "-o", str(tmp_path / "x.json"))
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert not (tmp_path / "x.json").exists()


def test_candidates_in_memory(llama_dir: Path, tmp_path: Path) -> None:
    """What tune needs: ablation candidates from an additive steering, nothing reopened."""
    vectors = vectors_for(llama_dir, tmp_path)
    make_plan(vectors, [1, 2], -0.2).save(tmp_path / "plan.json")
    base = open_steering(llama_dir, tmp_path / "plan.json")
    cand = base.with_ablation([2, 3], 0.7, embed_strength=1.0)
    assert cand.kind == "ablate" and not cand.added and cand.first_changed_block is None
    assert sorted(cand.projections) == [2, 3] and cand.projections[3].strength == 0.7
    u = base.vectors.directions[3].astype(np.float64)
    np.testing.assert_allclose(cand.projections[3].direction, u / np.linalg.norm(u), atol=1e-12)
    assert cand.embed_projection is not None and cand.embed_projection.strength == 1.0
    both = base.with_ablation([1], alpha=-0.3, direction_layer=2)
    assert both.kind == "both" and sorted(both.added) == [1] and both.first_changed_block == 1
    np.testing.assert_array_equal(both.projections[1].direction, cand.projections[2].direction)
    assert cand.with_config([1], 0.0).kind == "ablate"  # with_config keeps the kind
    with pytest.raises(InputError, match="adds nothing"):
        cand.with_config([1], -0.2)


@pytest.mark.parametrize("tag", ["F32", "F16", "BF16"])
def test_chunks_equal_the_formula_for_any_worker_count(
    tag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """writer and embedding chunks = float64 formula rounded by torch (float64 -> float32 ->
    dtype), bitwise, with 1 or 3 workers, chunks smaller than the tensor and blocks smaller
    than a chunk."""
    import torch

    from bake.artifacts import orthogonalise as ortho

    monkeypatch.setattr(ortho, "CHUNK_BYTES", 64 * 1024)  # several chunks per tensor
    monkeypatch.setattr(ortho, "BLOCK_ELEMENTS", 3000)  # writer: 1 row a block; embedding: 46
    torch_dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[tag]
    rng = np.random.default_rng(0)
    w = torch.from_numpy(rng.normal(0, 0.05, (64, 3000))).to(torch_dtype)  # [out, in]
    e = torch.from_numpy(rng.normal(0, 0.05, (700, 64))).to(torch_dtype)  # [vocab, d]
    p = ortho.Projection.of(rng.normal(size=64).astype(np.float32), 0.8)
    r = torch.from_numpy(p.direction)
    want_w = (w.double() - 0.8 * torch.outer(r, r @ w.double())).float().to(torch_dtype)
    want_e = (e.double() - 0.8 * torch.outer(e.double() @ r, r)).float().to(torch_dtype)
    bits = {"F32": torch.int32, "F16": torch.int16, "BF16": torch.int16}[tag]

    def raw(t: Any) -> memoryview:
        return memoryview(t.view(bits).numpy().tobytes())

    assert len(ortho.row_chunks((64, 3000))) > 1 and len(ortho.row_chunks((700, 64))) > 1
    for workers in (1, 3):
        got_w = np.concatenate(
            list(ortho.writer_chunks(raw(w), tag, (64, 3000), p, workers=workers))
        )
        got_e = np.concatenate(
            list(ortho.embedding_chunks(raw(e), tag, (700, 64), p, workers=workers))
        )
        np.testing.assert_array_equal(got_w.view(np.uint8), np.frombuffer(raw(want_w), np.uint8))
        np.testing.assert_array_equal(got_e.view(np.uint8), np.frombuffer(raw(want_e), np.uint8))


def test_rounding_into_buffers_equals_the_allocating_path() -> None:
    """round_bits with out and scratch buffers = without, bitwise, on the awkward values:
    signed zeros, subnormals, ties, the largest finite values, infinities, NaN payloads."""
    from bake.artifacts import orthogonalise as ortho

    awkward = [0, 0x8000_0000, 1, 0x807F_FFFF, 0x3F80_8000, 0x3F81_8000, 0x3F80_7FFF]
    awkward += [0x7F7F_FFFF, 0xFF7F_FFFF, 0x7F80_0000, 0xFF80_0000, 0x7F80_0001, 0xFFFF_FFFF]
    words = np.random.default_rng(3).integers(0, 2**32, 5000, dtype=np.uint64)
    f32 = np.concatenate([np.array(awkward, np.uint64), words]).astype(np.uint32).view("<f4")
    with np.errstate(invalid="ignore"):  # signalling NaNs come out quiet
        values = f32.astype(np.float64)
    for tag, item in (("F32", np.uint32), ("F16", np.uint16), ("BF16", np.uint16)):
        out, scratch = np.empty(values.shape, item), ortho._scratch.words(values.shape)
        want = ortho.round_bits(values, tag)
        got = ortho.round_bits(values, tag, out, scratch)
        assert got is out
        np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------- bake == hooks
@pytest.mark.parametrize(
    ("fixture", "embed"),
    [("llama_dir", None), ("llama_tied_f32_dir", 1.0), ("qwen3_dir", 0.5), ("mistral_dir", None)],
)
def test_float32_ablation_equals_hooks(
    fixture: str, embed: float | None, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    src: Path = request.getfixturevalue(fixture)
    before = tree_digest(src)
    plan = ablation_plan(src, tmp_path / "plan", [0, 2, 3], strength=0.9, embed=embed)
    result = bake_model(src, plan, tmp_path / "baked")
    assert result.route == "ablate"
    report = verify_baked(src, plan, tmp_path / "baked", max_new_tokens=MAX_NEW)
    assert_passed(report, fixture)
    assert report["rel_tolerance"] == REL_TOLERANCE and "bound" not in report
    assert report["greedy_identical"] == report["prompts"]
    assert verify_static(src, plan, tmp_path / "baked")["passed"]
    assert tree_digest(src) == before, "the source folder changed during the bake"


def test_both_on_llama_is_orthogonalised_weights_plus_bias(
    llama_tied_f32_dir: Path, tmp_path: Path
) -> None:
    src = llama_tied_f32_dir
    plan = ablation_plan(src, tmp_path / "plan", [1, 2], kind="both", alpha=-0.4, embed=1.0)
    assert bake_model(src, plan, tmp_path / "baked").route == "ablate+bias"
    config = json.loads((tmp_path / "baked" / "config.json").read_text())
    assert config["mlp_bias"] is True and config["tie_word_embeddings"] is False
    assert_passed(verify_baked(src, plan, tmp_path / "baked", max_new_tokens=MAX_NEW), "both")
    static = verify_static(src, plan, tmp_path / "baked")
    assert static["passed"], [c for c in static["checks"] if not c["ok"]]


def test_a_wrong_plan_fails_both_checks(llama_tied_f32_dir: Path, tmp_path: Path) -> None:
    src = llama_tied_f32_dir
    plan = ablation_plan(src, tmp_path / "p1", [1, 2], embed=1.0)
    other = ablation_plan(src, tmp_path / "p2", [1, 2], strength=0.95, embed=1.0)
    bake_model(src, plan, tmp_path / "baked")
    report = verify_baked(src, other, tmp_path / "baked", max_new_tokens=2)
    assert not report["passed"] and report["max_abs_diff"] > report["tolerance"]
    static = {c["name"]: c["ok"] for c in verify_static(src, other, tmp_path / "baked")["checks"]}
    assert not static[
        "orthogonalised tensors equal their recomputation (float64 -> float32 -> F32)"
    ]
    assert static["unchanged tensors byte-identical"]


def test_static_catches_one_changed_byte(llama_tied_bf16_sharded_dir: Path, tmp_path: Path) -> None:
    src = llama_tied_bf16_sharded_dir
    plan = ablation_plan(src, tmp_path / "plan", [2])
    bake_model(src, plan, tmp_path / "baked")
    baked = open_checkpoint(tmp_path / "baked")
    target = baked.tensors["model.layers.2.mlp.down_proj.weight"]
    header = baked.headers[target.shard]
    offset = header.data_start + header.tensors[target.name]["data_offsets"][0] + 1000
    path = tmp_path / "baked" / target.shard
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01  # one mantissa bit of one bf16 weight
    path.write_bytes(bytes(data))
    report = verify_static(src, plan, tmp_path / "baked")
    failed = [c["name"] for c in report["checks"] if not c["ok"]]
    assert failed == [
        "orthogonalised tensors equal their recomputation (float64 -> float32 -> BF16)"
    ]


# --------------------------------------------------------------------------- 16-bit and streaming
def test_bf16_proof_is_static_and_pytorch_is_held_to_the_rounding_bound(
    llama_tied_bf16_sharded_dir: Path, tmp_path: Path
) -> None:
    src = llama_tied_bf16_sharded_dir
    plan = ablation_plan(src, tmp_path / "plan", [0, 1, 2, 3], embed=1.0)
    bake_model(src, plan, tmp_path / "baked")
    static = verify_static(src, plan, tmp_path / "baked")
    assert static["passed"], [c for c in static["checks"] if not c["ok"]]
    report = verify_baked(src, plan, tmp_path / "baked", max_new_tokens=MAX_NEW)
    m = 9  # 4 blocks x (o_proj, down_proj) + the embedding
    bound = np.sqrt(m) * 2.0**-8
    print(f"bf16: mean KL {report['mean_kl']:.3g}, top-1 {report['top1_agreement']:.4f}")
    assert report["rel_tolerance"] == pytest.approx(bound) and "m = 9" in report["bound"]
    assert report["max_abs_diff"] > REL_TOLERANCE * max(1, report["max_abs_logit"]), (
        "rounding whole bf16 matrices should exceed the float32 tolerance (else the bound is moot)"
    )
    assert_passed(report, "bf16")
    assert report["mean_kl"] < 1e-3 and report["top1_agreement"] > 0.98


def test_bf16_values_equal_an_independent_torch_recomputation(
    llama_tied_bf16_sharded_dir: Path, tmp_path: Path
) -> None:
    """W' = (I - a r r^T) W and E' = E (I - a r r^T) in float64 by torch, rounded by torch
    (float64 -> float32 -> bfloat16): bitwise equal to what the bake wrote."""
    import torch
    from safetensors.torch import load_file

    src = llama_tied_bf16_sharded_dir
    plan = ablation_plan(src, tmp_path / "plan", [1], strength=0.7, direction_layer=3, embed=1.0)
    bake_model(src, plan, tmp_path / "baked")
    u = torch.from_numpy(SteeringVectors.load(tmp_path / "plan" / "vectors.safetensors")
                         .directions[3].astype(np.float64))  # fmt: skip
    r = u / u.norm()

    def tensor(folder: Path, name: str) -> Any:
        ckpt = open_checkpoint(folder)
        return load_file(str(folder / ckpt.tensors[name].shard))[name]

    cases = [("model.layers.1.self_attn.o_proj.weight", 0.7), ("model.embed_tokens.weight", 1.0)]
    for name, a in cases:
        w = tensor(src, name).double()
        embedding = "embed" in name
        want = w - a * (torch.outer(w @ r, r) if embedding else torch.outer(r, r @ w))
        want = want.float().to(torch.bfloat16)
        got = tensor(tmp_path / "baked", name)
        assert torch.equal(got.view(torch.int16), want.view(torch.int16)), name
    head = tensor(tmp_path / "baked", "lm_head.weight")
    assert torch.equal(
        head.view(torch.int16), tensor(src, "model.embed_tokens.weight").view(torch.int16)
    )


def test_only_shards_holding_changed_tensors_are_rewritten(
    llama_tied_bf16_sharded_dir: Path, tmp_path: Path
) -> None:
    src = llama_tied_bf16_sharded_dir
    plan = ablation_plan(src, tmp_path / "plan", [3])
    bake_model(src, plan, tmp_path / "baked")
    ckpt, baked = open_checkpoint(src), open_checkpoint(tmp_path / "baked")
    writers = ("self_attn.o_proj", "mlp.down_proj")
    changed = {ckpt.tensors[f"model.layers.3.{m}.weight"].shard for m in writers}
    assert baked.shards == ckpt.shards and len(changed) < len(ckpt.shards)
    for shard in ckpt.shards:
        same = (src / shard).read_bytes() == (tmp_path / "baked" / shard).read_bytes()
        assert same == (shard not in changed), shard
        assert list(baked.headers[shard].tensors) == list(ckpt.headers[shard].tensors), shard
    record = json.loads((tmp_path / "baked" / "steering" / "bake.json").read_text())
    assert sorted(record["rewritten_shards"]) == sorted(changed) and not record["untied_head"]
    assert baked.config == ckpt.config  # the embedding is untouched: the head stays tied


def test_untied_head_loads_cleanly_and_keeps_the_original_embedding(
    llama_tied_bf16_sharded_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    src = llama_tied_bf16_sharded_dir
    plan = ablation_plan(src, tmp_path / "plan", [1], embed=1.0)
    bake_model(src, plan, tmp_path / "baked", link=True)
    model, info = AutoModelForCausalLM.from_pretrained(tmp_path / "baked", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert model.config.tie_word_embeddings is False
    head, embed = model.lm_head.weight, model.model.embed_tokens.weight
    assert head.data_ptr() != embed.data_ptr() and not bool((head == embed).all())
    ckpt = open_checkpoint(tmp_path / "baked")
    assert ckpt.tensors["lm_head.weight"].shard == ckpt.tensors["model.embed_tokens.weight"].shard


# --------------------------------------------------------------------------- families
@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_moe_is_exact_when_every_expert_is_orthogonalised(
    family: str, moe_dirs: dict[str, Path], tmp_path: Path
) -> None:
    src = moe_dirs[family]
    plan = ablation_plan(src, tmp_path / "plan", [0, 1, 2])
    assert bake_model(src, plan, tmp_path / "baked").route == "ablate"
    assert_passed(verify_baked(src, plan, tmp_path / "baked", max_new_tokens=MAX_NEW), family)
    record = json.loads((tmp_path / "baked" / "steering" / "bake.json").read_text())
    assert record["rewritten_tensors"] == 3 * (1 + 4)  # o_proj + 4 experts' down projections


def test_moe_missing_an_expert_is_refused(moe_dirs: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from safetensors.numpy import load_file, save_file

    src = tmp_path / "model"
    shutil.copytree(moe_dirs["qwen3_moe"], src)
    tensors = load_file(str(src / "model.safetensors"))
    del tensors["model.layers.1.mlp.experts.2.down_proj.weight"]
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    plan = ablation_plan(src, tmp_path / "plan", [1])
    with pytest.raises(InputError, match=r"block 1 has the residual writers .* not be exact"):
        bake_model(src, plan, tmp_path / "baked")


def test_norm_after_the_writers_is_hooks_only(gemma3_dir: Path, tmp_path: Path) -> None:
    from bake.stages.inspect_model import render_description, run_inspect

    plan = ablation_plan(gemma3_dir, tmp_path / "plan", [1])
    with pytest.raises(UnsupportedError, match=r"cannot be orthogonalised exactly .* hooks"):
        bake_model(gemma3_dir, plan, tmp_path / "baked")
    text = render_description(run_inspect(str(gemma3_dir)))
    assert "ablation     hooks only: a norm with a gain follows the writers" in text
    # the hooks themselves run (on the norms' outputs) and change the model
    steering = open_steering(gemma3_dir, plan)
    assert _hooked_effect(gemma3_dir, steering) > 1e-2


def _hooked_effect(model_dir: Path, steering: Any) -> float:
    import torch

    from bake.runtime.hooks import hooked
    from bake.runtime.loader import load_model

    model = load_model(model_dir, dtype="float32")
    ids = torch.tensor([[5, 9, 30, 41, 7]])
    with torch.no_grad():
        base = model(ids).logits
        with hooked(model, steering):
            steered = model(ids).logits
    return float((steered - base).abs().max())


def test_both_without_a_bias_slot_is_refused_in_one_line(qwen3_dir: Path, tmp_path: Path) -> None:
    plan = ablation_plan(qwen3_dir, tmp_path / "plan", [1], kind="both", alpha=-0.2)
    out = run_cli("bake", str(qwen3_dir), str(plan), "-o", str(tmp_path / "baked"))
    assert out.returncode == 2 and "no bias slot" in out.stderr and "steerbake gguf" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "baked").exists()


# --------------------------------------------------------------------------- Arditi et al.
def _arditi_hooks(model: Any, r: Any) -> list[Any]:
    """Residual-stream ablation h <- h - r r^T h at every block's input (the embedding is
    block 0's), after its attention (the middle) and after its MLP (each block's output is
    the next one's input; the last one's is the end, before the final norm)."""

    def project(h: Any) -> Any:
        return h - (h @ r)[..., None] * r

    def pre(module: Any, args: Any, kwargs: Any) -> Any:
        if args:
            return (project(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": project(kwargs["hidden_states"])}

    def post(module: Any, args: Any, out: Any) -> Any:
        return (project(out[0]), *out[1:]) if isinstance(out, tuple) else project(out)

    handles = []
    for block in model.model.layers:
        handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(block.self_attn.register_forward_hook(post))  # y_attn: h_mid = h + y
        handles.append(block.mlp.register_forward_hook(post))
    handles.append(model.model.norm.register_forward_pre_hook(pre, with_kwargs=True))
    return handles


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_module_output_ablation_equals_arditi_only_in_its_setting(
    strength: float, llama_dir: Path, tmp_path: Path
) -> None:
    """a = 1, one direction, every layer and the embedding: the baked model equals the
    residual-stream ablation within the float32 tolerance; at a = 0.5 it does not."""
    import torch

    from bake.runtime.loader import load_model

    plan = ablation_plan(
        llama_dir, tmp_path / "plan", [0, 1, 2, 3], strength=strength, direction_layer=2,
        embed=strength,
    )  # fmt: skip
    bake_model(llama_dir, plan, tmp_path / "baked")
    u = SteeringVectors.load(tmp_path / "plan" / "vectors.safetensors").directions[2]
    r = torch.from_numpy(u.astype(np.float64) / np.linalg.norm(u.astype(np.float64))).float()
    ids = torch.tensor([[5, 9, 30, 41, 7, 100, 3, 64]])
    base = load_model(llama_dir, dtype="float32")
    with torch.no_grad():
        handles = _arditi_hooks(base, r)
        arditi = base(ids).logits
        for h in handles:
            h.remove()
        baked = load_model(tmp_path / "baked", dtype="float32")(ids).logits
        effect = float((arditi - base(ids).logits).abs().max())
    diff = (baked - arditi).abs()
    tol = REL_TOLERANCE * max(1.0, float(arditi.abs().max()))
    print(f"a={strength}: baked vs Arditi max {diff.max():.3g} mean {diff.mean():.3g}, "
          f"tolerance {tol:.3g}, effect {effect:.3g}")  # fmt: skip
    assert effect > 100 * tol
    if strength == 1.0:
        assert float(diff.max()) <= tol, f"max {diff.max():.3g} mean {diff.mean():.3g}"
    else:
        assert float(diff.max()) > 10 * tol, "at a != 1 the two forms should differ"
