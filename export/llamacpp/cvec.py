"""`steerbake cvec`: a plan's vectors as a llama.cpp control vector (direction.N added to
the output of block N, N >= 1), rounded to the checkpoint dtype when the model is known, as
the hook reference and a baked bias are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bake.artifacts.plan import Plan
from bake.model.checkpoint import Checkpoint, open_checkpoint
from bake.model.resolve import resolve_model
from export.llamacpp.writer import _inputs, _load_plan, check_gguf_output


def write_checkpoint_control_vector(ckpt: Checkpoint, plan: Plan, path: Path) -> None:
    """direction.N = v_N rounded to the checkpoint dtype (what a hook and a baked bias add)."""
    import numpy as np

    from bake.artifacts.control_vector import write_control_vector
    from bake.files.tensor_bytes import round_to

    vectors = {
        k: round_to(v, ckpt.dtype).astype(np.float32) for k, v in plan.steering_vectors().items()
    }
    write_control_vector(path, vectors, ckpt.spec.gguf_arch, ckpt.num_layers)


# --------------------------------------------------------------------------- control vector
def write_plan_control_vector(
    plan: Plan | str | Path,
    out_path: str | Path,
    *,
    model: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """`steerbake cvec`: the plan's vectors (direction.N = alpha * m_N * s_N * u_N) as a
    llama.cpp control vector. With `model`, the plan is checked against it and each vector is
    rounded to its checkpoint dtype, as a baked bias and the hook reference hold it."""
    from bake.artifacts.control_vector import write_control_vector
    from bake.files.tensor_bytes import round_to
    from bake.model.arch import arch_spec

    plan_obj = _load_plan(plan)
    vectors = {k: np.asarray(v, dtype=np.float32) for k, v in plan_obj.steering_vectors().items()}
    inputs = [plan_obj.vectors_file] + ([] if isinstance(plan, Plan) else [Path(plan)])
    rounding = "float32 (pass --model to round them to the checkpoint dtype)"
    if model is not None:
        from bake.model.checkpoint import fingerprint_of

        ckpt = open_checkpoint(resolve_model(model))
        plan_obj.check_model(fingerprint_of(ckpt))
        vectors = {k: round_to(v, ckpt.dtype) for k, v in vectors.items()}
        rounding = f"rounded to the checkpoint dtype {ckpt.dtype}"
        inputs += _inputs(ckpt, None)
    out = Path(out_path)
    check_gguf_output(out, inputs, overwrite=overwrite)
    hint = arch_spec(plan_obj.model.architecture).gguf_arch
    write_control_vector(out, vectors, hint, plan_obj.model.num_layers)
    return {"output": str(out), "model_hint": hint, "layers": sorted(vectors), "rounding": rounding}
