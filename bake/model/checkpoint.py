"""Read a Hugging Face checkpoint folder without loading the model: config, shard
layout and safetensors headers (the first 8 + N bytes of each shard).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bake.errors import InputError
from bake.files.fileio import plain_file_name
from bake.files.shards import TORCH_DTYPE_NAMES, ShardHeader, read_header
from bake.model.arch import ArchSpec, arch_spec
from bake.model.fingerprint import Fingerprint

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors tag, e.g. "BF16"
    shape: tuple[int, ...]
    shard: str  # file name inside the folder


@dataclass
class Checkpoint:
    """A model folder as files: config, architecture row, tensors by shard."""

    path: Path
    config: dict[str, Any]
    spec: ArchSpec
    tensors: dict[str, TensorInfo]
    shards: list[str]  # weight files in index order
    indexed: bool  # weights listed by model.safetensors.index.json
    headers: dict[str, ShardHeader] = field(repr=False, default_factory=dict)

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type"))

    @property
    def num_layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    @property
    def hidden_size(self) -> int:
        return int(self.config["hidden_size"])

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint(self.model_type, self.hidden_size, self.num_layers)

    @property
    def dtype(self) -> str:
        """safetensors tag of the MLP weights (the dtype a baked bias must take): block 0's
        down_proj, or its first residual writer in a family without one (experts)."""
        name = writer_probe(self.spec, self.tensors)
        assert name is not None  # open_checkpoint checked it
        return self.tensors[name].dtype

    @property
    def torch_dtype_name(self) -> str:
        return TORCH_DTYPE_NAMES.get(self.dtype, "float32")

    def shard_bytes(self) -> int:
        return sum((self.path / s).stat().st_size for s in self.shards)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path} not found: is this a Hugging Face model folder?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON ({e}); fix or re-download it") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} is not a JSON object; fix or re-download it")
    return data


def _weight_files(folder: Path) -> tuple[list[str], bool, dict[str, str]]:
    """(shards, indexed, tensor -> shard from the index or {})."""
    index = folder / SAFE_INDEX
    if index.exists():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise InputError(f"{index} has no weight_map; re-download the model")
        shards = [plain_file_name(s, f"{index}") for s in dict.fromkeys(weight_map.values())]
        for shard in shards:
            if not (folder / shard).is_file():
                raise InputError(
                    f"shard {shard} is listed in {SAFE_INDEX} but missing from {folder}; "
                    "download the missing file"
                )
        return shards, True, weight_map
    if (folder / SAFE_SINGLE).is_file():
        return [SAFE_SINGLE], False, {}
    if any(p.suffix in PICKLED_SUFFIXES for p in folder.iterdir()):
        raise InputError(
            f"{folder} holds only pickled weights (.bin/.pt); steerbake never unpickles: "
            "convert them to safetensors first (load with transformers and save_pretrained)"
        )
    raise InputError(f"no safetensors weights in {folder}: expected {SAFE_SINGLE} or {SAFE_INDEX}")


def open_checkpoint(folder: Path) -> Checkpoint:
    """Read config, architecture row, shard layout and every shard's header."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder")
    config = _read_json(folder / "config.json")
    spec = arch_spec(config.get("model_type"))
    for key in ("num_hidden_layers", "hidden_size"):
        if not isinstance(config.get(key), int):
            raise InputError(f"{folder / 'config.json'} lacks an integer {key!r}")
    shards, indexed, weight_map = _weight_files(folder)
    headers = {s: read_header(folder / s) for s in shards}
    tensors: dict[str, TensorInfo] = {}
    for shard, header in headers.items():
        for name, t in header.tensors.items():
            tensors[name] = TensorInfo(name, t["dtype"], tuple(t["shape"]), shard)
    for name, shard in weight_map.items():
        if name not in tensors or tensors[name].shard != shard:
            raise InputError(
                f"{SAFE_INDEX} lists {name} in {shard} but that shard lacks it; "
                "the index and the shards disagree: re-download the model"
            )
    ckpt = Checkpoint(folder, config, spec, tensors, shards, indexed, headers)
    if writer_probe(spec, tensors) is None:
        raise InputError(
            f"{folder}: no tensor {spec.down_proj_name(0)}; the weights do not "
            f"follow the {spec.model_type} layout"
        )
    return ckpt


def writer_probe(spec: ArchSpec, tensors: dict[str, TensorInfo]) -> str | None:
    """Block 0's down_proj weight, else (mixture of experts) its first residual writer's
    weight by name: the tensor whose dtype is the checkpoint's; None if neither exists."""
    name = spec.down_proj_name(0)
    if name in tensors:
        return name
    pattern = spec.writer_pattern()
    block0 = [n for n in sorted(tensors) if (m := pattern.match(n)) and m.group(1) == "0"]
    return next((n for n in block0 if n.endswith(".weight")), None)
