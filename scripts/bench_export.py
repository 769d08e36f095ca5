"""Benchmark `steerbake export` (safetensors build + F16 GGUF) against `cp`.

Builds a synthetic bfloat16 Llama checkpoint of >= 1B parameters (scripts/bench_bake.py's
builder, plus a small byte-level BPE tokenizer, which the GGUF writer needs), then in the
same run:
  cp      `cp -r` of the checkpoint folder, then `sync`
  export  export_model(..., gguf_types=F16, skip_verify) in its own process, timed after
          its imports, then `sync`; peak RSS = VmHWM of that process
Both times include flushing to disk: without the sync, `cp` returns once the bytes sit in the
page cache and the next writer pays for their writeback, which made the ratio swing from 3x
to 25x between two runs on the same machine.
Verification is skipped: it loads the model in PyTorch, which is what the streaming export
avoids (and it is measured by the verify tests, not here). Targets: export <= 2.5 x cp,
peak RSS <= 1 GB. The export writes about twice the checkpoint's bytes (the safetensors
build and the GGUF), so the JSON also gives the ratio per byte written.

    .venv/bin/python scripts/bench_export.py --workdir /tmp/bench-export --out bench-out/export.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_bake import PEAK, SIZES, build_checkpoint, make_plan, run_child

# peak RSS from the child's own VmHWM (ru_maxrss would carry the parent's peak across exec)
CHILD_EXPORT = (
    PEAK
    + """
import json, os, sys, time
from export.build import ExportOptions, export_model
t = time.perf_counter()
result = export_model(sys.argv[1], sys.argv[2], sys.argv[3], ExportOptions(
    name="bench", gguf_types=("F16",), skip_verify=True, progress=False))
os.sync()
seconds = time.perf_counter() - t
written = sum(f.size for files in result.folders.values() for f in files)
print(json.dumps({"seconds": seconds, "bytes_written": written, "peak_rss_mb": peak_rss_mb()}))
"""
)


def time_cp_synced(src: Path, dst: Path) -> float:
    """Seconds for `cp -r` plus the sync that puts its bytes on disk."""
    os.sync()
    t = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    os.sync()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench-export"))
    ap.add_argument("--out", type=Path, default=Path("bench-out/export.json"))
    ap.add_argument("--size", default="1.1B", choices=sorted(SIZES))
    ap.add_argument("--keep", action="store_true", help="Keep the work folder.")
    args = ap.parse_args()
    from tests.tiny_models import build_tokenizer

    layers, d, ff, vocab = SIZES[args.size]
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    model = work / "model"
    params = build_checkpoint(model, layers, d, ff, vocab)
    build_tokenizer(model)
    plan = make_plan(model, work / "plan", layers, d)
    source_bytes = sum(p.stat().st_size for p in model.iterdir() if p.is_file())
    cp_seconds = time_cp_synced(model, work / "cp-copy")
    shutil.rmtree(work / "cp-copy")
    os.sync()
    export = run_child(CHILD_EXPORT, str(model), str(plan), str(work / "out"))
    per_byte_cp = cp_seconds / source_bytes
    row = {
        "size": args.size,
        "parameters": params,
        "source_bytes": source_bytes,
        "cp_seconds": cp_seconds,
        "export": export,
        "ratio_vs_cp": export["seconds"] / cp_seconds,
        "ratio_vs_cp_of_bytes_written": export["seconds"] / (per_byte_cp * export["bytes_written"]),
        "peak_rss_mb": export["peak_rss_mb"],
        "targets": {"ratio_vs_cp": 2.5, "peak_rss_mb": 1024},
        "python": sys.version.split()[0],
        "peak_rss_bench_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(row, indent=2) + "\n")
    print(json.dumps(row, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
