"""The architecture table: where each family keeps its decoder blocks and where a
steering constant can live (DESIGN.md, "the exactness matrix").

This is data, not probing code: a family that is not listed fails with a message
naming the ones that are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bake.errors import UnsupportedError

HfRoute = Literal["bias", "adapter", "none"]


@dataclass(frozen=True)
class ArchSpec:
    """What steerbake knows about one Hugging Face model family (config `model_type`)."""

    model_type: str
    hf_route: HfRoute
    gguf_arch: str  # llama.cpp architecture name (control-vector model hint, GGUF writer)
    gguf_bias_slot: bool  # llama.cpp's loader accepts blk.N.ffn_down.bias
    layers_path: str = "model.layers"  # module path of the decoder blocks in the *ForCausalLM
    down_proj: str = "mlp.down_proj"  # last module writing the residual stream, per block
    bias_flag: str | None = None  # config flag that creates the down_proj bias slot
    zero_biases: tuple[str, ...] = ()  # other biases the flag creates; written as zeros
    bias_divisor_key: str | None = None  # config key the MLP output is multiplied by
    gguf_writer: bool = False  # steerbake's own HF -> GGUF writer supports it
    note: str = ""  # why the route is what it is

    def tensor_prefix(self, layer: int) -> str:
        """Name prefix of block `layer`'s tensors in the safetensors files."""
        return f"{self.layers_path}.{layer}"

    def down_proj_name(self, layer: int, kind: str = "weight") -> str:
        return f"{self.tensor_prefix(layer)}.{self.down_proj}.{kind}"


_LLAMA_MLP_BIASES = ("mlp.gate_proj", "mlp.up_proj")
_NO_SLOT = "no bias slot after the MLP"
_NORM_AFTER = "a norm follows the MLP, so no constant there equals a block-output shift"
_MOE = "mixture of experts: the MLP output is a routed sum, so a constant cannot be folded in"
ARCHITECTURES: dict[str, ArchSpec] = {
    spec.model_type: spec
    for spec in (
        ArchSpec(
            "llama",
            "bias",
            "llama",
            True,
            bias_flag="mlp_bias",
            zero_biases=_LLAMA_MLP_BIASES,
            gguf_writer=True,
        ),
        ArchSpec(
            "granite",
            "bias",
            "granite",
            True,
            bias_flag="mlp_bias",
            zero_biases=_LLAMA_MLP_BIASES,
            bias_divisor_key="residual_multiplier",
        ),
        ArchSpec("mistral", "adapter", "llama", True, gguf_writer=True, note=_NO_SLOT),
        ArchSpec("qwen2", "adapter", "qwen2", False, gguf_writer=True, note=_NO_SLOT),
        ArchSpec("qwen3", "adapter", "qwen3", False, gguf_writer=True, note=_NO_SLOT),
        ArchSpec("phi3", "adapter", "phi3", False, note=_NO_SLOT),
        ArchSpec("gemma2", "none", "gemma2", False, note=_NORM_AFTER),
        ArchSpec("gemma3_text", "none", "gemma3", False, note=_NORM_AFTER),
        ArchSpec("olmo2", "none", "olmo2", False, note=_NORM_AFTER),
        ArchSpec("mixtral", "none", "llama", False, note=_MOE),
        ArchSpec("qwen3_moe", "none", "qwen3moe", False, note=_MOE),
        ArchSpec("qwen3_next", "none", "qwen3next", False, note=_MOE),
    )
}


def supported_families() -> str:
    return ", ".join(sorted(ARCHITECTURES))


def arch_spec(model_type: str | None) -> ArchSpec:
    """The table row for a config's `model_type`, or an error listing the known ones."""
    spec = ARCHITECTURES.get(model_type or "")
    if spec is None:
        raise UnsupportedError(
            f"unknown architecture {model_type!r}: steerbake supports {supported_families()}"
        )
    return spec


def gguf_route(spec: ArchSpec) -> str:
    """How steering reaches llama.cpp for this family: baked bias, or a control vector."""
    return "bias" if spec.gguf_bias_slot else "control-vector"


def choose_route(spec: ArchSpec, requested: str) -> str:
    """The Hugging Face bake route: auto -> the table's; refuse one the family lacks."""
    if spec.hf_route == "none":
        raise UnsupportedError(
            f"{spec.model_type} cannot be baked ({spec.note}); steer it with hooks "
            "(bake.runtime.hooks.hooked) or, in llama.cpp, with a control vector "
            "(steerbake cvec)"
        )
    if requested == "auto":
        return spec.hf_route
    if requested == "bias" and spec.hf_route != "bias":
        raise UnsupportedError(
            f"{spec.model_type} has no bias slot in Hugging Face format "
            f"({spec.note}); use --route adapter"
        )
    return requested
