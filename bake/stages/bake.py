"""`steerbake bake`: fold a Steering into a checkpoint, streaming (the model is never
loaded). The bias route writes a checkpoint whose down_proj carries the steering as a bias
(bake.artifacts.bias_checkpoint); the adapter route a PEFT adapter folder
(bake.artifacts.adapter); a plan that ablates, a checkpoint whose residual writers are
orthogonalised, with the bias of `both` beside them (bake.artifacts.ablated_checkpoint).
Which route a family has is model knowledge (bake.model.arch).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from bake.artifacts.ablated_checkpoint import write_ablated_checkpoint
from bake.artifacts.adapter import write_adapter
from bake.artifacts.bias_checkpoint import write_bias_checkpoint
from bake.artifacts.plan import format_layers
from bake.artifacts.steering import Steering
from bake.files.fileio import check_output_dir
from bake.model.arch import choose_route
from bake.options import OVERWRITE_HELP, opt


@dataclass(frozen=True)
class BakeOptions:
    """`run_bake`'s choices besides the steering and the output."""

    route: str = opt(
        "auto",
        "bias: new checkpoint; adapter: PEFT adapter folder (additive plans; a plan that "
        "ablates is always baked into the weights).",
        choices=("auto", "bias", "adapter"),
    )
    overwrite: bool = opt(False, OVERWRITE_HELP)
    link: bool = opt(
        False,
        "Symlink unchanged shards instead of copying (output shares the source's files: "
        "never edit it in place).",
    )


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


def run_bake(
    steering: Steering,
    output: Path,
    *,
    route: str = "auto",
    overwrite: bool = False,
    link: bool = False,
    base_model: str | None = None,
) -> BakeResult:
    """Check everything, then write the baked checkpoint (or adapter) to `output`."""
    start = time.perf_counter()
    ckpt = steering.checkpoint
    route = choose_route(ckpt.spec, route, steering.kind)
    output = Path(output)
    check_output_dir(output, overwrite=overwrite, sources=(ckpt.path,))
    if route.startswith("ablate"):
        from bake.runtime.threads import threads

        files = write_ablated_checkpoint(
            ckpt, steering, output, overwrite=overwrite, link=link, workers=threads()
        )
    elif route == "adapter":
        files = write_adapter(ckpt, steering, output, overwrite=overwrite, base_model=base_model)
    else:
        files = write_bias_checkpoint(ckpt, steering, output, overwrite=overwrite, link=link)
    return BakeResult(output, route, steering.layers, files, time.perf_counter() - start)
