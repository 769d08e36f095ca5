"""The probe file of probe-gated steering (`steerbake probe`): a linear probe on the last
prompt token at block `layer`,

    f(x) = w . h_layer(x) + b        f > threshold: the prompt should be refused

On disk: safetensors with `probe.weight` F32 (d,) and `probe.bias` F32 (1,), and JSON
metadata under the `steerbake` key: {"format": "steerbake.probe/1", "layer", "threshold",
"architecture", "hidden_size", "num_layers", "position", "system", "provenance"}.

A probe acts at run time, per prompt: no weight file can hold it (a baked vector is the
same for every prompt), and llama.cpp exposes no intermediate activations to read it from.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bake.errors import InputError
from bake.files.jsonio import dumps
from bake.model.fingerprint import Fingerprint

FORMAT = "steerbake.probe/1"
MODES = ("sign", "gate", "soft")
MODE_HELP = (
    "How the probe gates the plan, per prompt: sign = the plan as written where the probe "
    "says answer, its opposite where it says refuse; gate = the plan where it says answer, "
    "nothing where it says refuse; soft = the plan times clip(threshold - f, -1, 1)."
)


@dataclass
class Probe:
    layer: int
    weight: np.ndarray  # (d,) float32
    bias: float
    fingerprint: Fingerprint
    threshold: float = 0.0
    system: str | None = None  # the system message the training activations were taken with
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        d, n = self.fingerprint.hidden_size, self.fingerprint.num_layers
        if not 0 <= self.layer < n:
            raise InputError(f"probe layer {self.layer} is out of range: layers 0-{n - 1}")
        if self.weight.shape != (d,):
            raise InputError(f"probe weight has shape {self.weight.shape}, not ({d},)")
        values = [self.bias, self.threshold]
        if not (np.all(np.isfinite(self.weight)) and all(math.isfinite(v) for v in values)):
            raise InputError("the probe has NaN or Inf values; fit it again")

    def decision(self, h: np.ndarray) -> np.ndarray:
        """f (n,) from rows h (n, d) of block `layer` at the last prompt token."""
        return np.asarray(h, np.float64) @ self.weight.astype(np.float64) + self.bias

    def gates(self, f: np.ndarray, mode: str) -> np.ndarray:
        """Per prompt the multiplier g on the plan's vectors (module bake.runtime.gated)."""
        check_mode(mode)
        answer = f <= self.threshold
        if mode == "sign":
            return np.where(answer, 1.0, -1.0)
        if mode == "gate":
            return np.where(answer, 1.0, 0.0)
        return np.clip(self.threshold - f, -1.0, 1.0)

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        from bake.files.fileio import atomic_write_path

        fp = self.fingerprint
        meta = {
            "format": FORMAT,
            "layer": self.layer,
            "threshold": self.threshold,
            "architecture": fp.architecture,
            "hidden_size": fp.hidden_size,
            "num_layers": fp.num_layers,
            "position": "last",
            "system": self.system,
            "provenance": self.provenance,
        }
        tensors = {
            "probe.weight": np.ascontiguousarray(self.weight, np.float32),
            "probe.bias": np.array([self.bias], np.float32),
        }
        with atomic_write_path(Path(path)) as tmp:
            save_file(tensors, str(tmp), metadata={"steerbake": dumps(meta)})

    @classmethod
    def load(cls, path: Path) -> Probe:
        from bake.artifacts.vectors import read_vector_file

        path = Path(path)
        if not path.is_file():
            raise InputError(f"probe file {path} not found; write one with `steerbake probe`")
        raw_meta, arrays = read_vector_file(path)
        try:
            meta = json.loads(raw_meta or "{}")
            if meta.get("format") != FORMAT:
                raise InputError(
                    f"{path} is not a steerbake probe ({FORMAT}); write one with `steerbake probe`"
                )
            return cls(
                layer=int(meta["layer"]),
                weight=arrays["probe.weight"].astype(np.float32),
                bias=float(arrays["probe.bias"].reshape(-1)[0]),
                fingerprint=Fingerprint(
                    str(meta["architecture"]), int(meta["hidden_size"]), int(meta["num_layers"])
                ),
                threshold=float(meta.get("threshold", 0.0)),
                system=meta.get("system"),
                provenance=dict(meta.get("provenance") or {}),
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise InputError(
                f"{path}: damaged probe file ({type(e).__name__}: {e}); write it again with "
                "`steerbake probe`"
            ) from None


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise InputError(f"--probe-mode {mode!r} is not one of {', '.join(MODES)}")
