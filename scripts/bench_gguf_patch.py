"""Benchmark `steerbake gguf --base-gguf` (export.gguf_patch) on a GGUF of more than 2 GB.

Writes a synthetic llama-arch GGUF with gguf's GGUFWriter, streaming: a 128k-token string
vocabulary in the header, an F16 token embedding, Q8_0 block weights and output, F32 norms
(tensor bytes are repeated noise: a valid GGUF with the right metadata for the patcher, not
a runnable model). Then, alternating, times `cp` of the file and the patch of the same file
with a plan over most blocks, each in its own process started after `sync`; the patch child
times its work after its imports and reports its peak RSS (VmHWM). The `sync` after each
step is timed too, so numbers with and without writeback are both reported. The patched
file is parsed back and its biases checked. JSON to --out, and printed.

    .venv/bin/python scripts/bench_gguf_patch.py --workdir /tmp/bench-gguf-patch \
        --out bench-out/gguf_patch.json

Targets (issue 8): patch wall time <= 1.5 x cp, peak RSS <= 500 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

LAYOUT = {"layers": 24, "hidden": 2048, "ffn": 8192, "kv": 512, "vocab": 128256}
NOISE_BYTES = 1 << 24


def tensor_plan(layers: int, d: int, ff: int, kv: int, vocab: int) -> list[tuple[str, tuple]]:
    """(GGUF name, (rows, cols) or (n,), type name) in a llama.cpp converter's order."""
    rows: list[tuple[str, tuple]] = [("token_embd.weight", ((vocab, d), "F16"))]
    for i in range(layers):
        b = f"blk.{i}"
        rows += [
            (f"{b}.attn_norm.weight", ((d,), "F32")),
            (f"{b}.attn_q.weight", ((d, d), "Q8_0")),
            (f"{b}.attn_k.weight", ((kv, d), "Q8_0")),
            (f"{b}.attn_v.weight", ((kv, d), "Q8_0")),
            (f"{b}.attn_output.weight", ((d, d), "Q8_0")),
            (f"{b}.ffn_norm.weight", ((d,), "F32")),
            (f"{b}.ffn_gate.weight", ((ff, d), "Q8_0")),
            (f"{b}.ffn_up.weight", ((ff, d), "Q8_0")),
            (f"{b}.ffn_down.weight", ((d, ff), "Q8_0")),
        ]
    return [*rows, ("output_norm.weight", ((d,), "F32")), ("output.weight", ((vocab, d), "Q8_0"))]


def write_synthetic_gguf(path: Path, layers: int, d: int, ff: int, kv: int, vocab: int) -> int:
    """Stream the file: header through GGUFWriter, data in noise-block chunks. Returns bytes."""
    import gguf

    q = gguf.GGMLQuantizationType
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name("synthetic-bench")
    writer.add_block_count(layers)
    writer.add_context_length(4096)
    writer.add_embedding_length(d)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(d // 128)
    writer.add_head_count_kv(kv // 128)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(500000.0)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"tok{i}" for i in range(vocab)])
    writer.add_token_types([1] * vocab)
    sizes = []
    for name, (shape, tname) in tensor_plan(layers, d, ff, kv, vocab):
        block, type_size = gguf.GGML_QUANT_SIZES[q[tname]]
        nbytes = int(np.prod(shape)) // block * type_size
        writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=q[tname])
        sizes.append(nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    assert writer.fout is not None
    fout = writer.fout[0]
    align = writer.data_alignment
    noise = np.random.default_rng(0).integers(0, 255, NOISE_BYTES, dtype=np.uint8).tobytes()
    fout.write(b"\0" * (-fout.tell() % align))
    for n in sizes:
        left = n
        while left > 0:
            k = min(left, len(noise))
            fout.write(noise[:k])
            left -= k
        fout.write(b"\0" * (-n % align))
    writer.close()
    return path.stat().st_size


def write_plan(folder: Path, layers: int, d: int) -> Path:
    from bake.artifacts.plan import make_plan
    from bake.artifacts.vectors import SteeringVectors
    from bake.model.fingerprint import Fingerprint

    rng = np.random.default_rng(1)
    raw = {i: rng.normal(size=d) for i in range(layers)}
    folder.mkdir(parents=True, exist_ok=True)
    SteeringVectors.from_raw(raw, Fingerprint("llama", d, layers)).save(folder / "v.safetensors")
    plan = make_plan(folder / "v.safetensors", list(range(1, max(2, layers * 4 // 5))), -0.15)
    plan.save(folder / "plan.json")
    return folder / "plan.json"


# The child imports first, times only the patch, and prints JSON on its last line. Peak RSS
# is the child's own VmHWM (ru_maxrss would carry the parent's peak across exec).
CHILD = """
import json, sys, time
t0 = time.perf_counter()
from export.llamacpp.patch import open_gguf_steering, patch_gguf
t = time.perf_counter()
result = patch_gguf(open_gguf_steering(sys.argv[1], sys.argv[2]), sys.argv[3], overwrite=True)
seconds = time.perf_counter() - t
hwm = next(int(line.split()[1]) / 1024 for line in open("/proc/self/status")
           if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "import_seconds": t - t0, "peak_rss_mb": hwm,
                  "summary": result.summary()}))
"""


def timed(cmd: list[str]) -> tuple[float, float, str]:
    """(seconds of the command, seconds of the `sync` after it, its last stdout line)."""
    os.sync()
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{proc.stderr[-3000:]}")
    t = time.perf_counter()
    os.sync()
    lines = proc.stdout.strip().splitlines()
    return seconds, time.perf_counter() - t, lines[-1] if lines else ""


def check_output(base: Path, out: Path, plan: Path) -> dict:
    """The patched file parses, has one F32 bias per plan layer holding the plan's vector."""
    from bake.artifacts.plan import Plan
    from bake.artifacts.steering import open_plan_only
    from bake.files.gguf_file import read_layout

    src, dst = read_layout(base), read_layout(out)
    vectors = open_plan_only(Plan.load(plan)).added
    with open(out, "rb") as f:
        for layer, v in vectors.items():
            t = dst.tensor(f"blk.{layer}.ffn_down.bias")
            assert t is not None and t.type_name == "F32", layer
            f.seek(dst.data_start + t.offset)
            got = np.frombuffer(f.read(4 * v.size), np.float32)
            assert np.array_equal(got, v.astype(np.float32)), layer
    assert len(dst.tensors) == len(src.tensors) + len(vectors)
    return {
        "tensors_in": len(src.tensors),
        "tensors_out": len(dst.tensors),
        "biases_checked": len(vectors),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench-gguf-patch"))
    ap.add_argument("--out", type=Path, default=Path("bench-out/gguf_patch.json"))
    ap.add_argument("--layers", type=int, default=LAYOUT["layers"])
    ap.add_argument("--rounds", type=int, default=4, help="cp/patch pairs, order alternating")
    args = ap.parse_args()
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    lay = {**LAYOUT, "layers": args.layers}
    base = work / "base.gguf"
    t = time.perf_counter()
    size = write_synthetic_gguf(
        base, lay["layers"], lay["hidden"], lay["ffn"], lay["kv"], lay["vocab"]
    )
    build_seconds = time.perf_counter() - t
    plan = write_plan(work / "plan", lay["layers"], lay["hidden"])
    rounds = []
    for i in range(args.rounds):  # alternate which goes first, so neither always pays first
        row: dict = {}
        for step in ("cp", "patch") if i % 2 == 0 else ("patch", "cp"):
            # both write a fresh file: the previous outputs are deleted before timing, so
            # neither pays for freeing (and, with `discard`, trimming) 2 GB of extents
            for old in (work / "cp.gguf", work / "p.gguf"):
                old.unlink(missing_ok=True)
            if step == "cp":
                row["cp_seconds"], row["cp_sync_seconds"], _ = timed(
                    ["cp", str(base), str(work / "cp.gguf")]
                )
            else:
                cmd = [sys.executable, "-c", CHILD, str(base), str(plan), str(work / "p.gguf")]
                row["patch_process_seconds"], row["patch_sync_seconds"], line = timed(cmd)
                row.update({f"patch_{k}": v for k, v in json.loads(line).items()})
        row["first"] = "cp" if i % 2 == 0 else "patch"
        row["patch_vs_cp"] = row["patch_seconds"] / row["cp_seconds"]
        rounds.append(row)
        print(json.dumps(row), flush=True)
    if not (work / "p.gguf").exists():
        subprocess.run(
            [sys.executable, "-c", CHILD, str(base), str(plan), str(work / "p.gguf")],
            check=True,
            capture_output=True,
        )
    check = check_output(base, work / "p.gguf", plan)
    cp_med = statistics.median(r["cp_seconds"] for r in rounds)
    patch_med = statistics.median(r["patch_seconds"] for r in rounds)
    cp_sync_med = statistics.median(r["cp_seconds"] + r["cp_sync_seconds"] for r in rounds)
    patch_sync_med = statistics.median(r["patch_seconds"] + r["patch_sync_seconds"] for r in rounds)
    results = {
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "file_bytes": size,
        "layout": lay,
        "build_seconds": build_seconds,
        "rounds": rounds,
        "check": check,
        "cp_seconds_median": cp_med,
        "patch_seconds_median": patch_med,
        "patch_vs_cp": patch_med / cp_med,
        "patch_vs_cp_per_round_median": statistics.median(r["patch_vs_cp"] for r in rounds),
        "patch_vs_cp_with_sync": patch_sync_med / cp_sync_med,
        "patch_process_vs_cp": statistics.median(r["patch_process_seconds"] for r in rounds)
        / cp_med,
        "peak_rss_mb_max": max(r["patch_peak_rss_mb"] for r in rounds),
        "targets": {"patch_vs_cp": 1.5, "peak_rss_mb": 500},
    }
    shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "rounds"}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
