"""Benchmark the generation backends `tune` and `evaluate` could use: batched transformers
(float32 and bfloat16) against llama.cpp on a float GGUF of the same weights, greedy, the
same prompts and answer length, with 1 and 2 threads.

Every measurement runs in its own subprocess (threads set before torch or llama.cpp load),
timed after loading; tokens/s counts generated answer tokens. The float GGUF is written
once with `steerbake gguf MODEL --type f16` unless --gguf names one. Writes a JSON file and
prints a table.

    .venv/bin/python scripts/bench_backends.py MODEL --prompts FILE.jsonl \
        --out bench-out/backends.json [--n 32] [--tokens 48] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = ("transformers-float32", "transformers-bfloat16", "llama-f16")
BATCH = 16  # tune's and evaluate's batch size


def measure(config: str, model: str, gguf: str, prompts: list[str], tokens: int) -> dict:
    """Runs inside the child process: load, generate greedily, count and time."""
    from bake.runtime.sampling import (
        LlamaCppBackend,
        SamplingOptions,
        TransformersBackend,
    )

    options = SamplingOptions(k=1, max_new_tokens=tokens, greedy=True)
    start = time.perf_counter()
    if config.startswith("transformers"):
        backend = TransformersBackend(model, dtype=config.split("-")[1], batch_size=BATCH)
    else:
        backend = LlamaCppBackend(Path(gguf))
    loaded = time.perf_counter()
    samples = backend.sample(prompts, options)
    seconds = time.perf_counter() - loaded
    n_tokens = sum(group[0].n_tokens for group in samples)
    return {
        "load_s": round(loaded - start, 2),
        "generate_s": round(seconds, 2),
        "tokens": n_tokens,
        "tokens_per_s": round(n_tokens / seconds, 1),
    }


def child(args: argparse.Namespace) -> None:
    prompts = [json.loads(line)["prompt"] for line in args.prompts.read_text().splitlines()]
    got = measure(args.child, args.model, args.gguf, prompts[: args.n], args.tokens)
    print(json.dumps(got))


def run_child(args: argparse.Namespace, config: str, threads: int, gguf: Path) -> dict:
    cmd = [
        sys.executable, __file__, args.model, "--prompts", str(args.prompts),
        "--n", str(args.n), "--tokens", str(args.tokens), "--gguf", str(gguf), "--child", config,
    ]  # fmt: skip
    env = {**os.environ, "STEERBAKE_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{config} with {threads} threads failed:\n{proc.stderr[-2000:]}")
    return {"config": config, "threads": threads, **json.loads(proc.stdout.splitlines()[-1])}


def float_gguf(model: str, work: Path) -> Path:
    out = work / "model-f16.gguf"
    exe = str(Path(sys.executable).parent / "steerbake")
    subprocess.run([exe, "gguf", model, "--type", "f16", "-o", str(out)], check=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a checkpoint folder (or .gguf, dequantized by transformers)")
    ap.add_argument("--prompts", type=Path, required=True)
    ap.add_argument("--gguf", default="", help="float GGUF of the same weights")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--out", type=Path, default=Path("bench-out/backends.json"))
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
        gguf = Path(args.gguf) if args.gguf else float_gguf(args.model, Path(tmp))
        rows = [
            run_child(args, config, int(t), gguf)
            for t in args.threads.split(",")
            for config in CONFIGS
        ]
    result = {
        "model": args.model,
        "prompts": f"{args.n} of {args.prompts}",
        "answer_tokens": args.tokens,
        "batch": BATCH,
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("config                  threads  tokens/s  generate s  tokens")
    for r in rows:
        print(
            f"{r['config']:<24}{r['threads']:>7}  {r['tokens_per_s']:>8}  "
            f"{r['generate_s']:>10}  {r['tokens']:>6}"
        )
    print(f"wrote {args.out}")
    return None


if __name__ == "__main__":
    main()
