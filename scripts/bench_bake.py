"""Benchmark the streaming bake against the naive path users take today.

Builds synthetic bfloat16 Llama checkpoints (>= 1B parameters, several shards) at two
sizes, then measures, each in its own subprocess timed after its imports:
  copy   steerbake bake (shards copied)
  link   steerbake bake --link (shards symlinked)
  naive  transformers from_pretrained(mlp_bias=True) -> set biases -> save_pretrained
and, for ablation plans (`--parts ablation`; a 4-layer plan and an all-layer plan with the
embedding, one direction, strength 1: Arditi et al.'s setting):
  copy   steerbake bake: shards holding changed tensors rewritten, the others copied
  link   steerbake bake --link: the rewritten shards written, the others symlinked
  naive  transformers from_pretrained -> W <- (I - r r^T) W in float32 -> save_pretrained
Writes wall time, CPU time (user + system, every thread), peak RSS (VmHWM of that process)
and the 1-minute load average when it ended to a JSON file and prints them. On a shared
machine the wall time follows the load; the CPU time much less. Every timed step starts
after `sync`, so no step pays for the previous one's writeback; `cp -r` of the same folder,
and `cp` of just the shards an ablation rewrites, are timed the same way as the disk's
yardstick (`cp` writes into the page cache; the bake writes with O_DIRECT and hashes every
byte it writes for SHA256SUMS, about 1.2 GB/s on one core of the 2-core test machine).

    .venv/bin/python scripts/bench_bake.py --workdir /tmp/bench-bake --out bench-out/bake.json
    .venv/bin/python scripts/bench_bake.py --parts ablation --sizes 1.1B \
        --out bench-out/bake-ablation.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SIZES = {  # name -> (layers, hidden, intermediate, vocab)
    "1.1B": (22, 2048, 5632, 32000),
    "2.2B": (46, 2048, 5632, 32000),
}
SHARD_BYTES = 1 << 30


def _tensor_shapes(layers: int, d: int, ff: int, vocab: int) -> list[tuple[str, tuple]]:
    kv = d // 4  # 4 kv heads of 128 when d = 2048 (grouped-query attention)
    shapes: list[tuple[str, tuple]] = [("model.embed_tokens.weight", (vocab, d))]
    for i in range(layers):
        p = f"model.layers.{i}"
        shapes += [
            (f"{p}.input_layernorm.weight", (d,)),
            (f"{p}.self_attn.q_proj.weight", (d, d)),
            (f"{p}.self_attn.k_proj.weight", (kv, d)),
            (f"{p}.self_attn.v_proj.weight", (kv, d)),
            (f"{p}.self_attn.o_proj.weight", (d, d)),
            (f"{p}.post_attention_layernorm.weight", (d,)),
            (f"{p}.mlp.gate_proj.weight", (ff, d)),
            (f"{p}.mlp.up_proj.weight", (ff, d)),
            (f"{p}.mlp.down_proj.weight", (d, ff)),
        ]
    return [*shapes, ("model.norm.weight", (d,)), ("lm_head.weight", (vocab, d))]


def _write_shard(path: Path, tensors: list[tuple[str, tuple]], noise: np.ndarray) -> None:
    """Stream a bf16 safetensors shard; data = slices of a fixed noise block."""
    header, offset = {}, 0
    for name, shape in tensors:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for _name, shape in tensors:
            n = int(np.prod(shape))
            while n > 0:
                k = min(n, noise.size)
                f.write(noise[:k].tobytes())
                n -= k


def build_checkpoint(folder: Path, layers: int, d: int, ff: int, vocab: int) -> int:
    """Synthetic sharded checkpoint; returns the parameter count."""
    from bake.files.tensor_bytes import f32_to_bf16_bits

    folder.mkdir(parents=True, exist_ok=True)
    noise = f32_to_bf16_bits(np.random.default_rng(0).normal(0, 0.02, 1 << 24).astype(np.float32))
    shapes = _tensor_shapes(layers, d, ff, vocab)
    shards: list[list[tuple[str, tuple]]] = [[]]
    size = 0
    for name, shape in shapes:
        n = int(np.prod(shape)) * 2
        if size + n > SHARD_BYTES and shards[-1]:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += n
    weight_map, total = {}, 0
    for k, group in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        _write_shard(folder / fname, group, noise)
        for name, shape in group:
            weight_map[name] = fname
            total += int(np.prod(shape)) * 2
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": d,
        "intermediate_size": ff,
        "num_hidden_layers": layers,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "vocab_size": vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
        "mlp_bias": False,
        "hidden_act": "silu",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return total // 2


def make_plan(model: Path, folder: Path, layers: int, d: int) -> Path:
    from bake.artifacts.plan import make_plan as _make_plan
    from bake.artifacts.vectors import SteeringVectors
    from bake.model.fingerprint import Fingerprint

    rng = np.random.default_rng(1)
    raw = {i: rng.normal(size=d) for i in range(layers)}
    folder.mkdir(parents=True, exist_ok=True)
    SteeringVectors.from_raw(raw, Fingerprint("llama", d, layers)).save(folder / "v.safetensors")
    plan = _make_plan(folder / "v.safetensors", list(range(1, layers * 4 // 5)), -0.15)
    plan.save(folder / "plan.json")
    return folder / "plan.json"


# Each child imports first, then times only the work, and prints JSON on its last line.
# Peak RSS is the child's own VmHWM: ru_maxrss would carry the parent's peak across exec.
PEAK = """
import resource
def peak_rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
def cpu_seconds():  # user + system time of every thread of this process
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
"""
CHILD_OURS = (
    PEAK
    + """
import json, sys, time
from bake.artifacts.steering import open_steering
from bake.stages.bake import run_bake
t, cpu = time.perf_counter(), cpu_seconds()
steering = open_steering(sys.argv[1], sys.argv[2])
run_bake(steering, sys.argv[3], link=sys.argv[4] == "link")
print(json.dumps({"seconds": time.perf_counter() - t, "cpu_seconds": cpu_seconds() - cpu,
                  "peak_rss_mb": peak_rss_mb()}))
"""
)
CHILD_NAIVE = (
    PEAK
    + """
import json, sys, time
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from bake.artifacts.plan import Plan
t, cpu = time.perf_counter(), cpu_seconds()
plan = Plan.load(sys.argv[2])
from bake.artifacts.steering import open_plan_only
cfg = AutoConfig.from_pretrained(sys.argv[1]); cfg.mlp_bias = True
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], config=cfg, dtype=torch.bfloat16)
with torch.no_grad():
    for i, block in enumerate(model.model.layers):
        for m in (block.mlp.gate_proj, block.mlp.up_proj, block.mlp.down_proj):
            m.bias.zero_()
    for layer, v in open_plan_only(plan).added.items():
        model.model.layers[layer].mlp.down_proj.bias.copy_(torch.from_numpy(v))
model.save_pretrained(sys.argv[3])
print(json.dumps({"seconds": time.perf_counter() - t, "cpu_seconds": cpu_seconds() - cpu,
                  "peak_rss_mb": peak_rss_mb()}))
"""
)


CHILD_NAIVE_ABLATE = (
    PEAK
    + """
import json, sys, time
import torch
from transformers import AutoModelForCausalLM
t, cpu = time.perf_counter(), cpu_seconds()
from bake.artifacts.steering import open_plan_only
steering = open_plan_only(sys.argv[2])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
with torch.no_grad():
    for layer, p in steering.projections.items():
        r = torch.from_numpy(p.direction).float()
        block = model.model.layers[layer]
        for linear in (block.self_attn.o_proj, block.mlp.down_proj):
            w = linear.weight.float()  # (d, in)
            linear.weight.copy_(w - p.strength * torch.outer(r, r @ w))
    e = steering.embed_projection
    if e is not None:
        r = torch.from_numpy(e.direction).float()
        emb = model.model.embed_tokens.weight
        w = emb.float()  # (vocab, d)
        emb.copy_(w - e.strength * torch.outer(w @ r, r))
model.save_pretrained(sys.argv[3])
print(json.dumps({"seconds": time.perf_counter() - t, "cpu_seconds": cpu_seconds() - cpu,
                  "peak_rss_mb": peak_rss_mb()}))
"""
)


def run_child(code: str, *args: str) -> dict:
    os.sync()  # start every timed step with no dirty pages left by the one before
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result | {"load_average": os.getloadavg()[0]}  # others' work on a shared machine


def time_cp(src: Path, dst: Path) -> float:
    os.sync()
    t = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    return time.perf_counter() - t


def make_ablation_plan(folder: Path, layers: int, d: int, chosen: list[int], embed: bool) -> Path:
    """Strength 1 along one layer's direction in every chosen block (and the embedding)."""
    from bake.artifacts.plan import Ablation, EmbedAblation
    from bake.artifacts.plan import make_plan as _make_plan
    from bake.artifacts.vectors import SteeringVectors
    from bake.model.fingerprint import Fingerprint

    rng = np.random.default_rng(2)
    folder.mkdir(parents=True, exist_ok=True)
    raw = {i: rng.normal(size=d) for i in range(layers)}
    SteeringVectors.from_raw(raw, Fingerprint("llama", d, layers)).save(folder / "v.safetensors")
    source = layers // 2
    ablation = Ablation(1.0, source, EmbedAblation(source, 1.0) if embed else None)
    plan = _make_plan(folder / "v.safetensors", chosen, 0.0, kind="ablate", ablation=ablation)
    plan.save(folder / "plan.json")
    return folder / "plan.json"


def time_cp_files(files: list[Path], dst: Path) -> float:
    """`cp` of just these files into dst (the bytes an ablation bake must rewrite)."""
    dst.mkdir(parents=True)
    os.sync()
    t = time.perf_counter()
    subprocess.run(["cp", *map(str, files), str(dst)], check=True)
    return time.perf_counter() - t


def bench_ablation(work: Path, layers: int, d: int, cp_seconds: float, naive: bool) -> dict:
    """A 4-layer plan and an all-layer plan (+ embedding): copy and link mode vs cp and the
    naive transformers path."""
    model = work / "model"
    plans = {
        "4 layers": (list(range(layers // 2 + 1, layers // 2 + 5)), False),
        "all layers + embedding": (list(range(layers)), True),
    }
    out: dict = {}
    for name, (chosen, embed) in plans.items():
        plan = make_ablation_plan(work / f"plan-{len(chosen)}", layers, d, chosen, embed)
        row: dict = {"layers": len(chosen), "embedding": embed}
        for mode in ("copy", "link"):
            dest = work / f"ablate-{mode}"
            row[mode] = run_child(CHILD_OURS, str(model), str(plan), str(dest), mode)
            record = json.loads((dest / "steering" / "bake.json").read_text())
            rewritten = [model / s for s in record["rewritten_shards"]]
            shutil.rmtree(dest)
        row["rewritten_shards"] = len(rewritten)
        row["rewritten_bytes"] = sum(p.stat().st_size for p in rewritten)
        row["cp_all_seconds"] = cp_seconds
        row["cp_rewritten_seconds"] = time_cp_files(rewritten, work / "cp-rewritten")
        shutil.rmtree(work / "cp-rewritten")
        row["copy_vs_cp_all"] = row["copy"]["seconds"] / cp_seconds
        row["link_vs_cp_rewritten"] = row["link"]["seconds"] / row["cp_rewritten_seconds"]
        if naive:
            dest = work / "ablate-naive"
            row["naive"] = run_child(CHILD_NAIVE_ABLATE, str(model), str(plan), str(dest))
            shutil.rmtree(dest)
            row["copy_speedup"] = row["naive"]["seconds"] / row["copy"]["seconds"]
            row["copy_rss_fraction"] = row["copy"]["peak_rss_mb"] / row["naive"]["peak_rss_mb"]
        out[name] = row
        print(json.dumps({name: row}, indent=2), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench-bake"))
    ap.add_argument("--out", type=Path, default=Path("bench-out/bake.json"))
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--parts", default="add,ablation", help="add, ablation or both")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    results: dict = {"python": sys.version.split()[0], "sizes": {}}
    for name in args.sizes.split(","):
        layers, d, ff, vocab = SIZES[name]
        work = args.workdir / name
        shutil.rmtree(work, ignore_errors=True)
        params = build_checkpoint(work / "model", layers, d, ff, vocab)
        plan = make_plan(work / "model", work / "plan", layers, d)
        row: dict = {
            "parameters": params,
            "bytes": sum(p.stat().st_size for p in (work / "model").iterdir()),
        }
        row["cp_seconds"] = time_cp(work / "model", work / "cp-copy")
        shutil.rmtree(work / "cp-copy")
        if "ablation" in parts:
            row["ablation"] = bench_ablation(
                work, layers, d, row["cp_seconds"], not args.skip_naive
            )
        for mode in ("copy", "link") if "add" in parts else ():
            row[mode] = run_child(
                CHILD_OURS, str(work / "model"), str(plan), str(work / f"out-{mode}"), mode
            )
        if "add" in parts:
            row["copy_vs_cp"] = row["copy"]["seconds"] / row["cp_seconds"]
        if not args.skip_naive and "add" in parts:
            row["naive"] = run_child(
                CHILD_NAIVE, str(work / "model"), str(plan), str(work / "out-naive")
            )
            row["naive_vs_cp"] = row["naive"]["seconds"] / row["cp_seconds"]
            for mode in ("copy", "link"):
                row[f"{mode}_speedup"] = row["naive"]["seconds"] / row[mode]["seconds"]
                row[f"{mode}_rss_fraction"] = row[mode]["peak_rss_mb"] / row["naive"]["peak_rss_mb"]
        results["sizes"][name] = row
        shutil.rmtree(work, ignore_errors=True)
        print(json.dumps({name: row}, indent=2), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
