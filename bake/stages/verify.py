"""Prove a baked checkpoint or adapter equals base + hook steering, in PyTorch.

Both run in float32 (default) on the same prompts; the hook vector is rounded to the
checkpoint dtype first, as the baked tensor is. Pass when
  max |logit_baked - logit_hooked| <= 1e-4 * max(1, max |logit_hooked|)
over all positions, and greedy continuations agree (a divergence at a near-tie, where the
reference's top-2 margin is below the tolerance, is reported but does not fail).

A plan that ablates a float32 checkpoint is held to the same tolerance. On a bfloat16 or
float16 checkpoint, the orthogonalised matrices are rounded whole to the dtype, which no
hook reproduces, so `verify --static` (bitwise recomputation) is the proof and this check
reports against the dtype's rounding bound instead of a loosened float32 tolerance:
  max |delta logit| <= sqrt(m) * u * max(1, max |logit_hooked|)
with u the dtype's unit roundoff (2^-8 for bfloat16, 2^-11 for float16) and m the number of
tensors rewritten: each stores its values to relative precision u, so each writer's output
moves by up to about u of its size; m such independent errors add in quadrature, and logits
move in proportion to the residual stream. Mean KL(hooked || baked) and top-1 agreement
over all positions are reported beside it; greedy divergences count as near-ties below
the bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bake.artifacts.plan import format_layers
from bake.artifacts.prompts import load_prompts
from bake.artifacts.reports import GreedyRecord, VerifyReport
from bake.artifacts.steering import Steering
from bake.errors import InputError
from bake.model.checkpoint import open_checkpoint
from bake.options import opt
from bake.runtime.chat import chat_text

REL_TOLERANCE = 1e-4
UNIT_ROUNDOFF = {"BF16": 2.0**-8, "F16": 2.0**-11}  # round to nearest: half an ulp of 1
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


@dataclass(frozen=True)
class VerifyOptions:
    """How `steerbake verify` checks BAKED: by running both models (run_verify), byte by
    byte (--static: bake.stages.verify_static), or in llama.cpp (a .gguf BAKED)."""

    prompts: Path | None = opt(None, "JSONL ({'prompt': ...}) or text file, one prompt per line.")
    report: Path | None = opt(None, "Write the JSON report here.")
    device: str = opt("cpu")
    dtype: str = opt("float32", "Compute dtype of both models.")
    max_new_tokens: int = opt(32)
    static: bool = opt(False, "Check tensors byte by byte instead of running the models.")
    control_vector: Path | None = opt(
        None, "With a .gguf BAKED: the control vector that goes with it (unsteered GGUF)."
    )


@dataclass
class Comparison:
    max_abs_diff: float
    mean_abs_diff: float
    max_abs_logit: float
    effect_max: float  # max |hooked - base|
    effect_mean: float
    mean_kl: float = 0.0  # KL(hooked || baked), mean over positions
    top1_agreement: float = 1.0


@dataclass(frozen=True)
class Tolerance:
    """What a verify passes at: REL_TOLERANCE * max(1, max |logit|), or for an ablation
    rounded to a 16-bit dtype, sqrt(m) * u * max(1, max |logit|)."""

    rel: float
    bound: str | None = None  # how a rounding bound was derived (None: the exact check)

    @classmethod
    def of(cls, steering: Steering) -> Tolerance:
        ckpt = steering.checkpoint
        u = UNIT_ROUNDOFF.get(ckpt.dtype)
        if not steering.plan.ablates or u is None:
            return cls(REL_TOLERANCE)
        from bake.artifacts.ablated_checkpoint import rewrites

        m = sum(rw.projection is not None for rw in rewrites(ckpt, steering).values())
        return cls(
            math.sqrt(m) * u,
            f"sqrt(m) * u * max(1, max |logit|), m = {m} tensors rewritten, u = 2^"
            f"{int(math.log2(u))} ({ckpt.dtype} unit roundoff)",
        )


def probe_texts(
    tokenizer: Any, prompts_file: Path | None, builtin: Sequence[str] = PROBE_PROMPTS
) -> list[tuple[str, str]]:
    """(id, chat-formatted text) for the built-in probes plus a user's prompt file."""
    items = [(f"probe{i}", p) for i, p in enumerate(builtin)]
    if prompts_file is not None:
        items += [(p.id, p.text) for p in load_prompts(prompts_file)]
    return [(pid, chat_text(tokenizer, text)) for pid, text in items]


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
) -> GreedyRecord:
    """Where `got` leaves the reference continuation, and the reference's top-2 logit
    margin there (the report decides whether that is a near-tie). ref_steps[t]: the
    reference's logits (vocab,) at step t, numpy or torch."""
    if ref_ids == got:
        return GreedyRecord(pid, True)
    j = next(
        (i for i, (a, b) in enumerate(zip(ref_ids, got, strict=False)) if a != b),
        min(len(ref_ids), len(got)),
    )
    margin = None
    if j < len(ref_steps):
        top2 = np.sort(np.asarray(ref_steps[j], dtype=np.float64))[-2:]
        margin = float(top2[1] - top2[0])
    return GreedyRecord(pid, False, j, margin)


def compare(base: list[Any], hooked: list[Any], baked: list[Any]) -> Comparison:
    diffs = np.concatenate(
        [(b - h).abs().flatten().numpy() for b, h in zip(baked, hooked, strict=True)]
    )
    effect = np.concatenate(
        [(h - b).abs().flatten().numpy() for h, b in zip(hooked, base, strict=True)]
    )
    max_logit = max(float(h.abs().max()) for h in hooked)
    kl, top1 = _kl_top1(hooked, baked)
    return Comparison(
        float(diffs.max()),
        float(diffs.mean()),
        max_logit,
        float(effect.max()),
        float(effect.mean()),
        kl,
        top1,
    )


def _kl_top1(hooked: list[Any], baked: list[Any]) -> tuple[float, float]:
    """Mean KL(hooked || baked) of the next-token distributions and top-1 agreement, over
    every position of every probe."""
    import torch

    ref = torch.cat([h.double() for h in hooked])
    got = torch.cat([b.double() for b in baked])
    log_p, log_q = torch.log_softmax(ref, -1), torch.log_softmax(got, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).clamp(min=0)
    return float(kl.mean()), float((ref.argmax(-1) == got.argmax(-1)).double().mean())


def run_verify(
    steering: Steering,
    baked: Path,
    *,
    prompts: Path | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    max_new_tokens: int = 32,
    probes: Sequence[str] = PROBE_PROMPTS,
) -> VerifyReport:
    """Run base + hooks and the baked model (checkpoint or adapter) on the probes."""
    from bake.runtime.device import check_device
    from bake.runtime.hooks import hooked
    from bake.runtime.loader import load_model, load_tokenizer

    check_device(device)
    ckpt = steering.checkpoint
    src, baked = ckpt.path, Path(baked)
    kind = "adapter" if (baked / "adapter_config.json").exists() else "checkpoint"
    if kind == "checkpoint":
        open_checkpoint(baked).fingerprint.check(ckpt.fingerprint, f"baked model {baked}")
    tok = load_tokenizer(src)
    texts = probe_texts(tok, prompts, probes)
    ids = [
        tok(t, return_tensors="pt", add_special_tokens=False).input_ids.to(device) for _, t in texts
    ]
    if any(x.shape[1] == 0 for x in ids):
        raise InputError("a probe prompt tokenizes to nothing; remove empty prompts")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    base_model = load_model(src, dtype=dtype, device=device, strict=True)
    base = _logits(base_model, ids)
    with hooked(base_model, steering):
        hooked_logits = _logits(base_model, ids)
        ref = [_greedy(base_model, x, max_new_tokens, pad) for x in ids]
    if kind == "adapter":
        from peft import PeftModel

        baked_model = PeftModel.from_pretrained(base_model, baked).eval()
    else:
        del base_model
        baked_model = load_model(baked, dtype=dtype, device=device, strict=True)
    got = _logits(baked_model, ids)
    greedy = [
        greedy_record(pid, *r, _greedy(baked_model, x, max_new_tokens, pad)[0])
        for (pid, _), r, x in zip(texts, ref, ids, strict=True)
    ]
    comparison = compare(base, hooked_logits, got)
    return build_report(comparison, greedy, steering, baked, kind, dtype, device)


def build_report(
    c: Comparison,
    greedy: list[GreedyRecord],
    steering: Steering,
    baked: Path,
    kind: str,
    dtype: str,
    device: str,
) -> VerifyReport:
    rule = Tolerance.of(steering)
    tol = rule.rel * max(1.0, c.max_abs_logit)
    for g in greedy:  # a divergence where the reference's top-2 margin < tol is a near-tie
        g.judge_tie(tol)
    rounded = rule.bound is not None
    return VerifyReport(
        check="pytorch",
        runtime="transformers",
        kind=kind,
        model=str(steering.model.path),
        baked=str(baked),
        layers=format_layers(steering.layers),
        alpha=steering.plan.alpha,
        dtype=dtype,
        device=device,
        prompts=len(greedy),
        tolerance=tol,
        rel_tolerance=rule.rel,
        max_abs_diff=c.max_abs_diff,
        mean_abs_diff=c.mean_abs_diff,
        max_abs_logit=c.max_abs_logit,
        effect_max=c.effect_max,
        effect_mean=c.effect_mean,
        effect_negligible=c.effect_max < 10 * tol,
        greedy_identical=sum(g.identical for g in greedy),
        greedy_near_ties=sum(bool(g.near_tie) for g in greedy),
        greedy=greedy,
        passed=c.max_abs_diff <= tol and not any(g.hard for g in greedy),
        intervention=steering.kind if steering.kind != "add" else None,
        bound=rule.bound,
        mean_kl=c.mean_kl if rounded else None,
        top1_agreement=c.top1_agreement if rounded else None,
    )


def render_report(report: Any) -> str:
    """The lines `steerbake verify` prints, for any verify report (PyTorch, static, GGUF)."""
    r = report.to_json()
    lines = [f"verify ({r['check']}, {r.get('runtime', '')}): {'PASS' if r['passed'] else 'FAIL'}"]
    if "max_abs_diff" in r:
        lines.append(
            f"  |delta logit|  max {r['max_abs_diff']:.3g}  mean "
            f"{r['mean_abs_diff']:.3g}  tolerance {r['tolerance']:.3g}"
        )
    if r.get("bound"):
        lines.append(
            f"  tolerance is the rounding bound {r['bound']}; mean KL {r['mean_kl']:.3g}, "
            f"top-1 agreement {r['top1_agreement']:.4f} (the proof is `verify --static`)"
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
