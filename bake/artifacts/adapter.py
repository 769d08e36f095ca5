"""Adapter route (mistral, qwen2, qwen3, phi3: no bias slot in HF format): a PEFT LoRA
adapter folder, written by hand, whose only effect is a bias on down_proj.

Per chosen layer l:  down_proj'(x) = down_proj(x) + B(A x) * (lora_alpha / r)
with r = 1, lora_alpha = 1, A = 0, B.weight = 0 and B.bias = v_l, so the block output
gains exactly v_l. PEFT cannot merge it (the base layer has no bias): use it unmerged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bake.artifacts.steering_dir import file_sizes, steering_dir_files, write_steering_dir
from bake.files.fileio import atomic_output_dir, check_free_space, fast_copy, write_sha256sums
from bake.model.checkpoint import Checkpoint

if TYPE_CHECKING:
    from bake.artifacts.steering import Steering

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
)


def tokenizer_files(src: Path) -> list[str]:
    """The tokenizer files of the source that an adapter folder carries."""
    return [name for name in _TOKENIZER_FILES if (src / name).is_file()]


def planned_files(ckpt: Checkpoint) -> list[str]:
    """The files write_adapter writes, relative to the output, sorted."""
    own = [ADAPTER_CONFIG, ADAPTER_WEIGHTS, "SHA256SUMS"]
    return sorted([*own, *tokenizer_files(ckpt.path), *steering_dir_files()])


def lora_key(ckpt: Checkpoint, layer: int, part: str) -> str:
    """PEFT's saved name, e.g. base_model.model.model.layers.3.mlp.down_proj.lora_B.bias."""
    return f"{_PEFT_PREFIX}{ckpt.spec.tensor_prefix(layer)}.{ckpt.spec.down_proj}.{part}"


def adapter_tensors(ckpt: Checkpoint, steering: Steering) -> dict[str, np.ndarray]:
    """lora_A (1, d_ff) = 0, lora_B.weight (d, 1) = 0, lora_B.bias (d,) = steering.rounded[l]
    (the added vector rounded as a hook adds it), stored float32."""
    tensors: dict[str, np.ndarray] = {}
    for layer, v in sorted(steering.rounded.items()):
        d_out, d_in = ckpt.tensors[ckpt.spec.down_proj_name(layer)].shape
        tensors[lora_key(ckpt, layer, "lora_A.weight")] = np.zeros((1, d_in), np.float32)
        tensors[lora_key(ckpt, layer, "lora_B.weight")] = np.zeros((d_out, 1), np.float32)
        tensors[lora_key(ckpt, layer, "lora_B.bias")] = np.asarray(v, np.float32)
    return tensors


def adapter_config(ckpt: Checkpoint, layers: list[int], base_model: str) -> dict[str, Any]:
    targets = [f"{ckpt.spec.tensor_prefix(layer)}.{ckpt.spec.down_proj}" for layer in layers]
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": 1,
        "lora_alpha": 1,
        "lora_dropout": 0.0,
        "target_modules": targets,
        "lora_bias": True,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def write_adapter(
    ckpt: Checkpoint,
    steering: Steering,
    output: Path,
    *,
    overwrite: bool,
    base_model: str | None = None,
) -> dict[str, int]:
    """Write OUT/adapter_config.json, adapter_model.safetensors, tokenizer, steering/."""
    from safetensors.numpy import save_file

    tensors = adapter_tensors(ckpt, steering)
    steering.check_written(tensors, "F32")
    check_free_space(output.parent, sum(t.nbytes for t in tensors.values()) + (1 << 20))
    config = adapter_config(ckpt, steering.layers, base_model or str(ckpt.path.resolve()))
    with atomic_output_dir(output, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        for name in tokenizer_files(ckpt.path):
            fast_copy(ckpt.path / name, tmp / name)
        write_steering_dir(
            steering, tmp, {"route": "adapter", "base_model": config["base_model_name_or_path"]}
        )
        write_sha256sums(tmp)
        return file_sizes(tmp)
