"""`steerbake inspect`: what a model folder or GGUF is and which steering routes are exact
for it (adding a vector, and ablating a direction), read from config and safetensors headers
(or the GGUF header) only."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bake.model.arch import ArchSpec, gguf_route
from bake.model.checkpoint import open_checkpoint
from bake.model.gguf_model import GgufModel, is_gguf, open_gguf_model
from bake.model.resolve import resolve_model
from bake.options import opt


@dataclass(frozen=True)
class InspectOptions:
    as_json: bool = opt(False, "Print machine-readable JSON.", flags=("--json",))


def run_inspect(model: str | None) -> dict[str, Any]:
    path = resolve_model(model)
    if is_gguf(path):
        return _describe_gguf(open_gguf_model(path))
    ckpt = open_checkpoint(path)
    spec, cfg = ckpt.spec, ckpt.config
    shards = [
        {"file": s, "bytes": (path / s).stat().st_size, "tensors": len(ckpt.headers[s].tensors)}
        for s in ckpt.shards
    ]
    params = sum(math.prod(t.shape) for t in ckpt.tensors.values())
    return {
        "path": str(path),
        "model_type": spec.model_type,
        "architectures": cfg.get("architectures", []),
        "num_layers": ckpt.num_layers,
        "hidden_size": ckpt.hidden_size,
        "intermediate_size": cfg.get("intermediate_size"),
        "vocab_size": cfg.get("vocab_size"),
        "dtype": ckpt.dtype,
        "parameters": params,
        "tied_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "indexed": ckpt.indexed,
        "shards": shards,
        "routes": {
            "hooks": "exact (reference)",
            "hf": spec.hf_route,
            "hf_note": spec.note,
            "gguf": gguf_route(spec),
            "gguf_arch": spec.gguf_arch,
            "gguf_writer": spec.gguf_writer,
            "ablation": ablation_route(spec),
        },
    }


def ablation_route(spec: ArchSpec) -> dict[str, Any]:
    """Where an ablation (y <- y - a r r^T y on the residual writers) can live."""
    exact = spec.ablation_exact
    return {
        "hooks": "exact (reference)",
        "exact": exact,
        "hf": "orthogonalised checkpoint" if exact else "none: hooks only",
        "gguf": (
            "orthogonalised GGUF"
            if exact and spec.gguf_writer
            else "no GGUF (llama.cpp cannot ablate at run time"
            + (", and steerbake's GGUF writer lacks the family)" if exact else ")")
        ),
        "note": spec.ablation_note,
    }


def render_description(info: dict[str, Any]) -> str:
    r = info["routes"]
    hf = {
        "bias": "bias bake (down_proj bias, exact)",
        "adapter": "PEFT adapter (LoRA bias on down_proj, exact)",
        "none": f"none ({r['hf_note']}): hooks only",
    }[r["hf"]]
    gguf = (
        (
            "this file patched with blk.N.ffn_down.bias"
            if info.get("gguf")
            else "baked blk.N.ffn_down.bias"
        )
        if r["gguf"] == "bias"
        else "control vector beside an unsteered GGUF (blocks >= 1)"
    )
    size = sum(s["bytes"] for s in info["shards"])
    lines = [
        f"model        {info['path']}",
        f"architecture {info['model_type']} ({', '.join(info['architectures']) or '?'})",
        f"layers       {info['num_layers']}   hidden size {info['hidden_size']}   "
        f"intermediate {info['intermediate_size']}   vocab {info['vocab_size']}",
        f"weights      {info['parameters'] / 1e6:.2f} M parameters, {info['dtype']}, "
        f"{len(info['shards'])} shard(s), {size / 1e6:.1f} MB"
        + (", tied embeddings" if info["tied_embeddings"] else ""),
        "routes       hooks: exact (the reference)",
        f"             Hugging Face: {hf}",
        f"             llama.cpp ({r['gguf_arch']}): {gguf}",
        f"ablation     {_ablation_line(r['ablation'])}",
    ]
    if info.get("gguf"):
        lines.insert(
            1,
            "format       GGUF: transformers runs it dequantized; `steerbake convert` "
            "writes a checkpoint folder (needed by bake and the adapter route)",
        )
        if not info.get("chat_template"):
            lines.append(
                "warning      no chat template in the file: chat formats prompts its own way"
            )
    return "\n".join(lines)


def _describe_gguf(model: GgufModel) -> dict[str, Any]:
    """A model GGUF: sizes from its header, routes as for its family (the file itself can be
    patched where llama.cpp has the bias slot; transformers runs it dequantized)."""
    import gguf

    layout, spec, fp = model.layout, model.spec, model.fingerprint
    types = sorted({t.type_name for t in layout.tensors if len(t.dims) == 2})
    return {
        "path": str(model.path),
        "model_type": spec.model_type,
        "architectures": [f"GGUF arch {layout.arch}"],
        "num_layers": fp.num_layers,
        "hidden_size": fp.hidden_size,
        "intermediate_size": layout.arch_value(gguf.Keys.LLM.FEED_FORWARD_LENGTH),
        "vocab_size": layout.values.get(gguf.Keys.Tokenizer.LIST),  # arrays read as lengths
        "dtype": "/".join(types),
        "parameters": model.parameters,
        "tied_embeddings": layout.tensor("output.weight") is None,
        "indexed": False,
        "shards": [
            {"file": model.path.name, "bytes": layout.file_size, "tensors": len(layout.tensors)}
        ],
        "gguf": True,
        "chat_template": layout.string(gguf.Keys.Tokenizer.CHAT_TEMPLATE) is not None,
        "routes": {
            "hooks": "exact (reference, on the dequantized weights)",
            "hf": spec.hf_route,
            "hf_note": spec.note,
            "gguf": gguf_route(spec),
            "gguf_arch": spec.gguf_arch,
            "gguf_writer": spec.gguf_writer,
            "ablation": ablation_route(spec),
        },
    }


def _ablation_line(a: dict[str, Any]) -> str:
    if not a["exact"]:
        return f"hooks only: {a['note']}"
    return f"exact: {a['hf']}, {a['gguf']}; {a['note']}"
