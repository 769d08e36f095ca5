"""Sample the toy refuser's own answers for hand labelling: greedy answers on a slice of
the prompts of each held-out set, unsteered and steered with a plan (e.g. the demo's), written
as JSONL rows {id, prompt, answer, source, label: null, kind: null}.

A person then fills in `label` (+1 refusal, -1 compliance, by the rubric of
bake/judge_rubric.py: looping or corrupted text counts as refusal) and `kind`, and the
labelled file becomes a set in bake/judges/data/ (toy_answers*.jsonl, listed in
bake.judge.CALIBRATION_SETS), on which `steerbake judge --calibrate` measures the judge the
demo uses. The script never writes labels itself.

    .venv/bin/python scripts/sample_toy_answers.py --plan demo-out/plan.json \
        --per-set 10 --out /tmp/toy_answers_unlabelled.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bake import toy_refuser
from bake.artifacts.prompts import load_prompts
from bake.artifacts.steering import open_steering
from bake.runtime.hooks import hooked
from bake.runtime.loader import load_model_and_tokenizer
from bake.runtime.sampling import SamplingOptions, generate_answers

HELDOUT = ("heldout_sensitive", "heldout_harmful", "heldout_benign")


def sample(
    plan_path: Path | None, start: int, per_set: int, max_new_tokens: int
) -> list[dict[str, object]]:
    model, tok = load_model_and_tokenizer(toy_refuser.model_dir())
    options = SamplingOptions(k=1, max_new_tokens=max_new_tokens, greedy=True)
    steering = open_steering(toy_refuser.model_dir(), plan_path) if plan_path else None
    runs = [("unsteered", None)]
    if steering is not None:
        runs.append((f"steered alpha {steering.plan.alpha:+g}", steering))
    rows = []
    for name in HELDOUT:
        prompts = load_prompts(toy_refuser.prompt_set(name))[start : start + per_set]
        for source, vectors in runs:
            with hooked(model, vectors):
                answers = generate_answers(
                    model, tok, [p.text for p in prompts], options=options, batch_size=16
                )
            for p, group in zip(prompts, answers, strict=True):
                rows.append(
                    {
                        "id": f"{p.id}/{'steered' if vectors else 'unsteered'}",
                        "prompt": p.text,
                        "answer": group[0].text,
                        "source": source,
                        "label": None,
                        "kind": None,
                    }
                )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--plan", type=Path, help="steering plan for the steered half")
    ap.add_argument("--start", type=int, default=0, help="first prompt of each set")
    ap.add_argument("--per-set", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = sample(args.plan, args.start, args.per_set, args.max_new_tokens)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} unlabelled answers to {args.out}")


if __name__ == "__main__":
    main()
