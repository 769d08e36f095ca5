"""Inputs that must be refused and outputs that must be JSON (issue 22, items 1, 4e, 4f, 6):
plan layers, vector scales, NaN written as null and read back, `vectors import` of our own
format and without --model."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bake.artifacts.plan import Plan, make_plan
from bake.artifacts.tuning import (
    Candidate,
    Proxy,
    TuneCache,
    TuneResult,
    TuneSettings,
)
from bake.artifacts.vectors import SteeringVectors
from bake.errors import InputError, PlanMismatchError
from bake.model.fingerprint import Fingerprint
from bake.stages.tune import write_report
from bake.stages.vectors import run_vectors_import

FP = Fingerprint("llama", 8, 4)


def _vectors(tmp_path: Path, **kw: object) -> Path:
    path = tmp_path / "v.safetensors"
    SteeringVectors.from_raw({i: np.ones(8) * (i + 1) for i in range(4)}, FP, **kw).save(path)  # type: ignore[arg-type]
    return path


def _plan_json(tmp_path: Path, **change: object) -> Path:
    plan = make_plan(_vectors(tmp_path), [1, 2], -0.2)
    plan.save(tmp_path / "plan.json")
    data = json.loads((tmp_path / "plan.json").read_text()) | change
    (tmp_path / "plan.json").write_text(json.dumps(data))
    return tmp_path / "plan.json"


# --------------------------------------------------------------------------- 4e: refused
@pytest.mark.parametrize(
    "layers, needle",
    [([1, 1], "appear twice"), ([1, 2.5], "not an integer"), ([1, "2"], "not an integer"),
     ([True], "not an integer")],
)  # fmt: skip
def test_plan_layers_must_be_distinct_integers(tmp_path: Path, layers: list, needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        Plan.load(_plan_json(tmp_path, layers=layers))


@pytest.mark.parametrize("scale", [0.0, -1.0, math.nan, math.inf])
def test_vector_scales_must_be_positive_and_finite(tmp_path: Path, scale: float) -> None:
    vectors = SteeringVectors.load(_vectors(tmp_path))
    with pytest.raises(InputError, match="positive and finite"):
        replace(vectors, scales={**vectors.scales, 2: scale})
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(tmp_path / "v.safetensors"))
    tensors["scale.2"] = np.array([scale], np.float32)
    meta = {"steerbake": json.dumps(vectors.metadata())}
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(InputError, match="layer 2's scale"):
        SteeringVectors.load(tmp_path / "bad.safetensors")


# --------------------------------------------------------------------------- 1: scale overflow
def test_import_refuses_a_norm_that_overflows_float32(tmp_path: Path, llama_dir: Path) -> None:
    np.save(tmp_path / "big.npy", np.full((4, 64), 1e38, np.float32))  # |v| = 8e38
    with pytest.raises(InputError, match="norm 8e\\+38 overflows float32"):
        run_vectors_import(tmp_path / "big.npy", llama_dir, tmp_path / "v.safetensors")
    assert not (tmp_path / "v.safetensors").exists()


# --------------------------------------------------------------------------- 4f: NaN -> null
def test_plans_and_vector_files_hold_no_bare_nan(tmp_path: Path) -> None:
    path = _vectors(tmp_path, diagnostics={1: {"pearson_r": math.nan}})
    plan = make_plan(path, [1], -0.2, provenance={"tuning": {"kl": math.nan}})
    plan.save(tmp_path / "plan.json")
    text = (tmp_path / "plan.json").read_text()
    assert "NaN" not in text and json.loads(text)["provenance"]["tuning"]["kl"] is None
    assert SteeringVectors.load(path).diagnostics[1]["pearson_r"] is None
    assert Plan.load(tmp_path / "plan.json").layers == [1]
    json.dumps(plan.to_json(), allow_nan=False)  # as GGUFs record it (steerbake.plan)


def test_tuning_report_and_cache_hold_null_and_read_back(tmp_path: Path) -> None:
    """A candidate whose numbers are NaN (a forward that overflowed) is written as null in
    the report and the cache, and reads back as NaN."""
    stopped = Proxy(Candidate("file", (1,), -0.5), {"sensitive": math.nan}, math.nan, math.nan)
    ok = Proxy(Candidate("file", (1,), -0.1), {"sensitive": 0.2, "harmful": 1.0}, 0.01, 0.02)
    baseline = {"sensitive": 1.0, "harmful": 1.0, "benign": 0.0}
    result = TuneResult(TuneSettings(), [1], baseline, {}, {}, {}, {}, stage1=[stopped, ok])
    write_report(result, tmp_path / "report")
    text = (tmp_path / "report" / "tuning_report.json").read_text()
    assert "NaN" not in text and json.loads(text)["stage1"][0]["kl"] is None
    cache = TuneCache(tmp_path / "cache.jsonl", {"model": "m"})
    cache.put("proxy", stopped.candidate, stopped.to_json())
    assert "NaN" not in (tmp_path / "cache.jsonl").read_text()
    row = TuneCache(tmp_path / "cache.jsonl", {"model": "m"}).get("proxy", stopped.candidate)
    assert row is not None
    back = Proxy.from_json(row)
    assert math.isnan(back.kl) and math.isnan(back.refusal["sensitive"])


def test_tune_cache_written_with_nan_by_older_versions_still_reads(tmp_path: Path) -> None:
    cache = TuneCache(None, {"model": "m"})
    c = Candidate("file", (1,), -0.5)
    row = {**c.key(), "refusal": {"sensitive": math.nan}, "kl": 0.3, "drift": math.nan}
    line = json.dumps({"key": cache.key("proxy", c), "record": row})
    assert "NaN" in line
    (tmp_path / "old.jsonl").write_text(line + "\n")
    back = TuneCache(tmp_path / "old.jsonl", {"model": "m"}).get("proxy", c)
    assert back is not None and math.isnan(Proxy.from_json(back).drift)


# --------------------------------------------------------------------------- 6: vectors import
def test_import_of_a_steerbake_vector_file(tmp_path: Path, llama_dir: Path) -> None:
    """Our own format (direction.N + scale.N) is read as it is, with or without --model;
    before, its keys were taken for raw layers and 'layer 2 appears twice'."""
    raw = {i: np.random.default_rng(i).normal(size=64) for i in range(4)}
    src = tmp_path / "src.safetensors"
    fp = Fingerprint("llama", 64, 4)
    SteeringVectors.from_raw(raw, fp, method="wrmd", diagnostics={1: {"pearson_r": 0.5}}).save(src)
    for model in (llama_dir, None):
        out = tmp_path / f"out-{model is None}.safetensors"
        vectors = run_vectors_import(src, model, out)
        back = SteeringVectors.load(out)
        assert back.fingerprint == fp and back.method == "wrmd"
        assert back.diagnostics[1]["pearson_r"] == 0.5
        for layer in range(4):
            np.testing.assert_array_equal(back.directions[layer], vectors.directions[layer])
            np.testing.assert_allclose(back.vector(layer), raw[layer], rtol=1e-6)
    assert SteeringVectors.load(tmp_path / "out-False.safetensors").rounding == "F32"


def test_import_of_direction_and_scale_tensors_without_metadata(tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    from bake.artifacts.vectors import read_raw_vectors

    src = _vectors(tmp_path)
    save_file(load_file(str(src)), str(tmp_path / "plain.safetensors"))
    raw = read_raw_vectors(tmp_path / "plain.safetensors")
    assert sorted(raw) == [0, 1, 2, 3]
    np.testing.assert_allclose(raw[2], 3 * np.ones(8), rtol=1e-6)


def test_import_without_model_needs_a_file_that_names_its_model(tmp_path: Path) -> None:
    np.save(tmp_path / "raw.npy", np.ones((4, 64), np.float32))
    with pytest.raises(InputError, match=r"does not say which model.*pass --model") as err:
        run_vectors_import(tmp_path / "raw.npy", None, tmp_path / "v.safetensors")
    assert "toy-refuser for the embedded toy model" in str(err.value)


def test_import_without_model_of_a_control_vector(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bake.artifacts.control_vector import write_control_vector

    cv = tmp_path / "cv.gguf"
    write_control_vector(cv, {1: np.ones(64), 3: np.ones(64)}, "qwen3", 4)
    vectors = run_vectors_import(cv, None, tmp_path / "v.safetensors")
    assert vectors.fingerprint == Fingerprint("qwen3", 64, 4) and vectors.rounding is None
    assert "no --model" in capsys.readouterr().err
    write_control_vector(cv, {1: np.ones(64)}, "llama", 4)  # llama, mistral or mixtral?
    with pytest.raises(InputError, match="pass --model"):
        run_vectors_import(cv, None, tmp_path / "w.safetensors")


def test_default_model_is_named_in_a_mismatch(tmp_path: Path) -> None:
    from bake.artifacts.steering import open_steering

    plan = make_plan(_vectors(tmp_path), [1], -0.2)
    with pytest.raises(PlanMismatchError, match="default toy-refuser"):
        open_steering(None, plan)


def test_default_model_is_named_in_the_gguf_summary(tmp_path: Path) -> None:
    from export.llamacpp.writer import run_gguf

    assert run_gguf(None, tmp_path / "toy.gguf").endswith(
        "(no MODEL given: the default, toy-refuser)"
    )
