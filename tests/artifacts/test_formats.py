"""Vector file, plan, tensor bytes and architecture table: no model needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bake.artifacts.plan import Plan, format_layers, make_plan, parse_layers
from bake.artifacts.steering import open_plan_only
from bake.artifacts.vectors import SteeringVectors, read_raw_vectors
from bake.errors import InputError, PlanMismatchError, UnsupportedError
from bake.files.tensor_bytes import round_to
from bake.model.arch import ARCHITECTURES, arch_spec
from bake.model.fingerprint import Fingerprint

FP = Fingerprint("llama", 8, 4)


def test_parse_and_format_layers() -> None:
    assert parse_layers("1,3-5") == [1, 3, 4, 5]
    assert parse_layers(" 7, 2 ,2") == [2, 7]
    assert format_layers([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    for bad in ("", "a", "5-3", "1,,x"):
        with pytest.raises(InputError):
            parse_layers(bad)


@pytest.mark.parametrize("tag,torch_name", [("BF16", "bfloat16"), ("F16", "float16")])
def test_rounding_matches_torch(tag: str, torch_name: str) -> None:
    import torch

    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.normal(size=5000) * 10.0 ** rng.integers(-6, 4, size=5000),
            [0.0, -0.0, 1.00390625, 1.01171875, 65504.0, 1e-8],
        ]
    ).astype(np.float32)
    want = torch.from_numpy(x).to(getattr(torch, torch_name)).float().numpy()
    got = round_to(x, tag)
    np.testing.assert_array_equal(got, want)


def test_vector_file_round_trip(tmp_path: Path) -> None:
    raw = {1: np.arange(8.0) + 1, 3: -np.ones(8)}
    vecs = SteeringVectors.from_raw(raw, FP, method="md", provenance={"src": "x"})
    vecs.save(tmp_path / "v.safetensors")
    back = SteeringVectors.load(tmp_path / "v.safetensors")
    assert back.layers == [1, 3] and back.method == "md" and back.fingerprint == FP
    for layer, v in raw.items():
        np.testing.assert_allclose(back.vector(layer), v, rtol=1e-6)
        assert abs(np.linalg.norm(back.directions[layer]) - 1) < 1e-6


@pytest.mark.parametrize(
    "bad,match",
    [
        ({1: np.ones(9)}, "hidden size is 8"),
        ({4: np.ones(8)}, "out of range"),
        ({1: np.array([1, np.nan, 0, 0, 0, 0, 0, 0])}, "NaN or Inf"),
        ({1: np.array([1, np.inf, 0, 0, 0, 0, 0, 0])}, "NaN or Inf"),
        ({1: np.zeros(8)}, "all zeros"),
    ],
)
def test_bad_vectors(bad: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        SteeringVectors.from_raw(bad, FP)


def test_read_raw_vectors_formats(tmp_path: Path) -> None:
    import torch
    from safetensors.numpy import save_file

    arr = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    np.save(tmp_path / "a.npy", arr)
    np.savez(tmp_path / "a.npz", **{"0": arr[0], "2": arr[2]})
    save_file({"layers.1": arr[1]}, str(tmp_path / "a.safetensors"))
    torch.save({5: torch.from_numpy(arr[0])}, tmp_path / "a.pt")
    assert sorted(read_raw_vectors(tmp_path / "a.npy")) == [0, 1, 2]
    assert sorted(read_raw_vectors(tmp_path / "a.npz")) == [0, 2]
    np.testing.assert_array_equal(read_raw_vectors(tmp_path / "a.safetensors")[1], arr[1])
    np.testing.assert_array_equal(read_raw_vectors(tmp_path / "a.pt")[5], arr[0])


def test_pickled_pt_is_refused_not_executed(tmp_path: Path) -> None:
    import torch

    class Evil:
        def __reduce__(self) -> tuple:
            return (Path.touch, (tmp_path / "pwned",))

    torch.save({"0": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(InputError, match="cannot read vectors"):
        read_raw_vectors(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def _plan(tmp_path: Path, layers: list[int], alpha: float = -0.2) -> Plan:
    SteeringVectors.from_raw({i: np.ones(8) * (i + 1) for i in range(4)}, FP).save(
        tmp_path / "v.safetensors"
    )
    return make_plan(tmp_path / "v.safetensors", layers, alpha)


def test_plan_round_trip_and_vectors(tmp_path: Path) -> None:
    plan = _plan(tmp_path, [1, 2])
    plan.layer_multipliers = {2: 0.5}
    (tmp_path / "sub").mkdir()
    plan.save(tmp_path / "sub" / "plan.json")
    back = Plan.load(tmp_path / "sub" / "plan.json")
    assert back.vectors_path == "../v.safetensors"
    v = open_plan_only(back).added  # alpha * m_l * s_l * u_l
    np.testing.assert_allclose(v[1], -0.2 * 2 * np.ones(8))
    np.testing.assert_allclose(v[2], -0.2 * 0.5 * 3 * np.ones(8))


@pytest.mark.parametrize(
    "change,match",
    [
        ({"layers": [7]}, "out of range"),
        ({"alpha": float("nan")}, "NaN or Inf"),
        ({"alpha": float("inf")}, "NaN or Inf"),
    ],
)
def test_plan_validation(tmp_path: Path, change: dict, match: str) -> None:
    plan = _plan(tmp_path, [1])
    with pytest.raises(InputError, match=match):
        Plan(**{**plan.__dict__, **change})


def test_plan_for_another_model(tmp_path: Path) -> None:
    plan = _plan(tmp_path, [1])
    with pytest.raises(PlanMismatchError, match="hidden_size 8 vs model's 16"):
        plan.check_model(Fingerprint("llama", 16, 4))


def test_plan_detects_changed_vector_file(tmp_path: Path) -> None:
    plan = _plan(tmp_path, [1])
    plan.save(tmp_path / "plan.json")
    SteeringVectors.from_raw({1: np.ones(8)}, FP).save(tmp_path / "v.safetensors")
    with pytest.raises(PlanMismatchError, match="changed since the plan"):
        Plan.load(tmp_path / "plan.json").load_vectors()


def test_architecture_table() -> None:
    assert arch_spec("llama").hf_route == "bias" and arch_spec("llama").gguf_bias_slot
    assert arch_spec("qwen3").hf_route == "adapter" and not arch_spec("qwen3").gguf_bias_slot
    assert arch_spec("mistral").gguf_arch == "llama"
    assert arch_spec("gemma3_text").hf_route == "none"
    assert {s.hf_route for s in ARCHITECTURES.values()} == {"bias", "adapter", "none"}
    with pytest.raises(UnsupportedError, match=r"supports .*llama.*qwen3"):
        arch_spec("gpt_bigcode")
