"""The architecture table: where each family keeps its decoder blocks, where a steering
constant can live (DESIGN.md, "the exactness matrix") and which modules write the residual
stream (where an ablation acts, and which tensors fold it).

This is data, not probing code: a family that is not listed fails with a message
naming the ones that are.
"""

from __future__ import annotations

import re
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
    # Ablation. hook_sites: per block, groups of alternative module paths (exactly one of
    # each group is present in a block) whose output is added to the residual stream; the
    # hooks project those outputs. writer_tensors: regexes, relative to the block prefix and
    # without .weight/.bias, of the tensors that compute those outputs linearly, so that
    # W <- (I - a r r^T) W folds the hook exactly; () when no tensor does (hooks only).
    hook_sites: tuple[tuple[str, ...], ...] = (("self_attn.o_proj",), ("mlp.down_proj",))
    writer_tensors: tuple[str, ...] = (r"self_attn\.o_proj", r"mlp\.down_proj")
    # config keys giving the experts per MoE block (the first present; all of them must fold)
    expert_count_keys: tuple[str, ...] = ()
    embed_module: str = "model.embed_tokens"  # token embedding, stored (vocab, d)
    ablation_note: str = ""  # why ablation is (or is not) exact for the family

    def tensor_prefix(self, layer: int) -> str:
        """Name prefix of block `layer`'s tensors in the safetensors files."""
        return f"{self.layers_path}.{layer}"

    def down_proj_name(self, layer: int, kind: str = "weight") -> str:
        return f"{self.tensor_prefix(layer)}.{self.down_proj}.{kind}"

    @property
    def embed_tensor(self) -> str:
        return f"{self.embed_module}.weight"

    @property
    def ablation_exact(self) -> bool:
        """Whether an ablation folds into the weights (else: hooks only)."""
        return bool(self.writer_tensors)

    def writer_pattern(self) -> re.Pattern[str]:
        """Matches the full name of every writer tensor: group 1 is the block index."""
        inner = "|".join(self.writer_tensors) or "(?!)"
        return re.compile(rf"^{re.escape(self.layers_path)}\.(\d+)\.(?:{inner})\.(?:weight|bias)$")


_LLAMA_MLP_BIASES = ("mlp.gate_proj", "mlp.up_proj")
_NO_SLOT = "no bias slot after the MLP"
_NORM_AFTER = "a norm follows the MLP, so no constant there equals a block-output shift"
_MOE = "mixture of experts: the MLP output is a routed sum, so a constant cannot be folded in"
_LINEAR_WRITERS = "the attention output and MLP down projections write the residual stream"
_NORM_WRITES = (
    "a norm with a gain follows the writers, so no weight folds the projection of what "
    "the block writes: hooks only"
)
_MOE_WRITERS = (
    "exact when every expert's down projection (and the shared expert's) is orthogonalised: "
    "the routed sum of projected outputs is the projected sum"
)
# transformers 5 writes num_local_experts for every family; Hub configs of Qwen MoE models
# say num_experts
_EXPERT_KEYS = ("num_experts", "num_local_experts")
_POST_NORMS = (("post_attention_layernorm",), ("post_feedforward_layernorm",))
_MOE_SITES = (("self_attn.o_proj",), ("mlp",))
_MOE_MLP_WRITERS = (
    r"mlp\.down_proj",
    r"mlp\.experts\.\d+\.down_proj",
    r"mlp\.shared_expert\.down_proj",
)
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
            ablation_note=_LINEAR_WRITERS,
        ),
        ArchSpec(
            "granite",
            "bias",
            "granite",
            True,
            bias_flag="mlp_bias",
            zero_biases=_LLAMA_MLP_BIASES,
            bias_divisor_key="residual_multiplier",
            ablation_note=_LINEAR_WRITERS,
        ),
        ArchSpec(
            "mistral",
            "adapter",
            "llama",
            True,
            gguf_writer=True,
            note=_NO_SLOT,
            ablation_note=_LINEAR_WRITERS,
        ),
        ArchSpec(
            "qwen2",
            "adapter",
            "qwen2",
            False,
            gguf_writer=True,
            note=_NO_SLOT,
            ablation_note=_LINEAR_WRITERS,
        ),
        ArchSpec(
            "qwen3",
            "adapter",
            "qwen3",
            False,
            gguf_writer=True,
            note=_NO_SLOT,
            ablation_note=_LINEAR_WRITERS,
        ),
        ArchSpec("phi3", "adapter", "phi3", False, note=_NO_SLOT, ablation_note=_LINEAR_WRITERS),
        *(
            ArchSpec(
                model_type,
                "none",
                gguf_arch,
                False,
                note=_NORM_AFTER,
                hook_sites=_POST_NORMS,
                writer_tensors=(),
                ablation_note=_NORM_WRITES,
            )
            for model_type, gguf_arch in (
                ("gemma2", "gemma2"),
                ("gemma3_text", "gemma3"),
                ("olmo2", "olmo2"),
            )
        ),
        ArchSpec(
            "mixtral",
            "none",
            "llama",
            False,
            note=_MOE,
            hook_sites=_MOE_SITES,
            writer_tensors=(r"self_attn\.o_proj", r"block_sparse_moe\.experts\.\d+\.w2"),
            expert_count_keys=_EXPERT_KEYS,
            ablation_note=_MOE_WRITERS,
        ),
        ArchSpec(
            "qwen3_moe",
            "none",
            "qwen3moe",
            False,
            note=_MOE,
            hook_sites=_MOE_SITES,
            writer_tensors=(r"self_attn\.o_proj", *_MOE_MLP_WRITERS),
            expert_count_keys=_EXPERT_KEYS,
            ablation_note=_MOE_WRITERS,
        ),
        ArchSpec(
            "qwen3_next",
            "none",
            "qwen3next",
            False,
            note=_MOE,
            hook_sites=(("self_attn.o_proj", "linear_attn.out_proj"), ("mlp",)),
            writer_tensors=(r"self_attn\.o_proj", r"linear_attn\.out_proj", *_MOE_MLP_WRITERS),
            expert_count_keys=_EXPERT_KEYS,
            ablation_note=_MOE_WRITERS,
        ),
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


def choose_route(spec: ArchSpec, requested: str, kind: str = "add") -> str:
    """The Hugging Face bake route for a plan of `kind`: auto -> the table's; refuse one the
    family lacks. An ablation folds into the weights (`ablate`; `ablate+bias` for `both`,
    whose additive part needs the bias slot)."""
    if kind != "add":
        return _ablation_route(spec, requested, kind)
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


def _ablation_route(spec: ArchSpec, requested: str, kind: str) -> str:
    if requested not in ("auto", "ablate", "ablate+bias"):
        raise UnsupportedError(
            f"a plan of kind {kind!r} is baked by orthogonalising the weights; drop --route "
            f"{requested} (it applies to additive plans)"
        )
    if not spec.ablation_exact:
        raise UnsupportedError(
            f"{spec.model_type} cannot be orthogonalised exactly ({spec.ablation_note}); steer "
            "it with hooks (bake.runtime.hooks.hooked)"
        )
    if kind == "both" and spec.hf_route != "bias":
        raise UnsupportedError(
            f"{spec.model_type} has no bias slot in Hugging Face format ({spec.note}), so the "
            "additive part of a `both` plan cannot be baked beside the orthogonalised weights; "
            "bake an `ablate` plan, or build for llama.cpp: steerbake gguf MODEL --plan PLAN "
            "(orthogonalised) plus steerbake cvec PLAN --model MODEL (the additive part)"
        )
    return "ablate+bias" if kind == "both" else "ablate"
