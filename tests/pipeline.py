"""The pipeline as the command line drives it: MODEL and PLAN paths in, reports as the JSON
the CLI writes out. Each helper opens the Steering the way the CLI does, then calls the
stage, so the tests exercise the same path a user does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bake.artifacts.plan import Plan
from bake.artifacts.steering import open_plan_only, open_steering
from bake.artifacts.vectors import SteeringVectors
from bake.stages.bake import BakeResult, run_bake
from bake.stages.verify import run_verify
from bake.stages.verify_static import run_verify_static
from export.llamacpp.cvec import run_cvec
from export.llamacpp.patch import open_gguf_steering, patch_gguf
from export.llamacpp.verify import verify_gguf
from export.llamacpp.writer import GgufResult, convert_to_gguf
from export.publish.build import ExportResult, run_export
from export.publish.job import ExportOptions


def bake_model(model: Any, plan: Path, output: Path, **kw: Any) -> BakeResult:
    """`steerbake bake MODEL PLAN -o OUTPUT`."""
    return run_bake(open_steering(model, plan), output, **kw)


def verify_baked(model: Any, plan: Path, baked: Path, **kw: Any) -> dict[str, Any]:
    """`steerbake verify MODEL PLAN BAKED`: the JSON report."""
    return run_verify(open_steering(model, plan), baked, **kw).to_json()


def verify_static(model: Any, plan: Path, baked: Path) -> dict[str, Any]:
    """`steerbake verify --static MODEL PLAN BAKED`: the JSON report."""
    return run_verify_static(open_steering(model, plan), baked).to_json()


def verify_gguf_file(model: Any, plan: Path, gguf: Path, **kw: Any) -> dict[str, Any]:
    """`steerbake verify MODEL PLAN FILE.gguf [--control-vector CV]`: the JSON report."""
    return verify_gguf(open_steering(model, plan), gguf, **kw).to_json()


def convert(
    model: Any, output: Path, out_type: str = "F32", plan: Path | None = None, **kw: Any
) -> GgufResult:
    """`steerbake gguf MODEL -o OUTPUT --type T [--plan PLAN]`."""
    steering = open_steering(model, plan) if plan is not None else None
    return convert_to_gguf(model, output, out_type, steering, **kw)


def patch(base: Path, plan: Path, output: Path, **kw: Any) -> Any:
    """`steerbake gguf --base-gguf BASE --plan PLAN -o OUTPUT`."""
    return patch_gguf(open_gguf_steering(base, plan), output, **kw)


def cvec(plan: Path, output: Path, model: Any = None, overwrite: bool = False) -> Any:
    """`steerbake cvec PLAN -o OUTPUT [--model MODEL]`."""
    steering = open_steering(model, plan) if model is not None else open_plan_only(plan)
    return run_cvec(steering, output, overwrite=overwrite)


def export_model(
    model: Any, plan: Path, output: Path, opts: ExportOptions | None = None
) -> ExportResult:
    """`steerbake export MODEL PLAN -o OUTPUT ...`."""
    spec = None if model is None else str(model)
    return run_export(open_steering(model, plan), output, opts, model_spec=spec)


def plan_vectors(plan: Path | Plan) -> dict[int, np.ndarray]:
    """layer -> alpha * m_l * s_l * u_l (float64), computed here from the plan and its
    vector file, independently of bake.artifacts.steering (tests compare the two)."""
    plan = plan if isinstance(plan, Plan) else Plan.load(plan)
    vectors = SteeringVectors.load(plan.vectors_file)
    return {
        layer: plan.alpha * plan.layer_multipliers.get(layer, 1.0) * vectors.vector(layer)
        for layer in plan.layers
    }
