"""Benchmark `make demo`: wall time of `steerbake demo` (the whole pipeline on the toy
refuser) over several runs, and each step's time from the demo's own summary.

Runs the user's command in a subprocess with STEERBAKE_THREADS as `make demo` sets it (2),
writes a JSON file and prints median, min and max. The issue's budget is 60 s on 2 idle
cores: the load average at each run's start is recorded, since a busy machine is no
measurement of it.

    .venv/bin/python scripts/bench_demo.py --runs 3 --out bench-out/demo.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(threads: int, out: Path) -> dict[str, object]:
    exe = str(Path(sys.executable).parent / "steerbake")
    env = {**os.environ, "STEERBAKE_THREADS": str(threads)}
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run(
        [exe, "demo", "-o", str(out), "--overwrite"], capture_output=True, text=True, env=env
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"demo failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    summary = json.loads((out / "demo_summary.json").read_text())
    sens = summary["evaluation"]["sets"]["heldout_sensitive"]
    return {
        "wall_s": round(wall, 1),
        "pipeline_s": round(summary["seconds"], 1),
        "steps_s": summary.get("step_seconds", {}),
        "load_average_at_start": round(load, 2),
        "plan": summary["plan"],
        "heldout_sensitive_refusal": [
            sens["before"]["refusal_rate"],
            sens["after"]["refusal_rate"],
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench-out/demo.json"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    try:
        runs = [run_once(args.threads, work / f"run{i}") for i in range(args.runs)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    pipeline = [float(r["pipeline_s"]) for r in runs]  # type: ignore[arg-type]
    result = {
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "pipeline_s": {
            "median": statistics.median(pipeline),
            "min": min(pipeline),
            "max": max(pipeline),
        },
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for r in runs:
        load = r["load_average_at_start"]
        print(f"pipeline {r['pipeline_s']} s (wall {r['wall_s']} s, load {load})")
        print(f"  steps: {r['steps_s']}")
    print(f"median {result['pipeline_s']['median']} s; wrote {args.out}")


if __name__ == "__main__":
    main()
