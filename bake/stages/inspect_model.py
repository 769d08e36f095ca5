"""`steerbake inspect`: what a model folder is and which steering routes are exact for it,
read from config and safetensors headers only."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bake.model.arch import gguf_route
from bake.model.checkpoint import open_checkpoint
from bake.model.resolve import resolve_model
from bake.options import opt


@dataclass(frozen=True)
class InspectOptions:
    as_json: bool = opt(False, "Print machine-readable JSON.", flags=("--json",))


def run_inspect(model: str | None) -> dict[str, Any]:
    path = resolve_model(model)
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
        },
    }


def render_description(info: dict[str, Any]) -> str:
    r = info["routes"]
    hf = {
        "bias": "bias bake (down_proj bias, exact)",
        "adapter": "PEFT adapter (LoRA bias on down_proj, exact)",
        "none": f"none ({r['hf_note']}): hooks only",
    }[r["hf"]]
    gguf = (
        "baked blk.N.ffn_down.bias"
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
    ]
    return "\n".join(lines)
