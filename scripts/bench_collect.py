"""Benchmark: collection throughput against a bare forward pass over the same batches.

A random Llama of moderate size (default 8 blocks, hidden 768, MLP 2048, ~50M
parameters, float32 on the CPU) with the tests' tiny tokenizer. The bare pass runs
model(input_ids, attention_mask, position_ids) on the already-tokenized batches and keeps
nothing; collection (bake.collect.write_activations, every block, last token) also
tokenizes, runs the hooks and writes the shards. Target: ratio >= 0.9, where
ratio = collect prompts/s / bare prompts/s, reported on wall time (best and median of the
interleaved repeats) and on process CPU time (steadier on a shared machine). The
vocabulary is tiny, so the LM head that collection skips costs almost nothing: the ratio
measures collection's own overhead.

    PYTHONPATH=. .venv/bin/python scripts/bench_collect.py [-o bench-out/collect.json]

Writes the numbers to a JSON file and prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

TEXTS = [
    "How do I bake bread at home with simple flour and water?",
    "Tell me about the history of the river valley and its old towns, from the first "
    "settlers to the railway.",
    "What is the capital of the northern province?",
    "Explain how a steering vector changes the hidden states of a model, in detail and "
    "with an example.",
    "Write a short poem about the sea.",
    "Give me step-by-step instructions for fixing a flat bicycle tyre.",
    "Summarise the plot of a novel you like.",
    "Why is the sky blue?",
]


def alternate_batches(
    model: Any,
    tok: Any,
    prompts: list[Any],
    batches: list[Any],
    args: argparse.Namespace,
    decoder_blocks: Any,
    make_batch: Any,
    forward: Any,
) -> dict[str, float]:
    """CPU seconds of the bare forward and of collection's per-batch work (tokenize, hooked
    forward), alternating batch by batch so that load changes hit both alike."""
    import torch

    blocks = decoder_blocks(model)
    layers = list(range(len(blocks)))
    bare = work = 0.0
    for _ in range(args.repeats):
        for k, b in enumerate(batches):
            start = time.process_time()
            with torch.no_grad():
                model(
                    input_ids=b.input_ids,
                    attention_mask=b.attention_mask,
                    position_ids=b.position_ids,
                    use_cache=False,
                )
            bare += time.process_time() - start
            start = time.process_time()
            part = prompts[k * args.batch_size : (k + 1) * args.batch_size]
            forward(model, blocks, layers, make_batch(tok, part, "last", None, "left", None))
            work += time.process_time() - start
    return {"bare": round(bare, 3), "collect": round(work, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("bench-out/collect.json"))
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from bake.artifacts.prompts import Prompt
    from bake.runtime.hooks import decoder_blocks
    from bake.stages.collect import _forward, _make_batch, load_model, write_activations
    from tests.tiny_models import build_model

    torch.set_num_threads(args.threads)
    prompts = [Prompt(f"p{i}", f"{TEXTS[i % len(TEXTS)]} ({i})") for i in range(args.prompts)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_model(
            Path(tmp) / "model",
            "llama",
            n_layers=args.layers,
            hidden=args.hidden,
            intermediate=args.intermediate,
        )
        model, tok, _ = load_model(str(folder))
        n_params = sum(p.numel() for p in model.parameters())
        batches = [
            _make_batch(tok, prompts[i : i + args.batch_size], "last", None, "left", None)
            for i in range(0, len(prompts), args.batch_size)
        ]

        def bare() -> tuple[float, float]:
            start, cpu = time.perf_counter(), time.process_time()
            with torch.no_grad():
                for b in batches:
                    model(
                        input_ids=b.input_ids,
                        attention_mask=b.attention_mask,
                        position_ids=b.position_ids,
                        use_cache=False,
                    )
            return time.perf_counter() - start, time.process_time() - cpu

        def collect(k: int) -> tuple[float, float]:
            start, cpu = time.perf_counter(), time.process_time()
            write_activations(
                model, tok, prompts, Path(tmp) / f"acts{k}", batch_size=args.batch_size
            )
            return time.perf_counter() - start, time.process_time() - cpu

        bare()  # warm-up
        bare_t, collect_t = [], []
        for k in range(args.repeats):  # interleaved, so a load spike hits both
            bare_t.append(bare())
            collect_t.append(collect(k))
        per_batch = alternate_batches(
            model, tok, prompts, batches, args, decoder_blocks, _make_batch, _forward
        )
    tokens = sum(int(b.attention_mask.sum()) for b in batches)

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    wall_b, wall_c = [t[0] for t in bare_t], [t[0] for t in collect_t]
    cpu_b, cpu_c = [t[1] for t in bare_t], [t[1] for t in collect_t]
    report = {
        "benchmark": "collect throughput vs bare forward (same batches)",
        "model": {
            "family": "llama",
            "blocks": args.layers,
            "hidden": args.hidden,
            "intermediate": args.intermediate,
            "parameters": n_params,
            "dtype": "float32",
        },
        "prompts": args.prompts,
        "batch_size": args.batch_size,
        "tokens": tokens,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "bare_wall_s": [round(t, 3) for t in wall_b],
        "collect_wall_s": [round(t, 3) for t in wall_c],
        "bare_cpu_s": [round(t, 3) for t in cpu_b],
        "collect_cpu_s": [round(t, 3) for t in cpu_c],
        "bare_prompts_per_s": round(args.prompts / min(wall_b), 2),
        "collect_prompts_per_s": round(args.prompts / min(wall_c), 2),
        # throughput ratio = collect prompts/s / bare prompts/s = bare time / collect time
        "ratio_wall_best": round(min(wall_b) / min(wall_c), 3),
        "ratio_wall_median": round(median(wall_b) / median(wall_c), 3),
        "ratio_cpu_median": round(median(cpu_b) / median(cpu_c), 3),
        # batch by batch: bare forward, then tokenize + hooked forward, alternating
        "per_batch_cpu_s": per_batch,
        "ratio_per_batch_cpu": round(per_batch["bare"] / per_batch["collect"], 3),
    }
    print(json.dumps(report, indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
