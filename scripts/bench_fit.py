"""Benchmark: seconds per layer of `fit` (WRMD, float64, default 20% held-out refit) in the
primal and the dual (Woodbury) form, on synthetic activations.

Cases (issue 6): d = 4096 with 4000 samples per layer (half refusal, half compliant), and
d = 4096 with 500 samples, where the dual form must win clearly. Each case runs with the
compliant covariance (the default) and the pooled one (every sample in the covariance).

    .venv/bin/python scripts/bench_fit.py [-o bench-out/fit.json] [--threads 2]

Writes the numbers to a JSON file and prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def synthetic(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n rows (n/2 refusal, n/2 compliant) with a low-rank structure plus noise."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(64, d)).astype(np.float32)
    x = rng.normal(size=(n, 64)).astype(np.float32) @ basis + rng.normal(size=(n, d)).astype(
        np.float32
    )
    half = n // 2
    x[:half] += rng.normal(size=d).astype(np.float32)
    c = np.concatenate([rng.uniform(0.2, 1.0, half), rng.uniform(-1.0, -0.2, n - half)])
    return x, c


def time_fit(
    x: np.ndarray, c: np.ndarray, solver: str, covariance: str, repeats: int
) -> tuple[float, float, str]:
    from bake.stages.fit import COMPLIANT, NEUTRAL, REFUSAL, FitOptions, _holdout, fit_layer

    group = np.where(c > 0.1, REFUSAL, np.where(c < -0.1, COMPLIANT, NEUTRAL))
    opts = FitOptions(method="wrmd", solver=solver, covariance=covariance)
    held = _holdout(group, opts.holdout, opts.seed)
    best, cpu, form = float("inf"), float("inf"), ""
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        result = fit_layer(x, c, group, held, opts)
        best = min(best, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - cpu_start)
        form = result.diagnostics["form"]
    return best, cpu, form


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("bench-out/fit.json"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dim", type=int, default=4096)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    results = []
    for n in (4000, 500):
        x, c = synthetic(n, args.dim)
        for covariance in ("compliant", "pooled"):
            row: dict[str, object] = {"d": args.dim, "samples": n, "covariance": covariance}
            for solver in ("primal", "dual", "auto"):
                seconds, cpu, form = time_fit(x, c, solver, covariance, args.repeats)
                row[f"{solver}_s"] = round(seconds, 3)
                row[f"{solver}_cpu_s"] = round(cpu, 3)
                if solver == "auto":
                    row["auto_form"] = form
            row["dual_speedup"] = round(float(row["primal_s"]) / float(row["dual_s"]), 2)
            results.append(row)
            print(json.dumps(row))
    report = {
        "benchmark": "fit seconds per layer (wrmd, float64, 20% held-out refit)",
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "note": "*_s: best wall seconds per layer; *_cpu_s: process CPU seconds (all threads)",
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
