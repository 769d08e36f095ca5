"""Hook-based steering, the reference every baked artifact is checked against:
h_l <- h_l + v_l at the output of decoder block l, at every position (prompt and
generated), with v_l rounded to the checkpoint's dtype first (FACTS.md); and, for a plan
that ablates, y <- y - a r_l r_l^T y on the output of every module that writes block l's
residual stream (the family's hook sites: attention output and MLP down projections, the
whole MoE block, or the norm that follows them), and e <- e - a (e . r) r on the token
embedding's output when the plan ablates it. In `both`, the writers are projected inside the
block and v_l is added to its output afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from bake.errors import UnsupportedError
from bake.model.arch import ArchSpec, arch_spec

if TYPE_CHECKING:
    import torch

    from bake.artifacts.orthogonalise import Projection
    from bake.artifacts.steering import Steering


def decoder_blocks(model: torch.nn.Module, spec: ArchSpec | None = None) -> Any:
    """The ModuleList of decoder blocks, found by the table's path (no probing)."""
    spec = spec or arch_spec(getattr(model.config, "model_type", None))
    obj: Any = model
    for attr in spec.layers_path.split("."):
        if not hasattr(obj, attr):
            raise UnsupportedError(
                f"{type(model).__name__} has no {spec.layers_path}: the "
                f"{spec.model_type} layout changed; report it with the "
                "transformers version"
            )
        obj = getattr(obj, attr)
    return obj


def _adder(vec: torch.Tensor) -> Any:
    def hook(module: Any, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):  # transformers 4.x blocks return a tuple
            return (output[0] + vec, *output[1:])
        return output + vec

    return hook


@contextlib.contextmanager
def add_to_blocks(model: torch.nn.Module, vectors: Mapping[int, np.ndarray]) -> Iterator[None]:
    """Add vectors[l] (d_model,) to block l's output while the context is open, cast to the
    block's dtype and device; the values are used as given (no rounding here)."""
    import torch

    blocks = decoder_blocks(model)
    handles = []
    try:
        for layer, v in vectors.items():
            param = next(blocks[layer].parameters())  # per block: device_map may split it
            vec = torch.as_tensor(np.asarray(v, dtype=np.float32))
            vec = vec.to(device=param.device, dtype=param.dtype)
            handles.append(blocks[layer].register_forward_hook(_adder(vec)))
        yield
    finally:
        for h in handles:
            h.remove()


def _module(root: Any, path: str) -> Any | None:
    """root.a.b.c for path 'a.b.c', or None when an attribute is missing."""
    obj = root
    for attr in path.split("."):
        obj = getattr(obj, attr, None)
        if obj is None:
            return None
    return obj


def writer_modules(block: Any, spec: ArchSpec, layer: int) -> list[Any]:
    """The modules of one block whose outputs are added to the residual stream: one per group
    of the family's hook sites (exactly one alternative of each group is present)."""
    found = []
    for group in spec.hook_sites:
        present = [m for m in (_module(block, path) for path in group) if m is not None]
        if len(present) != 1:
            raise UnsupportedError(
                f"block {layer} has {len(present)} of the modules {', '.join(group)} (expected "
                f"one): the {spec.model_type} layout changed; report it with the transformers "
                "version"
            )
        found.append(present[0])
    return found


def embedding_module(model: Any, spec: ArchSpec) -> Any:
    """The token embedding whose weight the bake orthogonalises (spec.embed_module)."""
    module = _module(model, spec.embed_module)
    if module is None:
        raise UnsupportedError(
            f"the model has no {spec.embed_module}: the {spec.model_type} layout changed; "
            "report it with the transformers version"
        )
    return module


def _projector(r: torch.Tensor, strength: float) -> Any:
    """Forward hook: output y (..., d) -> y - a (y . r) r (a tuple: its first element)."""

    def project(y: Any) -> Any:
        return y - (strength * (y @ r))[..., None] * r

    def hook(module: Any, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (project(output[0]), *output[1:])
        return project(output)

    return hook


@contextlib.contextmanager
def ablate_writers(
    model: torch.nn.Module,
    projections: Mapping[int, Projection],
    embed: Projection | None = None,
) -> Iterator[None]:
    """Project r_l out of the output of every residual writer of block l (projections[l]:
    r_l, a) and, when given, r out of the token embedding's output, while open. r is cast
    to each module's dtype and device."""
    import torch

    spec = arch_spec(getattr(model.config, "model_type", None))
    blocks = decoder_blocks(model, spec)
    sites = [
        (m, p)
        for layer, p in projections.items()
        for m in writer_modules(blocks[layer], spec, layer)
    ]
    if embed is not None:
        sites.append((embedding_module(model, spec), embed))
    handles = []
    try:
        for module, p in sites:
            param = next(module.parameters())
            r = torch.as_tensor(p.direction).to(device=param.device, dtype=param.dtype)
            handles.append(module.register_forward_hook(_projector(r, p.strength)))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def hooked(model: torch.nn.Module, steering: Steering | None) -> Iterator[None]:
    """The reference steering while open: the plan's projections on the residual writers
    (and the embedding), and steering.rounded[l] (alpha * m_l * s_l * u_l rounded to the
    plan's dtype, what every baked route stores) added to block l's output; nothing when
    steering is None."""
    if steering is None:
        yield
        return
    with (
        ablate_writers(model, steering.projections, steering.embed_projection),
        add_to_blocks(model, steering.rounded),
    ):
        yield
