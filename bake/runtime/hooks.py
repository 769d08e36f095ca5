"""Hook-based steering, the reference every baked artifact is checked against:
h_l <- h_l + v_l at the output of decoder block l, at every position (prompt and
generated), with v_l rounded to the checkpoint's dtype first (FACTS.md)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np

from bake.errors import UnsupportedError
from bake.model.arch import ArchSpec, arch_spec

if TYPE_CHECKING:
    import torch


@contextmanager
def steered(
    model: Any, vectors: dict[int, np.ndarray] | None, checkpoint_dtype: Any
) -> Iterator[None]:
    """Hooks for `vectors` while open; nothing when vectors is None."""
    from bake.runtime.hooks import steering

    with steering(model, vectors, checkpoint_dtype) if vectors else nullcontext():
        yield


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


def rounded_vector(
    v: np.ndarray, checkpoint_dtype: torch.dtype, compute_dtype: torch.dtype, device: Any = "cpu"
) -> torch.Tensor:
    """v rounded to the checkpoint dtype (what a baked bias holds), then cast for compute."""
    import torch

    t = torch.as_tensor(np.asarray(v, dtype=np.float32))
    return t.to(checkpoint_dtype).to(device=device, dtype=compute_dtype)


def _adder(vec: torch.Tensor) -> Any:
    def hook(module: Any, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):  # transformers 4.x blocks return a tuple
            return (output[0] + vec, *output[1:])
        return output + vec

    return hook


@contextlib.contextmanager
def steering(
    model: torch.nn.Module,
    vectors: Mapping[int, np.ndarray],
    checkpoint_dtype: torch.dtype | None = None,
) -> Iterator[None]:
    """Add vectors[l] to block l's output while the context is open.

    vectors: layer -> (d_model,) array, already alpha * m_l * s_l * u_l.
    checkpoint_dtype: dtype the vector is rounded to first (default: the model's).
    """
    blocks = decoder_blocks(model)
    handles = []
    try:
        for layer, v in vectors.items():
            param = next(blocks[layer].parameters())  # per block: device_map may split it
            vec = rounded_vector(v, checkpoint_dtype or param.dtype, param.dtype, param.device)
            handles.append(blocks[layer].register_forward_hook(_adder(vec)))
        yield
    finally:
        for h in handles:
            h.remove()
