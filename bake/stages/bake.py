"""Fold a plan's vectors into a checkpoint, streaming: the model is never loaded.

Bias route (llama, granite): block l's down_proj gets bias b_l = v_l / r (r = the
family's residual multiplier, 1 for llama), so  block_l(x) = hooked block_l(x)  exactly.
Unchanged shards are carried over byte for byte; the new biases go into one new shard.
The adapter route lives in bake/adapter.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from bake.artifacts.bias_checkpoint import write_bias_checkpoint
from bake.artifacts.plan import Plan, format_layers
from bake.errors import UnsupportedError
from bake.files.fileio import (
    check_output_dir,
)
from bake.model.arch import ArchSpec
from bake.model.checkpoint import (
    fingerprint_of,
    open_checkpoint,
)
from bake.model.resolve import resolve_model


@dataclass
class BakeResult:
    output: Path
    route: str
    layers: list[int]
    files: dict[str, int] = field(default_factory=dict)  # relative path -> size in bytes
    seconds: float = 0.0

    def summary(self) -> str:
        total = sum(self.files.values())
        return (
            f"baked {self.route} route into {self.output}: layers "
            f"{format_layers(self.layers)}, {len(self.files)} files, "
            f"{total / 1e6:.1f} MB, {self.seconds:.2f} s"
        )


def choose_route(spec: ArchSpec, requested: str) -> str:
    """auto -> the table's route; refuse a route the family does not have."""
    if spec.hf_route == "none":
        raise UnsupportedError(
            f"{spec.model_type} cannot be baked ({spec.note}); steer it with hooks "
            "(bake.hooks.steering) or, in llama.cpp, with a control vector (steerbake cvec)"
        )
    if requested == "auto":
        return spec.hf_route
    if requested == "bias" and spec.hf_route != "bias":
        raise UnsupportedError(
            f"{spec.model_type} has no bias slot in Hugging Face format "
            f"({spec.note}); use --route adapter"
        )
    return requested


def bake_model(
    model: str | Path | None,
    plan_file: Path,
    output: Path,
    *,
    route: str = "auto",
    overwrite: bool = False,
    link: bool = False,
) -> BakeResult:
    """Check everything, then write the baked checkpoint (or adapter) to `output`."""
    start = time.perf_counter()
    src = resolve_model(model)
    ckpt = open_checkpoint(src)
    plan = Plan.load(plan_file)
    plan.check_model(fingerprint_of(ckpt))
    route = choose_route(ckpt.spec, route)
    output = Path(output)
    check_output_dir(output, overwrite=overwrite, sources=(src,))
    if route == "adapter":
        from bake.artifacts.adapter import write_adapter

        files = write_adapter(ckpt, plan, output, overwrite=overwrite)
    else:
        files = write_bias_checkpoint(ckpt, plan, output, overwrite=overwrite, link=link)
    return BakeResult(output, route, plan.layers, files, time.perf_counter() - start)
