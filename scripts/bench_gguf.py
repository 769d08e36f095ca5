"""Benchmark: write the F16 GGUF of a synthetic >= 1B-parameter bfloat16 checkpoint.

Builds a random Llama-shaped checkpoint (TinyLlama-1.1B shapes by default, several
safetensors shards), then in the same run measures
  - `cp` of the same shard bytes (twice: before and after the conversion),
  - `steerbake`'s convert_to_gguf(..., "F16") in a fresh process: wall time of the call
    (timed in-process after imports) and the process's peak RSS (VmHWM, imports included).
Throughput ratio = mean cp time / conversion time (target >= 0.5; also reported against
the faster cp run, the stricter figure on a noisy machine); peak RSS target <= 1 GB.
Numbers go to a JSON file and are printed. Other work on the machine skews both timings.

    .venv/bin/python scripts/bench_gguf.py [--workdir DIR] [--output bench_gguf.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.tiny_models (tokenizer) and bake from the checkout

SHAPES = dict(vocab=32000, hidden=2048, intermediate=5632, layers=22, heads=32, kv_heads=4)
SHARD_BYTES = 500 * 1024 * 1024

CHILD = r"""
import json, sys, time
from pathlib import Path
from export.llamacpp.writer import convert_to_gguf
import torch  # imported before timing, as any run of the CLI pays it up front
t = time.perf_counter()
result = convert_to_gguf(Path(sys.argv[1]), Path(sys.argv[2]), "F16", overwrite=True)
seconds = time.perf_counter() - t
# VmHWM: this process's own peak (ru_maxrss would include the parent's RSS at spawn)
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status")
               if line.startswith("VmHWM"))
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_kb / 1024, "bytes": result.bytes,
                  "tensors": result.tensors}))
"""


def tensor_shapes(s: dict[str, int]) -> dict[str, tuple[int, ...]]:
    head_dim = s["hidden"] // s["heads"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (s["vocab"], s["hidden"])}
    for i in range(s["layers"]):
        p = f"model.layers.{i}"
        shapes.update(
            {
                f"{p}.input_layernorm.weight": (s["hidden"],),
                f"{p}.self_attn.q_proj.weight": (s["hidden"], s["hidden"]),
                f"{p}.self_attn.k_proj.weight": (s["kv_heads"] * head_dim, s["hidden"]),
                f"{p}.self_attn.v_proj.weight": (s["kv_heads"] * head_dim, s["hidden"]),
                f"{p}.self_attn.o_proj.weight": (s["hidden"], s["hidden"]),
                f"{p}.post_attention_layernorm.weight": (s["hidden"],),
                f"{p}.mlp.gate_proj.weight": (s["intermediate"], s["hidden"]),
                f"{p}.mlp.up_proj.weight": (s["intermediate"], s["hidden"]),
                f"{p}.mlp.down_proj.weight": (s["hidden"], s["intermediate"]),
            }
        )
    shapes["model.norm.weight"] = (s["hidden"],)
    shapes["lm_head.weight"] = (s["vocab"], s["hidden"])
    return shapes


def build_checkpoint(folder: Path, s: dict[str, int]) -> int:
    """Random bfloat16 weights ~N(0, 0.02) in shards of ~500 MB; returns the parameter count."""
    from bake.files.tensor_bytes import f32_to_bf16_bits, write_safetensors
    from tests.tiny_models import build_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pool = f32_to_bf16_bits(rng.normal(0.0, 0.02, size=32 * 1024 * 1024).astype(np.float32))
    shapes = tensor_shapes(s)
    shards: list[dict[str, tuple[str, tuple[int, ...], bytes]]] = [{}]
    size = 0
    for name, shape in shapes.items():
        n = int(np.prod(shape))
        start = int(rng.integers(0, pool.size - n)) if n < pool.size else 0
        data = np.resize(pool[start:], n) if n >= pool.size else pool[start : start + n]
        if size + 2 * n > SHARD_BYTES and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][name] = ("BF16", shape, data.astype("<u2").tobytes())
        size += 2 * n
    weight_map = {}
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(folder / fname, shard)
        weight_map.update(dict.fromkeys(shard, fname))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    (folder / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "hidden_act": "silu",
                "vocab_size": s["vocab"],
                "hidden_size": s["hidden"],
                "intermediate_size": s["intermediate"],
                "num_hidden_layers": s["layers"],
                "num_attention_heads": s["heads"],
                "num_key_value_heads": s["kv_heads"],
                "max_position_embeddings": 2048,
                "rms_norm_eps": 1e-5,
                "tie_word_embeddings": False,
                "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
                "dtype": "bfloat16",
            }
        )
    )
    build_tokenizer(folder)  # 384 BPE tokens; ids < vocab_size, the rest are padding
    return sum(int(np.prod(v)) for v in shapes.values())


def time_cp(src: Path, dest: Path) -> float:
    dest.mkdir(parents=True, exist_ok=True)
    files = sorted(src.glob("*.safetensors"))
    start = time.perf_counter()
    for f in files:
        subprocess.run(["cp", str(f), str(dest / f.name)], check=True)
    seconds = time.perf_counter() - start
    shutil.rmtree(dest)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/steerbake-bench-gguf"))
    ap.add_argument("--output", type=Path, default=Path("bench_gguf.json"))
    ap.add_argument("--keep", action="store_true", help="Keep the synthetic checkpoint.")
    args = ap.parse_args()
    repo = REPO
    ckpt = args.workdir / "checkpoint"
    if not (ckpt / "config.json").exists():
        print(f"building the synthetic checkpoint in {ckpt} ...", flush=True)
        params = build_checkpoint(ckpt, SHAPES)
    else:
        params = sum(int(np.prod(v)) for v in tensor_shapes(SHAPES).values())
    shard_bytes = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
    cp_before = time_cp(ckpt, args.workdir / "cp")
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(ckpt), str(args.workdir / "out.gguf")],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=repo,
    )
    conv = json.loads(proc.stdout.strip().splitlines()[-1])
    cp_after = time_cp(ckpt, args.workdir / "cp")
    cp_seconds = (cp_before + cp_after) / 2
    result = {
        "parameters": params,
        "shards": len(list(ckpt.glob("*.safetensors"))),
        "source_bytes": shard_bytes,
        "gguf_bytes": conv["bytes"],
        "tensors": conv["tensors"],
        "cp_seconds": [round(cp_before, 3), round(cp_after, 3)],
        "gguf_f16_seconds": round(conv["seconds"], 3),
        "cp_mb_per_s": round(shard_bytes / cp_seconds / 1e6, 1),
        "gguf_mb_per_s": round(shard_bytes / conv["seconds"] / 1e6, 1),
        "throughput_ratio_vs_cp": round(cp_seconds / conv["seconds"], 3),
        "throughput_ratio_vs_fastest_cp": round(min(cp_before, cp_after) / conv["seconds"], 3),
        "peak_rss_mb": round(conv["peak_rss_mb"], 1),
        "targets": {"throughput_ratio_vs_cp": ">= 0.5", "peak_rss_mb": "<= 1024"},
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    (args.workdir / "out.gguf").unlink(missing_ok=True)
    if not args.keep:
        shutil.rmtree(ckpt, ignore_errors=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
