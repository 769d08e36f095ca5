"""Prove a GGUF's steering in llama.cpp: the three checks of the GGUF issue.

  (1) unsteered:   our unsteered GGUF in llama.cpp  vs  transformers (no steering)
  (2) routes:      baked GGUF (ffn_down bias)       vs  unsteered GGUF + control vector
  (3) reference:   baked GGUF, or GGUF + control vector  vs  transformers + hooks
                   (bake.runtime.hooks, vectors rounded to the checkpoint dtype)

Every run is float32 with an f32 KV cache, on the same token ids (transformers' tokenization
of the chat-formatted probes). For F32 GGUFs a check passes when
  max |delta logit| <= 5e-5 * max(1, max |reference logit|)
over all positions and greedy continuations are identical (a divergence where the reference's
top-2 margin is below the tolerance is a near-tie and does not fail). For F16/BF16 GGUFs,
(1) and (3) report top-1 agreement and mean KL(reference || GGUF) over all positions
instead of tight bounds, passing at mean KL <= MAX_MEAN_KL (top-1 agreement is reported, not
gated: on flat distributions rounding flips near-tied argmaxes while KL stays ~1e-6). (2)
does the same for them: llama.cpp rounds activations to 16 bits at every F16/BF16 matmul, so
a bias added inside the block and a vector added after it differ by ~1e-3 there (measured on
the tiny Llama: max 7e-4, mean 3e-6) while they agree to ~1e-6 in F32. llama.cpp's
tokenization of each probe must equal transformers'.

The GGUF missing from the pair (the unsteered one for a baked GGUF, the baked one for a
control vector) is written to a temporary folder beside the GGUF under test.

A plan that ablates is baked into the weights (llama.cpp cannot ablate at run time), so
there is no second route to compare and (2) is skipped; (3) compares the file, with the
control vector of its additive part where the file carries the ablation only (`both` on a
family without the bias slot), against transformers with the same hooks as every other
check (the writers' outputs projected, the vectors added). From a 16-bit checkpoint, the
file holds the orthogonalised matrices as the baked checkpoint does, rounded whole to its
dtype, so an F32 file is held to that dtype's rounding bound (bake.stages.verify.Tolerance)
instead of the float32 tolerance; `verify --static` of the baked checkpoint is the proof.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bake.artifacts.plan import format_layers
from bake.artifacts.reports import Check, GreedyRecord, JsonReport
from bake.artifacts.steering import Steering
from bake.errors import InputError, PlanMismatchError
from bake.stages.verify import Tolerance, greedy_record
from export.llamacpp.writer import OUT_TYPES

REL_TOLERANCE = 5e-5
MAX_MEAN_KL = 0.01  # F16/BF16 builds: mean KL(reference || GGUF) in nats per position


@dataclass
class GgufInfo:
    """What the verifier needs from a GGUF header."""

    arch: str
    n_layer: int
    n_embd: int
    out_type: str  # F32, F16, BF16 (type of the 2-D weights)
    bias_blocks: list[int]  # blocks with blk.N.ffn_down.bias
    baked: list[str] = field(default_factory=list)  # parts of a plan the weights carry
    plan: dict[str, Any] | None = None  # the plan recorded in the file


def inspect_gguf(path: Path) -> GgufInfo:
    import json

    import gguf

    from bake.files.gguf_file import (
        CONTROL_VECTOR_ARCH,
        STEERBAKE_PLAN_KEY,
        baked_parts,
        ffn_down_bias_blocks,
        read_layout,
    )

    layout = read_layout(Path(path))
    arch = layout.arch
    if arch == CONTROL_VECTOR_ARCH:
        raise InputError(
            f"{path} is a control vector, not a model GGUF; pass the model GGUF "
            "and the control vector with --control-vector"
        )

    def number(key: str) -> int:
        value = layout.arch_value(key)
        if value is None:
            raise InputError(f"{path}: no {key.format(arch=arch)} key; not a model GGUF")
        return int(value)

    types = {t.type_name for t in layout.tensors if len(t.dims) == 2}
    return GgufInfo(
        arch,
        number(gguf.Keys.LLM.BLOCK_COUNT),
        number(gguf.Keys.LLM.EMBEDDING_LENGTH),
        "F32" if types <= {"F32"} else "/".join(sorted(types)),
        ffn_down_bias_blocks(layout),
        baked_parts(layout),
        _plan_record(layout.string(STEERBAKE_PLAN_KEY), json),
    )


def _plan_record(text: str | None, json: Any) -> dict[str, Any] | None:
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


# --------------------------------------------------------------------------- reports
@dataclass
class ExactComparison(JsonReport):
    """Tight logit bound plus greedy agreement (near-ties allowed): F32 builds."""

    name: str
    mode: str
    max_abs_diff: float
    mean_abs_diff: float
    max_abs_logit: float
    tolerance: float
    greedy_identical: int
    greedy_near_ties: int
    greedy_diverged: list[str]
    greedy: list[GreedyRecord]
    passed: bool

    def detail(self) -> str:
        return (
            f"max {self.max_abs_diff:.3g} mean {self.mean_abs_diff:.3g} (tolerance "
            f"{self.tolerance:.3g}); greedy {self.greedy_identical}/{len(self.greedy)} "
            f"identical, {self.greedy_near_ties} near-ties"
        )


@dataclass
class LossyComparison(JsonReport):
    """Top-1 agreement and mean KL(reference || GGUF) over all positions: 16-bit builds."""

    name: str
    mode: str
    top1_agreement: float
    mean_kl: float
    max_kl: float
    max_abs_diff: float
    mean_abs_diff: float
    max_mean_kl: float
    greedy_identical: int
    greedy: list[GreedyRecord]
    passed: bool

    def detail(self) -> str:
        return (
            f"mean KL {self.mean_kl:.3g} (<= {MAX_MEAN_KL}), top-1 agreement "
            f"{self.top1_agreement:.3f}; greedy {self.greedy_identical}/{len(self.greedy)} "
            "identical"
        )


Comparison = ExactComparison | LossyComparison


@dataclass
class Tokenization(JsonReport):
    identical: int
    prompts: int
    mismatched: list[str]


@dataclass
class ControlVectorCheck(JsonReport):
    model_hint: str | None
    hint_matches: bool
    rounding: str  # checkpoint dtype | float32
    max_diff_vs_plan: float


@dataclass
class GgufVerifyReport(JsonReport):
    """`steerbake verify MODEL PLAN FILE.gguf`: the three checks in llama.cpp."""

    check: str
    runtime: str
    kind: str  # baked | control-vector
    model: str
    gguf: str
    control_vector: str | None
    arch: str
    out_type: str
    layers: str
    alpha: float
    prompts: int
    max_new_tokens: int
    rel_tolerance: float
    effect_max: float
    comparisons: dict[str, Comparison]
    tokenization: Tokenization
    control_vector_check: ControlVectorCheck | None
    checks: list[Check]
    passed: bool
    # the main check's numbers, for exact (F32) builds only
    max_abs_diff: float | None = field(default=None, metadata={"omit_none": True})
    mean_abs_diff: float | None = field(default=None, metadata={"omit_none": True})
    tolerance: float | None = field(default=None, metadata={"omit_none": True})

    @property
    def lossless(self) -> bool:
        """Every weight type of the file is a float type (no quantization)."""
        return set(self.out_type.split("/")) <= set(OUT_TYPES)


# --------------------------------------------------------------------------- comparisons
def compare_exact(
    name: str,
    ref: list[np.ndarray],
    got: list[np.ndarray],
    greedy: list[GreedyRecord],
    rel: float = REL_TOLERANCE,
) -> ExactComparison:
    """Tight logit bound (rel * max(1, max |logit|)) plus greedy agreement (near-ties
    allowed)."""
    diffs = np.concatenate([np.abs(g - r).reshape(-1) for r, g in zip(ref, got, strict=True)])
    max_logit = max(float(np.abs(r).max()) for r in ref)
    tol = rel * max(1.0, max_logit)
    for g in greedy:
        g.judge_tie(tol)
    hard = [g.id for g in greedy if g.hard]
    return ExactComparison(
        name=name,
        mode="exact",
        max_abs_diff=float(diffs.max()),
        mean_abs_diff=float(diffs.mean()),
        max_abs_logit=max_logit,
        tolerance=tol,
        greedy_identical=sum(g.identical for g in greedy),
        greedy_near_ties=sum(bool(g.near_tie) for g in greedy),
        greedy_diverged=hard,
        greedy=greedy,
        passed=float(diffs.max()) <= tol and not hard,
    )


def compare_lossy(
    name: str, ref: list[np.ndarray], got: list[np.ndarray], greedy: list[GreedyRecord]
) -> LossyComparison:
    """Top-1 agreement and mean KL(ref || got) over all positions (F16/BF16 builds)."""
    r = np.concatenate(ref).astype(np.float64)
    g = np.concatenate(got).astype(np.float64)
    log_p = r - _logsumexp(r)
    log_q = g - _logsumexp(g)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)
    diffs = np.abs(g - r)
    return LossyComparison(
        name=name,
        mode="lossy",
        top1_agreement=float((r.argmax(-1) == g.argmax(-1)).mean()),
        mean_kl=float(kl.mean()),
        max_kl=float(kl.max()),
        max_abs_diff=float(diffs.max()),
        mean_abs_diff=float(diffs.mean()),
        max_mean_kl=MAX_MEAN_KL,
        greedy_identical=sum(x.identical for x in greedy),
        greedy=greedy,
        passed=float(kl.mean()) <= MAX_MEAN_KL,
    )


def _logsumexp(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    return m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


# --------------------------------------------------------------------------- runs
@dataclass
class Probes:
    ids: list[tuple[str, str, list[int]]]  # (id, text, transformers token ids)
    stop_ids: tuple[int, ...]
    max_new_tokens: int

    @property
    def n_ctx(self) -> int:
        return max(len(x) for _, _, x in self.ids) + self.max_new_tokens + 8


@dataclass
class Run:
    """Logits of every probe and greedy continuations (with per-step logits)."""

    logits: list[np.ndarray]
    greedy: list[list[int]]
    steps: list[list[np.ndarray]]


def transformers_runs(
    src: Path, vectors: Mapping[int, np.ndarray], probes: Probes, steering: Steering | None = None
) -> tuple[Run, Run]:
    """(base, hooked) in float32; the hook adds `vectors` as given (already rounded as a
    baked bias or control vector holds them) and, with `steering`, projects its ablation out
    of the writers (and the embedding)."""
    import torch

    from bake.runtime.hooks import ablate_writers, add_to_blocks
    from bake.runtime.loader import load_model

    model = load_model(src, dtype="float32")
    projections = steering.projections if steering is not None else {}
    embed = steering.embed_projection if steering is not None else None
    runs = []
    for hooked in (False, True):
        run = Run([], [], [])
        with (
            torch.no_grad(),
            add_to_blocks(model, vectors) if hooked else contextlib.nullcontext(),
            ablate_writers(model, projections, embed) if hooked else contextlib.nullcontext(),
        ):
            for _, _, ids in probes.ids:
                _hf_greedy(model, ids, probes, run)
        runs.append(run)
    return runs[0], runs[1]


def _hf_greedy(model: Any, ids: list[int], probes: Probes, run: Run) -> None:
    """Append the prompt's logits (all positions), the greedy continuation and the logits
    that chose each token (KV cache, argmax each step, stop after a stop token)."""
    import torch

    out = model(input_ids=torch.tensor([ids]), use_cache=True)
    run.logits.append(out.logits[0].float().numpy())
    step = out.logits[0, -1].float()
    tokens: list[int] = []
    steps: list[np.ndarray] = []
    for _ in range(probes.max_new_tokens):
        token = int(step.argmax())
        tokens.append(token)
        steps.append(step.numpy())
        if token in probes.stop_ids:
            break
        out = model(
            input_ids=torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True
        )
        step = out.logits[0, -1].float()
    run.greedy.append(tokens)
    run.steps.append(steps)


def llama_run(
    gguf_path: Path, probes: Probes, control_vector: Any = None
) -> tuple[Run, list[bool]]:
    """Logits, greedy continuations and tokenization agreement in llama.cpp."""
    from bake.runtime.llama import LlamaRuntime

    with LlamaRuntime(gguf_path, n_ctx=probes.n_ctx, control_vector=control_vector) as rt:
        logits = [rt.logits(ids) for _, _, ids in probes.ids]
        greedy = [
            rt.greedy(ids, probes.max_new_tokens, probes.stop_ids) for _, _, ids in probes.ids
        ]
        tokens_equal = [rt.tokenize(text) == ids for _, text, ids in probes.ids]
    return Run(logits, greedy, []), tokens_equal


def _greedy_vs(probes: Probes, ref: Run, got: Run) -> list[GreedyRecord]:
    return [
        greedy_record(pid, r, steps, g)
        for (pid, _, _), r, steps, g in zip(
            probes.ids, ref.greedy, ref.steps, got.greedy, strict=True
        )
    ]


def _gguf_steps(run: Run, probes: Probes, gguf_path: Path) -> Run:
    """Per-step logits of a llama.cpp greedy run (the reference side of check (2))."""
    from bake.runtime.llama import LlamaRuntime

    steps = []
    with LlamaRuntime(gguf_path, n_ctx=probes.n_ctx) as rt:
        for (_, _, ids), cont in zip(probes.ids, run.greedy, strict=True):
            full = rt.logits(ids + cont)
            steps.append([full[len(ids) - 1 + i] for i in range(len(cont))])
    return Run(run.logits, run.greedy, steps)


# --------------------------------------------------------------------------- entry point
def verify_gguf(
    steering: Steering,
    gguf_path: str | Path,
    *,
    control_vector: str | Path | None = None,
    prompts: Path | None = None,
    max_new_tokens: int = 32,
    probe_prompts: Sequence[str] | None = None,
) -> GgufVerifyReport:
    """Run the three checks for a baked GGUF, or a GGUF plus control vector."""
    from transformers import AutoTokenizer

    from bake.stages.verify import probe_texts
    from export.llamacpp.writer import convert_to_gguf

    ckpt = steering.checkpoint
    src = ckpt.path
    gguf_path = Path(gguf_path)
    info = inspect_gguf(gguf_path)
    _check_gguf_matches(info, ckpt, gguf_path)
    kind = _kind(info, control_vector, steering, gguf_path)
    vectors = dict(steering.rounded)  # what a hook adds and a baked bias holds
    cv_report = None
    if control_vector is not None:
        cv_report = check_control_vector(Path(control_vector), steering, info)
        if cv_report.rounding == "float32":  # written without --model: unrounded vectors
            vectors = {k: np.asarray(v, dtype=np.float32) for k, v in steering.added.items()}

    tok = AutoTokenizer.from_pretrained(src)
    probes = _probes(tok, prompts, max_new_tokens, probe_texts, probe_prompts)
    base_hf, hooked_hf = transformers_runs(src, vectors, probes, steering)
    # the companion GGUF (unsteered or baked) is written in the type under test when we can
    pair_type = info.out_type if info.out_type in OUT_TYPES else "F32"
    with tempfile.TemporaryDirectory(prefix=".steerbake-verify-", dir=gguf_path.parent) as tmp:
        companion = Path(tmp) / "companion.gguf"
        if steering.plan.ablates:  # baked into the weights: the file (+ its cvec) is the route
            convert_to_gguf(src, companion, pair_type)
            cv = Path(str(control_vector)) if control_vector is not None else None
            steered, tokens_ok = llama_run(gguf_path, probes, cv)
            unsteered, _ = llama_run(companion, probes)
            baked_side, routed, unsteered_type = None, None, pair_type
        elif kind == "baked":
            convert_to_gguf(src, companion, pair_type)
            steered, tokens_ok = llama_run(gguf_path, probes)
            unsteered, _ = llama_run(companion, probes)
            baked_side = (steered, gguf_path)
            routed = None if 0 in vectors else llama_run(companion, probes, vectors)[0]
            unsteered_type = pair_type
        else:
            unsteered, tokens_ok = llama_run(gguf_path, probes)
            steered, _ = llama_run(gguf_path, probes, Path(str(control_vector)))
            routed = steered
            baked_side = None
            if ckpt.spec.gguf_bias_slot:
                convert_to_gguf(src, companion, pair_type, steering)
                baked_side = (llama_run(companion, probes)[0], companion)
            unsteered_type = info.out_type
        comparisons = {
            "unsteered_vs_transformers": _comparator(unsteered_type)(
                "(1) unsteered GGUF vs transformers",
                base_hf.logits,
                unsteered.logits,
                _greedy_vs(probes, base_hf, unsteered),
            )
        }
        if baked_side is not None and routed is not None:
            ref_run = _gguf_steps(baked_side[0], probes, baked_side[1])
            comparisons["baked_vs_control_vector"] = _comparator(info.out_type)(
                "(2) baked GGUF vs unsteered GGUF + control vector",
                ref_run.logits,
                routed.logits,
                _greedy_vs(probes, ref_run, routed),
            )
    comparator, title = _comparator(info.out_type), "transformers + hooks"
    rule = Tolerance.of(steering)
    if comparator is compare_exact and rule.bound is not None:  # 16-bit matrices rounded whole
        comparator = functools.partial(compare_exact, rel=rule.rel)
        title += f" (within the rounding bound {rule.bound})"
    comparisons["steered_vs_hooks"] = comparator(
        f"(3) {'baked GGUF' if kind == 'baked' else 'GGUF + control vector'} vs {title}",
        hooked_hf.logits,
        steered.logits,
        _greedy_vs(probes, hooked_hf, steered),
    )
    return build_report(
        kind,
        info,
        gguf_path,
        control_vector,
        steering,
        probes,
        comparisons,
        tokens_ok,
        cv_report,
        base_hf,
        hooked_hf,
    )


def _comparator(gguf_type: str) -> Any:
    """Tight bounds for F32 weights; agreement and KL for F16/BF16 (and anything lossier)."""
    return compare_exact if gguf_type == "F32" else compare_lossy


def _probes(
    tok: Any,
    prompts: Path | None,
    max_new_tokens: int,
    probe_texts: Any,
    builtin: Sequence[str] | None = None,
) -> Probes:
    """Chat-formatted probes (the built-in ones, or `builtin`, plus a prompt file) with
    transformers' token ids."""
    items = []
    texts = probe_texts(tok, prompts) if builtin is None else probe_texts(tok, prompts, builtin)
    for pid, text in texts:
        ids = tok(text, add_special_tokens=False).input_ids
        if not ids:
            raise InputError(f"probe {pid} tokenizes to nothing; remove empty prompts")
        items.append((pid, text, list(ids)))
    eos = tok.eos_token_id
    stop = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
    return Probes(items, stop, max_new_tokens)


def _check_gguf_matches(info: GgufInfo, ckpt: Any, path: Path) -> None:
    spec = ckpt.spec
    if (info.arch, info.n_layer, info.n_embd) != (
        spec.gguf_arch,
        ckpt.num_layers,
        ckpt.hidden_size,
    ):
        raise PlanMismatchError(
            f"{path} is arch {info.arch} with {info.n_layer} blocks of width {info.n_embd}; "
            f"the model is {spec.gguf_arch} with {ckpt.num_layers} of {ckpt.hidden_size}: "
            "verify the GGUF against the model it was written from"
        )


def _kind(info: GgufInfo, control_vector: Any, steering: Steering, path: Path) -> str:
    if steering.plan.ablates or "ablate" in info.baked:
        return _ablation_kind(info, control_vector, steering, path)
    if info.bias_blocks and control_vector is not None:
        raise InputError(
            f"{path} already carries steering (ffn_down biases on blocks "
            f"{format_layers(info.bias_blocks)}); a control vector ships only "
            "beside an unsteered GGUF, or the steering applies twice"
        )
    if control_vector is not None:
        return "control-vector"
    if not info.bias_blocks:
        raise InputError(
            f"{path} carries no steering: write it with `steerbake gguf MODEL "
            "--plan PLAN`, or verify an unsteered GGUF with --control-vector"
        )
    if info.bias_blocks != sorted(steering.layers):
        raise PlanMismatchError(
            f"{path} has steering biases on blocks "
            f"{format_layers(info.bias_blocks)} but the plan steers "
            f"{format_layers(steering.layers)}: it was baked from another plan"
        )
    return "baked"


def _ablation_kind(info: GgufInfo, control_vector: Any, steering: Steering, path: Path) -> str:
    """A file that carries an ablation: it must be this plan's (kind, layers, ablation), and
    the plan's additive part must be in the file or in the control vector, never both."""
    plan = steering.plan
    recorded = info.plan or {}
    mine = plan.to_json()
    same = all(recorded.get(k) == mine.get(k) for k in ("kind", "layers", "ablation", "alpha"))
    if "ablate" not in info.baked or not same:
        raise PlanMismatchError(
            f"{path} does not carry this plan's ablation ({plan.kind}, layers "
            f"{format_layers(plan.layers)}): write it with `steerbake gguf MODEL --plan PLAN`"
        )
    if "add" in info.baked or not plan.adds:
        if control_vector is not None:
            raise InputError(
                f"{path} carries all of its plan ({', '.join(info.baked)}); a control vector "
                "beside it would apply the additive steering twice: drop --control-vector"
            )
        return "baked"
    if control_vector is None:
        raise InputError(
            f"{path} carries the plan's ablation only; its additive part ships as a control "
            "vector: pass it with --control-vector (steerbake cvec PLAN --model MODEL)"
        )
    return "baked+control-vector"


def check_control_vector(path: Path, steering: Steering, info: GgufInfo) -> ControlVectorCheck:
    """The control vector holds the plan's vectors (rounded to the checkpoint dtype, or
    float32 when written without the model), for this model."""
    from bake.artifacts.control_vector import load_control_vector

    raw, vectors = steering.added, steering.rounded
    hidden = steering.model.fingerprint.hidden_size
    cv = load_control_vector(path)
    if sorted(cv.directions) != sorted(vectors):
        raise PlanMismatchError(
            f"{path} steers blocks {format_layers(sorted(cv.directions))} "
            f"but the plan steers {format_layers(sorted(vectors))}: write "
            "it from this plan with `steerbake cvec`"
        )
    if cv.n_embd != hidden:
        raise PlanMismatchError(
            f"{path} has vectors of length {cv.n_embd}; the model's hidden size is {hidden}"
        )
    diff = max(float(np.abs(cv.directions[k] - vectors[k]).max()) for k in vectors)
    diff_f32 = max(float(np.abs(cv.directions[k] - np.float32(raw[k])).max()) for k in raw)
    scale = max(float(np.abs(v).max()) for v in vectors.values())
    if min(diff, diff_f32) > 1e-2 * scale:  # beyond any rounding: another plan's vectors
        raise PlanMismatchError(
            f"{path} holds other vectors than the plan (max difference "
            f"{diff:.3g}); write it from this plan with `steerbake cvec`"
        )
    return ControlVectorCheck(
        model_hint=cv.model_hint,
        hint_matches=cv.model_hint in (None, info.arch),
        rounding="checkpoint dtype" if diff <= diff_f32 else "float32",
        max_diff_vs_plan=min(diff, diff_f32),
    )


def build_report(
    kind: str,
    info: GgufInfo,
    gguf_path: Path,
    control_vector: Any,
    steering: Steering,
    probes: Probes,
    comparisons: dict[str, Comparison],
    tokens_ok: list[bool],
    cv_report: ControlVectorCheck | None,
    base: Run,
    hooked: Run,
) -> GgufVerifyReport:
    effect = max(
        float(np.abs(h - b).max()) for h, b in zip(hooked.logits, base.logits, strict=True)
    )
    mismatched = [pid for (pid, _, _), ok in zip(probes.ids, tokens_ok, strict=True) if not ok]
    tokenization = Tokenization(sum(tokens_ok), len(tokens_ok), mismatched)
    checks = [Check(c.name, c.passed, c.detail()) for c in comparisons.values()]
    checks.append(
        Check(
            "tokenization (llama.cpp vs transformers)",
            not mismatched,
            f"{tokenization.identical}/{tokenization.prompts} identical",
        )
    )
    if cv_report:
        checks.append(
            Check(
                "control vector holds the plan's vectors",
                True,
                f"max diff {cv_report.max_diff_vs_plan:.3g} ({cv_report.rounding}), "
                f"hint {cv_report.model_hint}",
            )
        )
    if "baked_vs_control_vector" not in comparisons:
        why = (
            f"llama.cpp's {info.arch} has no bias slot, the control vector is the only route"
            if kind == "control-vector"
            else "the plan steers block 0, which no control vector reaches"
        )
        if steering.plan.ablates:
            why = "the plan ablates, which llama.cpp cannot do at run time: the file is the route"
        checks.append(Check("(2) baked GGUF vs control vector", True, f"skipped: {why}"))
    main = comparisons["steered_vs_hooks"]
    exact = main if isinstance(main, ExactComparison) else None
    return GgufVerifyReport(
        check="gguf",
        runtime="llama.cpp",
        kind=kind,
        model=str(steering.model.path),
        gguf=str(gguf_path),
        control_vector=str(control_vector) if control_vector else None,
        arch=info.arch,
        out_type=info.out_type,
        layers=format_layers(steering.layers),
        alpha=steering.plan.alpha,
        prompts=len(probes.ids),
        max_new_tokens=probes.max_new_tokens,
        rel_tolerance=REL_TOLERANCE,
        effect_max=effect,
        comparisons=comparisons,
        tokenization=tokenization,
        control_vector_check=cv_report,
        checks=checks,
        passed=all(c.ok for c in checks),
        max_abs_diff=exact.max_abs_diff if exact else None,
        mean_abs_diff=exact.mean_abs_diff if exact else None,
        tolerance=exact.tolerance if exact else None,
    )
