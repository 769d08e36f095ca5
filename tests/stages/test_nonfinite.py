"""What is written is finite: a steering whose vector overflows the dtype a route stores it
in is refused before anything is written, and `verify --static` fails a baked folder that
holds NaN or Inf (issue 22, item 1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bake.artifacts.plan import Plan, make_plan
from bake.artifacts.steering import Steering, open_steering
from bake.artifacts.vectors import SteeringVectors
from bake.errors import InputError
from bake.model.fingerprint import Fingerprint
from bake.stages.bake import run_bake
from bake.stages.verify_static import run_verify_static
from tests.cli_runner import invoke
from tests.tiny_models import build_model, random_raw_vectors

# F16 holds at most 65504: a unit direction of 64 elements times alpha * s_l = 1e7
# overflows it, while the vector is finite in F32, the plan's rounding.
ALPHA = 1e7


@pytest.fixture(scope="module")
def f16(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A float16 Llama and a plan over layers 1-2 whose vectors round to F32."""
    root = tmp_path_factory.mktemp("f16")
    model = build_model(root / "model", "llama", dtype="float16")
    raw = random_raw_vectors(64, [0, 1, 2, 3])
    SteeringVectors.from_raw(raw, Fingerprint("llama", 64, 4), rounding="F32").save(
        root / "v.safetensors"
    )
    make_plan(root / "v.safetensors", [1, 2], ALPHA).save(root / "plan.json")
    assert Plan.load(root / "plan.json").rounding == "F32"
    return model, root / "plan.json"


def test_bias_bake_refuses_values_that_overflow_the_checkpoint_dtype(
    f16: tuple[Path, Path], tmp_path: Path
) -> None:
    model, plan = f16
    with pytest.raises(InputError, match=r"down_proj.bias.*NaN or Inf in F16.*smaller alpha"):
        run_bake(open_steering(model, plan), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_static_verify_fails_a_non_finite_baked_tensor(
    f16: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Inf bias equals an Inf plan vector byte for byte; the static check must still fail
    (as a failed check, exit 1, not a traceback)."""
    model, plan = f16
    with monkeypatch.context() as m:  # an older steerbake, which baked what it was given
        m.setattr(Steering, "check_written", lambda *a: None)
        run_bake(open_steering(model, plan), tmp_path / "out")
    report = run_verify_static(open_steering(model, plan), tmp_path / "out")
    checks = {c.name: c for c in report.checks}
    assert not report.passed and not checks["baked values finite"].ok
    assert "NaN or Inf" in checks["baked values finite"].detail
    result = invoke("verify", model, plan, tmp_path / "out", "--static")
    assert result.exit_code == 1 and "FAIL" in result.stdout and result.stderr.count("\n") <= 1


def test_gguf_patch_refuses_a_bias_that_overflows_f32(tmp_path: Path) -> None:
    """Granite's bias is v / residual_scale: a tiny scale overflows F32."""
    from export.llamacpp.patch import open_gguf_steering, patch_gguf
    from tests.export.test_gguf_patch import HIDDEN, N_LAYERS, craft_gguf, write_plan

    base = craft_gguf(tmp_path / "granite.gguf", "granite", extra={"{arch}.residual_scale": 1e-39})
    plan = write_plan(tmp_path / "plan", Fingerprint("granite", HIDDEN, N_LAYERS), [1])
    with pytest.raises(InputError, match=r"blk\.1\.ffn_down\.bias would hold NaN or Inf in F32"):
        patch_gguf(open_gguf_steering(base, plan), tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_writers_check_what_they_store(f16: tuple[Path, Path]) -> None:
    """Every writer's values pass Steering.check_written (defence in depth)."""
    model, plan = f16
    steering = open_steering(model, plan)
    with pytest.raises(InputError, match="would hold NaN or Inf in F32"):
        steering.check_written({"x": np.array([1.0, np.inf])}, "F32")
    steering.check_written({"x": np.ones(3)}, "F32")
