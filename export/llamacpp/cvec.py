"""`steerbake cvec`: a steering as a llama.cpp control vector: direction.N = the added vector
of block N (N >= 1; llama.cpp adds it to block N's output), rounded as the hook reference
and a baked bias hold it (to the checkpoint dtype when the model is known, else F32).

For a `both` plan the control vector is its additive part, which ships beside the GGUF that
carries the plan's ablation (`steerbake gguf MODEL --plan PLAN`). An `ablate` plan has
nothing to add and llama.cpp cannot ablate at run time: refused, pointing to the GGUF bake."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bake.artifacts.control_vector import write_control_vector
from bake.artifacts.plan import format_layers
from bake.artifacts.steering import PlanModel, Steering
from bake.errors import InputError
from bake.files.fileio import check_output_file
from bake.model.checkpoint import Checkpoint
from bake.options import OVERWRITE_HELP, opt


@dataclass(frozen=True)
class CvecOptions:
    model: str | None = opt(
        None,
        "Check the plan against MODEL and round the vectors to its dtype (as the hook "
        "reference does).",
    )
    overwrite: bool = opt(False, OVERWRITE_HELP)


@dataclass
class CvecResult:
    output: Path
    model_hint: str
    layers: list[int]
    rounding: str  # what the values were rounded to, in words
    kind: str = "add"  # the plan's kind: `both` ships beside its orthogonalised GGUF

    def summary(self) -> str:
        beside = (
            "the GGUF that carries this plan's ablation (steerbake gguf MODEL --plan PLAN) only"
            if self.kind == "both"
            else "the unsteered GGUF only"
        )
        return (
            f"wrote {self.output}: control vector for {self.model_hint}, blocks "
            f"{format_layers(self.layers)}, values {self.rounding}; use it beside "
            f"{beside} (llama.cpp: --control-vector FILE)"
        )


def write_steering_control_vector(steering: Steering, path: Path) -> None:
    """direction.N = steering.rounded[N], for the model's llama.cpp architecture."""
    fp = steering.model.fingerprint
    write_control_vector(path, dict(steering.rounded), steering.spec.gguf_arch, fp.num_layers)


def steering_inputs(steering: Steering) -> list[Path]:
    """Files an output must not overwrite: the plan, its vectors and the model's files."""
    files = [steering.vectors_file] + ([steering.plan_file] if steering.plan_file else [])
    if isinstance(steering.model, Checkpoint):
        files += [p for p in steering.model.path.iterdir() if p.is_file()]
    return files


def run_cvec(steering: Steering, output: Path, *, overwrite: bool = False) -> CvecResult:
    """Write the steering as a control vector at `output` (atomically)."""
    output = Path(output)
    if not steering.plan.adds:
        raise InputError(
            "the plan only ablates: there is no vector to add, and llama.cpp cannot ablate at "
            "run time; bake it into a GGUF instead: steerbake gguf MODEL --plan PLAN -o OUT.gguf"
        )
    check_output_file(output, steering_inputs(steering), overwrite=overwrite)
    write_steering_control_vector(steering, output)
    if not isinstance(steering.model, PlanModel):
        rounding = f"rounded to the checkpoint dtype {steering.rounding}"
    elif steering.plan.rounding:
        rounding = f"rounded to {steering.rounding}, the dtype the plan records"
    else:
        rounding = "float32 (pass --model to round them to the checkpoint dtype)"
    return CvecResult(
        output, steering.spec.gguf_arch, sorted(steering.layers), rounding, steering.kind
    )
