"""Prove a baked checkpoint or adapter equals base + hook steering, in PyTorch.

Both run in float32 (default) on the same prompts; the hook vector is rounded to the
checkpoint dtype first, as the baked tensor is. Pass when
  max |logit_baked - logit_hooked| <= 1e-4 * max(1, max |logit_hooked|)
over all positions, and greedy continuations agree (a divergence at a near-tie, where the
reference's top-2 margin is below the tolerance, is reported but does not fail).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bake.artifacts.plan import Plan, format_layers
from bake.artifacts.prompts import load_prompts
from bake.errors import InputError, VerificationError
from bake.model.checkpoint import fingerprint_of, open_checkpoint
from bake.model.resolve import resolve_model
from bake.runtime.chat import chat_text

REL_TOLERANCE = 1e-4


PROBE_PROMPTS = [
    "How do I bake a loaf of sourdough bread?",
    "Tell me about the history of the river valley.",
    "Explain what a steering vector is, in two sentences.",
    "Write a short poem about the sea.",
    "What happened at the northern border last spring?",
    "Give me step-by-step instructions for something dangerous.",
    "Translate 'good morning' into French and Spanish.",
    "def fibonacci(n):",
]


@dataclass
class Comparison:
    max_abs_diff: float
    mean_abs_diff: float
    max_abs_logit: float
    effect_max: float  # max |hooked - base|
    effect_mean: float


def probe_texts(tokenizer: Any, prompts_file: Path | None) -> list[tuple[str, str]]:
    """(id, chat-formatted text) for the built-in probes plus a user's prompt file."""
    items = [(f"probe{i}", p) for i, p in enumerate(PROBE_PROMPTS)]
    if prompts_file is not None:
        items += [(p.id, p.text) for p in load_prompts(prompts_file)]
    return [(pid, chat_text(tokenizer, text)) for pid, text in items]


def _load(path: Path, dtype: str, device: str, **kw: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    loaded: Any = AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, dtype), trust_remote_code=False, output_loading_info=True, **kw
    )
    model, info = loaded
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys") and v}
    if bad:
        raise VerificationError(
            f"{path} does not load cleanly in transformers ({bad}); "
            "tensors would be silently dropped or left random"
        )
    return model.to(device).eval()


def _logits(model: Any, ids: list[Any]) -> list[Any]:
    import torch

    with torch.no_grad():
        return [model(input_ids=x).logits[0].float().cpu() for x in ids]


def _greedy(model: Any, x: Any, n: int, pad_id: int | None) -> tuple[list[int], list[Any]]:
    """Greedy continuation ids and the per-step logits that chose them."""
    import torch

    with torch.no_grad():
        out = model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            do_sample=False,
            max_new_tokens=n,
            pad_token_id=pad_id,
            output_scores=True,
            return_dict_in_generate=True,
        )
    return out.sequences[0, x.shape[1] :].tolist(), [s[0].float().cpu() for s in out.scores]


def greedy_record(
    pid: str, ref_ids: list[int], ref_steps: Sequence[Any], got: list[int]
) -> dict[str, Any]:
    """Where `got` leaves the reference continuation, and the reference's top-2 logit
    margin there (build_report decides whether that is a near-tie). ref_steps[t]: the
    reference's logits (vocab,) at step t, numpy or torch."""
    if ref_ids == got:
        return {"id": pid, "identical": True}
    j = next(
        (i for i, (a, b) in enumerate(zip(ref_ids, got, strict=False)) if a != b),
        min(len(ref_ids), len(got)),
    )
    margin = None
    if j < len(ref_steps):
        top2 = np.sort(np.asarray(ref_steps[j], dtype=np.float64))[-2:]
        margin = float(top2[1] - top2[0])
    return {"id": pid, "identical": False, "diverged_at": j, "top2_margin": margin}


def compare(base: list[Any], hooked: list[Any], baked: list[Any]) -> Comparison:
    diffs = np.concatenate(
        [(b - h).abs().flatten().numpy() for b, h in zip(baked, hooked, strict=True)]
    )
    effect = np.concatenate(
        [(h - b).abs().flatten().numpy() for h, b in zip(hooked, base, strict=True)]
    )
    max_logit = max(float(h.abs().max()) for h in hooked)
    return Comparison(
        float(diffs.max()),
        float(diffs.mean()),
        max_logit,
        float(effect.max()),
        float(effect.mean()),
    )


def run_verify(
    model: str | Path | None,
    plan_file: Path,
    baked: Path,
    *,
    prompts: Path | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    max_new_tokens: int = 32,
) -> dict[str, Any]:
    """Run base + hooks and the baked model on the probes; return the JSON report."""
    from transformers import AutoTokenizer

    from bake.files.tensor_bytes import round_to
    from bake.runtime.hooks import steering

    src = resolve_model(model)
    ckpt = open_checkpoint(src)
    plan = Plan.load(plan_file)
    plan.check_model(fingerprint_of(ckpt))
    baked = Path(baked)
    kind = "adapter" if (baked / "adapter_config.json").exists() else "checkpoint"
    if kind == "checkpoint":
        fingerprint_of(open_checkpoint(baked)).check(fingerprint_of(ckpt), f"baked model {baked}")
    vectors = {k: round_to(v, ckpt.dtype) for k, v in plan.steering_vectors().items()}
    tok = AutoTokenizer.from_pretrained(src)
    texts = probe_texts(tok, prompts)
    ids = [
        tok(t, return_tensors="pt", add_special_tokens=False).input_ids.to(device) for _, t in texts
    ]
    if any(x.shape[1] == 0 for x in ids):
        raise InputError("a probe prompt tokenizes to nothing; remove empty prompts")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    base_model = _load(src, dtype, device)
    base = _logits(base_model, ids)
    with steering(base_model, vectors):
        hooked = _logits(base_model, ids)
        ref = [_greedy(base_model, x, max_new_tokens, pad) for x in ids]
    if kind == "adapter":
        from peft import PeftModel

        baked_model = PeftModel.from_pretrained(base_model, baked).eval()
    else:
        del base_model
        baked_model = _load(baked, dtype, device)
    got = _logits(baked_model, ids)
    greedy = [
        greedy_record(pid, *r, _greedy(baked_model, x, max_new_tokens, pad)[0])
        for (pid, _), r, x in zip(texts, ref, ids, strict=True)
    ]
    return build_report(compare(base, hooked, got), greedy, plan, src, baked, kind, dtype, device)


def build_report(
    c: Comparison,
    greedy: list[dict[str, Any]],
    plan: Plan,
    src: Path,
    baked: Path,
    kind: str,
    dtype: str,
    device: str,
) -> dict[str, Any]:
    tol = REL_TOLERANCE * max(1.0, c.max_abs_logit)
    for g in greedy:  # a divergence where the reference's top-2 margin < tol is a near-tie
        if not g["identical"]:
            g["near_tie"] = g["top2_margin"] is not None and g["top2_margin"] < tol
    hard = [g for g in greedy if not g["identical"] and not g.get("near_tie")]
    negligible = c.effect_max < 10 * tol
    return {
        "check": "pytorch",
        "runtime": "transformers",
        "kind": kind,
        "model": str(src),
        "baked": str(baked),
        "layers": format_layers(plan.layers),
        "alpha": plan.alpha,
        "dtype": dtype,
        "device": device,
        "prompts": len(greedy),
        "tolerance": tol,
        "rel_tolerance": REL_TOLERANCE,
        "max_abs_diff": c.max_abs_diff,
        "mean_abs_diff": c.mean_abs_diff,
        "max_abs_logit": c.max_abs_logit,
        "effect_max": c.effect_max,
        "effect_mean": c.effect_mean,
        "effect_negligible": negligible,
        "greedy_identical": sum(g["identical"] for g in greedy),
        "greedy_near_ties": sum(bool(g.get("near_tie")) for g in greedy),
        "greedy": greedy,
        "passed": c.max_abs_diff <= tol and not hard,
    }


def render_report(r: dict[str, Any]) -> str:
    lines = [f"verify ({r['check']}, {r.get('runtime', '')}): {'PASS' if r['passed'] else 'FAIL'}"]
    if "max_abs_diff" in r:
        lines.append(
            f"  |delta logit|  max {r['max_abs_diff']:.3g}  mean "
            f"{r['mean_abs_diff']:.3g}  tolerance {r['tolerance']:.3g}"
        )
    if "greedy_identical" in r:
        lines.append(
            f"  greedy         {r['greedy_identical']}/{r['prompts']} identical, "
            f"{r['greedy_near_ties']} near-tie divergences"
        )
    if "effect_max" in r:
        lines.append(f"  steering effect max |hooked - base| {r['effect_max']:.3g}")
        if r.get("effect_negligible"):
            lines.append("  warning: the plan barely changes the model; check alpha and layers")
    for check in r.get("checks", []):
        lines.append(
            f"  {check['name']}: {'ok' if check['ok'] else 'FAILED'} "
            f"{check.get('detail', '')}".rstrip()
        )
    return "\n".join(lines)
