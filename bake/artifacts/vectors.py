"""The steering-vector file: per layer a unit direction u_l (d_model,) and a scale s_l,
so the vector added at strength alpha is alpha * s_l * u_l (DESIGN.md, "Units of alpha").

On disk: safetensors with tensors `direction.{l}` (F32, (d,)) and `scale.{l}` (F32, (1,)),
and JSON metadata under the `steerbake` key. Also imports raw per-layer arrays.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bake.errors import InputError
from bake.files.jsonio import dumps
from bake.model.fingerprint import Fingerprint

FORMAT = "steerbake.vectors/1"
SITE_BLOCK_OUTPUT = "block_output"
_LAYER_KEY = re.compile(r"(\d+)(?:\D*)$")


@dataclass
class SteeringVectors:
    """Unit directions and scales per layer, plus what model they belong to."""

    directions: dict[int, np.ndarray]  # layer -> (d,) float32, unit norm
    scales: dict[int, float]  # layer -> s_l
    fingerprint: Fingerprint
    site: str = SITE_BLOCK_OUTPUT
    method: str = "raw"
    provenance: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[int, dict[str, Any]] = field(default_factory=dict)
    rounding: str | None = None  # dtype tag of the checkpoint the vectors are for (None: unknown)

    def __post_init__(self) -> None:
        d, n = self.fingerprint.hidden_size, self.fingerprint.num_layers
        for layer, u in self.directions.items():
            if not 0 <= layer < n:
                raise InputError(
                    f"vector for layer {layer} is out of range: the model has layers 0-{n - 1}"
                )
            if u.shape != (d,):
                raise InputError(
                    f"layer {layer}'s vector has shape {u.shape}, the model's "
                    f"hidden size is {d}; use vectors made for this model"
                )
            if not np.all(np.isfinite(u)):
                raise InputError(
                    f"layer {layer}'s vector has NaN or Inf values; refit or fix the source"
                )
            check_scale(layer, self.scales[layer])

    @property
    def layers(self) -> list[int]:
        return sorted(self.directions)

    def vector(self, layer: int) -> np.ndarray:
        """s_l * u_l as float64 (d,)."""
        return self.scales[layer] * self.directions[layer].astype(np.float64)

    @classmethod
    def from_raw(
        cls, raw: dict[int, np.ndarray], fingerprint: Fingerprint, **kw: Any
    ) -> SteeringVectors:
        """Split raw vectors v_l into u_l = v_l / |v_l| and s_l = |v_l|."""
        directions, scales = {}, {}
        for layer, v in raw.items():
            v = np.asarray(v, dtype=np.float64).reshape(-1)
            if not np.all(np.isfinite(v)):
                raise InputError(f"layer {layer}'s vector has NaN or Inf values; fix the source")
            norm = float(np.linalg.norm(v))
            if norm == 0.0:
                raise InputError(f"layer {layer}'s vector is all zeros; drop that layer")
            check_scale(layer, norm)
            directions[layer] = (v / norm).astype(np.float32)
            scales[layer] = norm
        return cls(directions, scales, fingerprint, **kw)

    def metadata(self) -> dict[str, Any]:
        fp = self.fingerprint
        return {
            "format": FORMAT,
            "architecture": fp.architecture,
            "hidden_size": fp.hidden_size,
            "num_layers": fp.num_layers,
            "site": self.site,
            "method": self.method,
            "rounding": self.rounding,
            "layers": self.layers,
            "provenance": self.provenance,
            "diagnostics": {str(k): v for k, v in self.diagnostics.items()},
        }

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        from bake.files.fileio import atomic_write_path

        tensors: dict[str, np.ndarray] = {}
        for layer in self.layers:
            tensors[f"direction.{layer}"] = np.ascontiguousarray(self.directions[layer], np.float32)
            tensors[f"scale.{layer}"] = np.array([self.scales[layer]], dtype=np.float32)
        with atomic_write_path(Path(path)) as tmp:
            save_file(tensors, str(tmp), metadata={"steerbake": dumps(self.metadata())})

    @classmethod
    def load(cls, path: Path) -> SteeringVectors:
        path = Path(path)
        raw_meta, arrays = read_vector_file(path)
        if raw_meta is None:
            raise InputError(
                f"{path} is not a steerbake vector file; convert raw vectors "
                "with `steerbake vectors import`"
            )
        try:
            meta = json.loads(raw_meta)
            fp = Fingerprint(
                str(meta["architecture"]), int(meta["hidden_size"]), int(meta["num_layers"])
            )
            prefix = "direction."
            layers = [_int_key(k[len(prefix) :]) for k in arrays if k.startswith(prefix)]
            return cls(
                directions={layer: arrays[f"direction.{layer}"] for layer in layers},
                scales={layer: float(arrays[f"scale.{layer}"].reshape(-1)[0]) for layer in layers},
                fingerprint=fp,
                site=str(meta.get("site", SITE_BLOCK_OUTPUT)),
                method=str(meta.get("method", "raw")),
                provenance=dict(meta.get("provenance") or {}),
                diagnostics={int(k): v for k, v in (meta.get("diagnostics") or {}).items()},
                rounding=_rounding_tag(meta.get("rounding")),
            )
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            raise InputError(
                f"{path}: damaged vector file ({type(e).__name__}: {e}); write it again with "
                "`steerbake fit` or `steerbake vectors import`"
            ) from None


def check_scale(layer: int, scale: float) -> None:
    """A scale s_l must be positive and finite as stored (float32)."""
    if not (math.isfinite(scale) and scale > 0):
        raise InputError(
            f"layer {layer}'s scale is {scale}; scales must be positive and finite: refit, "
            "or fix the source"
        )
    with np.errstate(over="ignore"):
        stored = np.float32(scale)
    if not np.isfinite(stored):
        raise InputError(
            f"layer {layer}'s vector norm {scale:.3g} overflows float32, in which the scale "
            "is stored; rescale the source vectors"
        )


def _int_key(text: str) -> int:
    """A layer number written in a tensor name: plain decimal digits only."""
    if not text.isdigit():
        raise ValueError(f"tensor name with layer {text!r}, not a number")
    return int(text)


def _rounding_tag(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"rounding {value!r} is not a dtype name")
    return value


def read_vector_file(path: Path) -> tuple[str | None, dict[str, np.ndarray]]:
    """(the `steerbake` metadata string or None, every tensor) of a safetensors file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            raw_meta = (f.metadata() or {}).get("steerbake")
            arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise InputError(f"{path}: cannot read vector file ({e})") from None
    return raw_meta, arrays


def _layer_of(key: str, src: Path) -> int:
    m = _LAYER_KEY.search(key)
    if not m:
        raise InputError(
            f"{src}: key {key!r} names no layer index; keys must be layer "
            "numbers such as '12' or 'layers.12'"
        )
    return int(m.group(1))


def _rows(arrays: dict[str, Any], src: Path) -> dict[int, np.ndarray]:
    """A dict keyed by layer, or one 2-D array whose rows are layers 0..n-1."""
    if len(arrays) == 1:
        (only,) = arrays.values()
        only = np.asarray(only)
        if only.ndim == 2:
            return {i: only[i] for i in range(only.shape[0])}
    out: dict[int, np.ndarray] = {}
    for key, value in arrays.items():
        layer = _layer_of(str(key), src)
        if layer in out:
            raise InputError(f"{src}: layer {layer} appears twice")
        out[layer] = np.asarray(value)
    return out


def _scaled_directions(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Tensors named like our format (direction.N and scale.N, e.g. a vector file whose
    metadata was lost) -> {N: scale.N * direction.N}; any other set unchanged."""
    pairs = [re.fullmatch(r"(direction|scale)\.(\d+)", k) for k in arrays]
    if not arrays or not all(pairs):
        return arrays
    out = {}
    for m in pairs:
        assert m is not None
        if m.group(1) == "direction":
            scale = arrays.get(f"scale.{m.group(2)}")
            if scale is None or scale.size != 1:
                raise InputError(f"direction.{m.group(2)} has no one-value scale.{m.group(2)}")
            out[m.group(2)] = float(scale.reshape(-1)[0]) * arrays[m.group(0)].astype(np.float64)
    return out


def read_raw_vectors(src: Path) -> dict[int, np.ndarray]:
    """Per-layer raw vectors from .npy, .npz, .safetensors or .pt (weights_only)."""
    src = Path(src)
    if not src.is_file():
        raise InputError(f"{src} does not exist")
    suffix = src.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(src, allow_pickle=False)
            if arr.ndim != 2:
                raise InputError(f"{src}: expected a 2-D array (layers, hidden), got {arr.shape}")
            return {i: arr[i] for i in range(arr.shape[0])}
        if suffix == ".npz":
            with np.load(src, allow_pickle=False) as z:
                return _rows({k: z[k] for k in z.files}, src)
        if suffix == ".safetensors":
            from safetensors.numpy import load_file

            return _rows(_scaled_directions(dict(load_file(str(src)))), src)
        if suffix in (".pt", ".pth"):
            return _rows(_load_torch(src), src)
    except InputError:
        raise
    except Exception as e:  # numpy/safetensors/torch parse errors
        raise InputError(f"{src}: cannot read vectors ({type(e).__name__}: {e})") from None
    raise InputError(
        f"{src}: unknown vector format {suffix!r}; use .npy, .npz, .safetensors, "
        ".pt or a control-vector .gguf"
    )


def _load_torch(src: Path) -> dict[str, Any]:
    import torch

    obj = torch.load(src, map_location="cpu", weights_only=True)
    if isinstance(obj, torch.Tensor):
        obj = {"0": obj} if obj.ndim == 1 else {str(i): row for i, row in enumerate(obj)}
    if not isinstance(obj, dict):
        raise InputError(f"{src}: expected a state dict of layer -> tensor")
    return {str(k): v.detach().float().numpy() for k, v in obj.items()}
