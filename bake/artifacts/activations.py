"""The activation folder (ACTS), written by `collect` and read by `fit`:
  acts-00000.safetensors   "layer.{l}" F32 (rows, d), "norm.{l}" F32 (rows,)
  index.json               {"format": "steerbake.activations/1", "ids": [...row order],
                            "layers", "position", "model": {architecture, hidden_size,
                            num_layers, source}, "dtype": "float32", "compute_dtype",
                            "shards": [{"file", "rows"}], "system", "chat_template",
                            ["categories": [...per row, null where none]]}
Shards are written as rows arrive, so memory stays bounded by one shard; layers are read
lazily, one at a time."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from bake.errors import InputError
from bake.files.jsonio import dumps
from bake.model.fingerprint import Fingerprint

if TYPE_CHECKING:
    pass


FORMAT = "steerbake.activations/1"
INDEX = "index.json"
SHARD_BYTES = 256 * 1024 * 1024  # rows are flushed to a new shard at about this size


class ActivationSource(Protocol):
    """What fit needs: rows in id order for each layer, plus the per-row norms."""

    ids: list[str]
    layers: list[int]
    position: str
    fingerprint: Fingerprint

    def layer(self, layer: int) -> np.ndarray: ...  # (n, d) float32

    def norms(self, layer: int) -> np.ndarray: ...  # (n,) float32


@dataclass
class Activations:
    """Activations held in memory (what collect_activations returns)."""

    ids: list[str]
    layers: list[int]
    position: str
    fingerprint: Fingerprint
    rows: dict[int, np.ndarray]  # layer -> (n, d) float32
    row_norms: dict[int, np.ndarray]  # layer -> (n,) float32
    categories: list[str | None] | None = None  # per row, when the prompts had categories

    def layer(self, layer: int) -> np.ndarray:
        return self.rows[layer]

    def norms(self, layer: int) -> np.ndarray:
        return self.row_norms[layer]


# --------------------------------------------------------------------------- reading
@dataclass
class ActivationSet:
    """An activation folder on disk; layers are read lazily, one at a time."""

    path: Path
    index: dict[str, Any]
    ids: list[str] = field(init=False)
    layers: list[int] = field(init=False)
    position: str = field(init=False)
    fingerprint: Fingerprint = field(init=False)

    def __post_init__(self) -> None:
        self.ids = [str(i) for i in self.index["ids"]]
        self.layers = [int(x) for x in self.index["layers"]]
        self.position = str(self.index["position"])
        m = self.index["model"]
        self.fingerprint = Fingerprint(
            str(m["architecture"]), int(m["hidden_size"]), int(m["num_layers"])
        )

    @classmethod
    def open(cls, folder: Path) -> ActivationSet:
        """Read and check index.json; shards are only opened when a layer is read."""
        folder = Path(folder)
        index_path = folder / INDEX
        if not index_path.is_file():
            raise InputError(
                f"{folder} is not an activation folder (no {INDEX}); create one "
                "with `steerbake collect`"
            )
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{index_path} is not valid JSON ({e}); collect again") from None
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise InputError(
                f"{index_path} is not a {FORMAT} index; collect again with this "
                "version of steerbake"
            )
        try:
            acts = cls(folder, index)
            n_rows = sum(int(s["rows"]) for s in index["shards"])
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{index_path} is incomplete ({e!r}); collect again") from None
        if n_rows != len(acts.ids):
            raise InputError(
                f"{index_path}: shards hold {n_rows} rows but {len(acts.ids)} ids "
                "are listed; the folder is damaged, collect again"
            )
        _check_unique(acts.ids, str(index_path))
        for shard in index["shards"]:
            if not (folder / shard["file"]).is_file():
                raise InputError(f"{folder}: shard {shard['file']} is missing; collect again")
        return acts

    @property
    def categories(self) -> list[str | None] | None:
        """Each row's prompt category (None where it had none), or None when the prompts
        had no categories (or the folder predates them)."""
        found = self.index.get("categories")
        if found is None:
            return None
        if not isinstance(found, list) or len(found) != len(self.ids):
            raise InputError(
                f"{self.path / INDEX}: 'categories' must list one entry per id; collect again"
            )
        return [None if c is None else str(c) for c in found]

    def _read(self, name: str) -> np.ndarray:
        from safetensors import SafetensorError, safe_open

        parts = []
        for shard in self.index["shards"]:
            path = self.path / shard["file"]
            try:
                with safe_open(str(path), framework="numpy") as f:
                    parts.append(f.get_tensor(name))
            except (SafetensorError, OSError) as e:
                raise InputError(f"{path}: cannot read {name} ({e}); collect again") from None
        return np.concatenate(parts, axis=0)

    def _check_layer(self, layer: int) -> None:
        if layer not in self.layers:
            raise InputError(
                f"{self.path} has no activations for layer {layer}; it holds "
                f"layers {_fmt_layers(self.layers)}"
            )

    def layer(self, layer: int) -> np.ndarray:
        """(n, d) float32 rows of block `layer`, in id order."""
        self._check_layer(layer)
        rows = self._read(f"layer.{layer}")
        if rows.shape != (len(self.ids), self.fingerprint.hidden_size):
            raise InputError(
                f"{self.path}: layer {layer} has shape {rows.shape}, expected "
                f"({len(self.ids)}, {self.fingerprint.hidden_size}); collect again"
            )
        return rows

    def norms(self, layer: int) -> np.ndarray:
        """(n,) mean block-output norm over each row's positions."""
        self._check_layer(layer)
        return self._read(f"norm.{layer}")


def _fmt_layers(layers: Sequence[int]) -> str:
    from bake.artifacts.plan import format_layers

    return format_layers(sorted(layers))


def _check_unique(ids: Sequence[str], what: str) -> None:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise InputError(f"{what}: duplicate id {i!r}; ids must be unique")
        seen.add(i)


# --------------------------------------------------------------------------- writing
class ActivationWriter:
    """Streams rows into shards of about `shard_bytes`; finish() writes index.json."""

    def __init__(
        self, folder: Path, layers: Sequence[int], hidden_size: int, shard_bytes: int = SHARD_BYTES
    ) -> None:
        self.folder = Path(folder)
        self.layers = list(layers)
        self.rows_per_shard = max(1, shard_bytes // (len(self.layers) * hidden_size * 4))
        self.ids: list[str] = []
        self.shards: list[dict[str, Any]] = []
        self._rows: dict[int, list[np.ndarray]] = {layer: [] for layer in self.layers}
        self._norms: dict[int, list[np.ndarray]] = {layer: [] for layer in self.layers}
        self._pending = 0

    def add(
        self, ids: Sequence[str], rows: dict[int, np.ndarray], norms: dict[int, np.ndarray]
    ) -> None:
        """Append a batch: rows[l] (b, d), norms[l] (b,), in the order of `ids`."""
        start = 0
        while start < len(ids):
            take = min(len(ids) - start, self.rows_per_shard - self._pending)
            for layer in self.layers:
                self._rows[layer].append(np.asarray(rows[layer][start : start + take], np.float32))
                self._norms[layer].append(
                    np.asarray(norms[layer][start : start + take], np.float32)
                )
            self.ids.extend(str(i) for i in ids[start : start + take])
            self._pending += take
            start += take
            if self._pending >= self.rows_per_shard:
                self._flush()

    def _flush(self) -> None:
        from safetensors.numpy import save_file

        if not self._pending:
            return
        name = f"acts-{len(self.shards):05d}.safetensors"
        tensors: dict[str, np.ndarray] = {}
        for layer in self.layers:
            tensors[f"layer.{layer}"] = np.ascontiguousarray(np.concatenate(self._rows[layer]))
            tensors[f"norm.{layer}"] = np.ascontiguousarray(np.concatenate(self._norms[layer]))
            self._rows[layer].clear()
            self._norms[layer].clear()
        save_file(tensors, str(self.folder / name))
        self.shards.append({"file": name, "rows": self._pending})
        self._pending = 0

    def finish(self, fingerprint: Fingerprint, position: str, **extra: Any) -> dict[str, Any]:
        """Flush the last shard and write index.json; returns the index."""
        self._flush()
        _check_unique(self.ids, str(self.folder))
        index = {
            "format": FORMAT,
            "ids": self.ids,
            "layers": self.layers,
            "position": position,
            "model": {
                "architecture": fingerprint.architecture,
                "hidden_size": fingerprint.hidden_size,
                "num_layers": fingerprint.num_layers,
                **extra.pop("model", {}),
            },
            "dtype": "float32",
            "shards": self.shards,
            **extra,
        }
        (self.folder / INDEX).write_text(dumps(index, indent=1) + "\n")
        return index
