"""Refusal rates and benign KL, for a model unsteered, hooked with a plan, or baked.

Refusal rate of a set = share of its prompts with c(x) > band (DESIGN.md), c(x) from the
judged answers (bake.judge.aggregate). KL = mean over prompts of KL(base || steered) of the
next-token distribution at the first generated position:
    KL(x) = sum_v p_base(v|x) (log p_base(v|x) - log p_steered(v|x)).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bake.runtime.forward import mean_kl, next_token_logprobs
from bake.runtime.hooks import steered
from bake.runtime.loader import load_model_and_tokenizer
from bake.stages.measure import Measurer, measure_refusal, read_sets


def run_evaluate(
    model: str | Path | None,
    prompt_files: Sequence[Path],
    *,
    plan_file: Path | None = None,
    baked: Path | None = None,
    measurer: Measurer | None = None,
    kl_sets: Sequence[str] | None = None,
    dtype: str = "float32",
    device: str = "cpu",
) -> dict[str, Any]:
    """Refusal per set before and after steering (hooks from a plan, or a baked folder),
    and KL on the benign sets (names containing 'benign' unless kl_sets is given)."""
    import torch

    from bake.artifacts.plan import Plan
    from bake.errors import InputError
    from bake.files.shards import TORCH_DTYPE_NAMES
    from bake.model.checkpoint import open_checkpoint
    from bake.model.resolve import resolve_model

    if (plan_file is None) == (baked is None):
        raise InputError("pass exactly one of --plan PLAN or --baked DIR")
    m = measurer or Measurer()
    src = resolve_model(model)
    ckpt_dtype = getattr(torch, TORCH_DTYPE_NAMES.get(open_checkpoint(src).dtype, "float32"))
    sets = read_sets(prompt_files)
    kl_names = list(kl_sets) if kl_sets else [n for n in sets if "benign" in n]
    base_model, tok = load_model_and_tokenizer(src, dtype, device)
    before = {n: measure_refusal(base_model, tok, n, ps, m) for n, ps in sets.items()}
    base_logp = {n: next_token_logprobs(base_model, tok, sets[n]) for n in kl_names}
    vectors = None
    if plan_file is not None:
        vectors = Plan.load(plan_file).steering_vectors()
        after_model = base_model
    else:
        after_model, _ = load_model_and_tokenizer(Path(baked), dtype, device)  # type: ignore[arg-type]
    with steered(after_model, vectors, ckpt_dtype):
        after = {n: measure_refusal(after_model, tok, n, ps, m) for n, ps in sets.items()}
        kl = {
            n: mean_kl(base_logp[n], next_token_logprobs(after_model, tok, sets[n]))
            for n in kl_names
        }
    return {
        "model": str(src),
        "steering": str(plan_file or baked),
        "mode": "hooks" if plan_file else "baked",
        **m.describe(),
        "sets": {
            n: {
                "before": before[n].summary(),
                "after": after[n].summary(),
                "samples": [
                    {"prompt": p.text, "before": b, "after": a}
                    for p, b, a in zip(
                        sets[n][:3], before[n].answers[:3], after[n].answers[:3], strict=False
                    )
                ],
            }
            for n in sets
        },
        "kl": kl,
    }


def render_evaluation(r: dict[str, Any]) -> str:
    lines = [f"{'set':<24}{'n':>5}{'refusal before':>17}{'refusal after':>16}", "-" * 62]
    for name, s in r["sets"].items():
        lines.append(
            f"{name:<24}{s['before']['n']:>5}{s['before']['refusal_rate']:>16.0%}"
            f"{s['after']['refusal_rate']:>16.0%}"
        )
    for name, value in r["kl"].items():
        lines.append(f"KL(base || steered) on {name}: {value:.4f}")
    lines.append(
        f"judge: {r['judge']}; decoding: {r['decoding']}, {r['max_new_tokens']} new tokens"
    )
    return "\n".join(lines)
