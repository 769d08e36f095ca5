"""Hook-based steering, the reference every baked artifact is checked against:
h_l <- h_l + v_l at the output of decoder block l, at every position (prompt and
generated), with v_l rounded to the checkpoint's dtype first (FACTS.md)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from bake.errors import UnsupportedError
from bake.model.arch import ArchSpec, arch_spec

if TYPE_CHECKING:
    import torch

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


@contextlib.contextmanager
def hooked(model: torch.nn.Module, steering: Steering | None) -> Iterator[None]:
    """The reference steering: steering.rounded[l] (alpha * m_l * s_l * u_l rounded to the
    plan's dtype, what every baked route stores) added to block l's output while open;
    nothing when steering is None."""
    if steering is None:
        yield
        return
    with add_to_blocks(model, steering.rounded):
        yield
