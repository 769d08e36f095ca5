"""A GGUF file as MODEL: transformers' GGUF loader runs it (dequantized to the asked dtype)
wherever a model is run; steerbake reads its header itself for everything else.

The fingerprint uses the model_type transformers gives the file after its own mapping of
GGUF architectures (llama.cpp writes Mistral as `llama`, Gemma 3 as `gemma3` for the text
model, ...): `transformers_model_type` follows that mapping from the header alone, and the
loader checks it against the config transformers builds, so the two cannot drift apart.

Refused as MODEL: a GGUF that carries steering (a `steerbake.plan` key, or ffn_down biases),
because transformers' loader silently drops tensors it has no slot for and would run the
unsteered model; and, before loading, a file whose dequantized weights would not fit in
memory (estimated from the tensor shapes).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from bake.errors import InputError
from bake.files.gguf_file import STEERBAKE_PLAN_KEY, GgufLayout, ffn_down_bias_blocks, read_layout
from bake.model.arch import ArchSpec, arch_spec
from bake.model.fingerprint import Fingerprint

GGUF_SUFFIX = ".gguf"
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# transformers' renames of llama.cpp architectures (modeling_gguf_pytorch_utils)
_RENAMES = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gemma3": "gemma3_text"}
# loading dequantizes every tensor to float32 first, then casts: peak ~2 copies
_LOAD_PEAK_FACTOR = 2.0
_LOAD_OVERHEAD = 512 * 1024 * 1024


def is_gguf(path: Path) -> bool:
    return path.suffix.lower() == GGUF_SUFFIX and path.is_file()


def transformers_model_type(layout: GgufLayout) -> str:
    """The config model_type transformers' GGUF loader gives this file."""
    arch = layout.arch
    name = (layout.string(gguf.Keys.General.NAME) or "").lower()
    if "llama" in arch and "mistral" in name:
        return "mistral"
    return _RENAMES.get(arch, arch)


@dataclass
class GgufModel:
    """A model GGUF, read from its header (the weights stay on disk until loaded)."""

    path: Path  # the .gguf file
    layout: GgufLayout = field(repr=False)
    spec: ArchSpec
    dtype: str = "F32"  # steering rounds to F32: llama.cpp adds biases in F32

    @property
    def fingerprint(self) -> Fingerprint:
        hidden = self.layout.arch_value(gguf.Keys.LLM.EMBEDDING_LENGTH)
        blocks = self.layout.arch_value(gguf.Keys.LLM.BLOCK_COUNT)
        return Fingerprint(self.spec.model_type, int(hidden), int(blocks))

    @property
    def parameters(self) -> int:
        return sum(math.prod(t.dims) for t in self.layout.tensors)

    def load_bytes(self, dtype: str) -> int:
        """Estimated peak memory of loading it with transformers in `dtype`."""
        size = DTYPE_BYTES.get(dtype, 4)
        return int(self.parameters * size * _LOAD_PEAK_FACTOR) + _LOAD_OVERHEAD

    def check_fits(self, dtype: str) -> None:
        """Refuse in one line when loading would not fit in the memory available."""
        need, free = self.load_bytes(dtype), available_memory()
        if free is not None and need > free:
            raise InputError(
                f"loading {self.path.name} with transformers in {dtype} needs about "
                f"{need / 1e9:.1f} GB and {free / 1e9:.1f} GB is available; pass --dtype "
                f"bfloat16, or convert it once (`steerbake convert {self.path.name} -o DIR`) "
                "and use the folder"
            )


def open_gguf_model(path: Path) -> GgufModel:
    """Read and check a model GGUF's header: a known family, not carrying steering."""
    path = Path(path)
    layout = read_layout(path)
    if not layout.arch or layout.arch == "controlvector":
        raise InputError(
            f"{path} is {'a control vector' if layout.arch else 'not a model GGUF'}; "
            "pass a model .gguf as MODEL"
        )
    for key in (gguf.Keys.LLM.EMBEDDING_LENGTH, gguf.Keys.LLM.BLOCK_COUNT):
        if layout.arch_value(key) is None:
            raise InputError(f"{path}: no {key.format(arch=layout.arch)} key; not a model GGUF")
    steered = ffn_down_bias_blocks(layout)
    if STEERBAKE_PLAN_KEY in layout.values or steered:
        what = f"ffn_down biases on blocks {steered}" if steered else STEERBAKE_PLAN_KEY
        raise InputError(
            f"{path} carries steering ({what}) that transformers' GGUF loader would silently "
            "drop, so it would run the unsteered model; pass the unsteered GGUF as MODEL"
        )
    return GgufModel(path, layout, arch_spec(transformers_model_type(layout)))


def available_memory() -> int | None:
    """Bytes of memory available now (Linux MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_loaded_model_type(model: GgufModel, config: Any) -> None:
    """transformers' own model_type for the loaded file must be the one we fingerprinted."""
    loaded = getattr(config, "model_type", None)
    if loaded != model.spec.model_type:
        raise InputError(
            f"transformers loads {model.path.name} as {loaded!r}, steerbake read "
            f"{model.spec.model_type!r} from its header; please report it"
        )
