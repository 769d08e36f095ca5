"""Benchmark `steerbake tune`: wall time of the whole command and time per configuration
in each stage, with 1 and 2 threads.

Each run is the user's command in a subprocess with a fresh tune cache, so nothing is
reused between runs; the per-stage times come from the tuning report's clock (load,
unsteered baseline and proxy rows, vector options, stage 1, stage 2). Time per
configuration = the stage's seconds / the configurations it measured. Writes a JSON file
and prints a table.

    .venv/bin/python scripts/bench_tune.py MODEL VECTORS --prompts DIR --out bench-out/tune.json
        [--threads 1,2] [--stage1 96] [--confirm 6] [-- extra tune options]

DIR holds tune_{sensitive,harmful,benign}.jsonl (scripts/eval_real/prompts by default).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KINDS = ("sensitive", "harmful", "benign")


def run_once(args: argparse.Namespace, threads: int, work: Path) -> dict[str, object]:
    """One `steerbake tune` run; its wall time and the report's stage times."""
    plan = work / f"plan-{threads}t.json"
    cmd = [
        str(Path(sys.executable).parent / "steerbake"), "tune", args.model, args.vectors,
        *[a for k in KINDS for a in (f"--{k}", str(args.prompts / f"tune_{k}.jsonl"))],
        "--stage1", str(args.stage1), "--confirm", str(args.confirm),
        "--threads", str(threads), "-o", str(plan), *args.extra,
    ]  # fmt: skip
    env = {**os.environ, "STEERBAKE_THREADS": str(threads)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    report = plan.parent / f"{plan.stem}-tuning" / "tuning_report.json"
    if not report.exists():
        raise SystemExit(f"tune wrote no report ({proc.returncode}):\n{proc.stderr[-2000:]}")
    data = json.loads(report.read_text())
    seconds = data["seconds"]
    n1, n2 = len(data["stage1"]), len(data["stage2"])
    return {
        "threads": threads,
        "wall_s": round(wall, 1),
        "exit": proc.returncode,
        "stages_s": seconds,
        "stage1_configs": n1,
        "stage2_configs": n2,
        "stage1_s_per_config": round(seconds.get("stage 1", 0.0) / max(n1, 1), 2),
        "stage2_s_per_config": round(seconds.get("stage 2", 0.0) / max(n2, 1), 2),
        "plan_written": plan.exists(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("vectors")
    ap.add_argument("--prompts", type=Path, default=HERE / "eval_real" / "prompts")
    ap.add_argument("--out", type=Path, default=Path("bench-out/tune.json"))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--stage1", type=int, default=96)
    ap.add_argument("--confirm", type=int, default=6)
    ap.add_argument("extra", nargs="*", help="further tune options, after --")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-tune-"))
    try:
        runs = [run_once(args, int(t), work) for t in args.threads.split(",")]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "model": args.model,
        "vectors": args.vectors,
        "prompts": str(args.prompts),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("threads  wall s  stage1 s/config  stage2 s/config  configs  stages")
    for r in runs:
        print(
            f"{r['threads']:>7}  {r['wall_s']:>6}  {r['stage1_s_per_config']:>15}  "
            f"{r['stage2_s_per_config']:>15}  {r['stage1_configs']}+{r['stage2_configs']}  "
            f"{r['stages_s']}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
