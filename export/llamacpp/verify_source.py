"""Verify the steering of a GGUF made from a GGUF MODEL (quantized weights kept): `steerbake
verify MODEL.gguf PLAN OUT.gguf [--control-vector CV]`.

  (1) routes: the steered file (patched with ffn_down biases) vs the source file plus the
      plan's control vector, both in llama.cpp on the same quantized weights. Quantized
      matmuls quantize their activations too, so a float-rounding-sized change of the
      residual (adding the bias inside the block instead of after it) can move a logit a
      lot. The tolerance is measured, not assumed: two unsteered runs of the source file,
      the second with an ulp-sized perturbation added at the steered blocks (4 ulps of each
      block's largest steering value), give the noise floor; the check passes at
      max |delta logit| <= 2 x that noise's max and mean |delta| <= 2 x its mean (with a
      floor of 5e-5 * max |logit| for float files, where the noise is ~0).
  (2) reference: the steered GGUF in llama.cpp vs transformers + hooks on the dequantized
      weights, by mean KL and top-1 agreement; quantization alone separates the two, so the
      same comparison unsteered (the quantization gap) is measured beside it, and the check
      passes when steering adds little to it: KL_steered <= 2 * KL_unsteered + 0.01.
  llama.cpp's tokenization of the probes must equal transformers'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bake.artifacts.plan import format_layers
from bake.artifacts.reports import Check, JsonReport
from bake.artifacts.steering import Steering
from bake.errors import InputError
from export.llamacpp.verify import (
    REL_TOLERANCE,
    LossyComparison,
    Probes,
    Run,
    compare_lossy,
    llama_run,
    transformers_runs,
)

NOISE_ULPS = 4  # size of the perturbation that measures the noise floor, in ulps
NOISE_FACTOR = 2.0  # the route check's tolerance, in units of the measured noise
KL_FACTOR, KL_SLACK = 2.0, 0.01  # the reference check: KL <= 2 * quantization KL + 0.01


@dataclass
class RouteComparison(JsonReport):
    """Steered file vs source + control vector, against the measured noise floor."""

    name: str
    max_abs_diff: float
    mean_abs_diff: float
    noise_max: float  # two unsteered runs, one perturbed by NOISE_ULPS ulps
    noise_mean: float
    tolerance_max: float
    tolerance_mean: float
    passed: bool


@dataclass
class SourceVerifyReport(JsonReport):
    """`steerbake verify MODEL.gguf PLAN OUT.gguf`: a GGUF steered from a GGUF MODEL."""

    check: str
    runtime: str
    kind: str  # patched | control-vector
    model: str
    gguf: str
    control_vector: str | None
    layers: str
    alpha: float
    prompts: int
    route: RouteComparison | None
    steered_vs_hooks: LossyComparison
    quantization: LossyComparison  # unsteered file vs unsteered transformers
    checks: list[Check]
    passed: bool

    @property
    def rel_tolerance(self) -> float:
        """The floor of the route check's tolerance, relative to the logit scale."""
        return REL_TOLERANCE


def verify_from_source(
    steering: Steering,
    steered: Path,
    *,
    control_vector: Path | None = None,
    prompts: Path | None = None,
    dequantized: Path | None = None,
    probe_prompts: Sequence[str] | None = None,
) -> SourceVerifyReport:
    """Checks (1) and (2) for `steered` (a patched copy of steering.model's file, or the
    file itself with `control_vector`). `dequantized`: a `steerbake convert` folder of the
    source, run by transformers instead of loading the GGUF again (the same weights)."""
    from bake.runtime.loader import load_tokenizer
    from bake.stages.verify import probe_texts
    from export.llamacpp.verify import _probes

    source = Path(steering.model.path)
    if steering.plan.ablates:
        raise InputError(
            f"the plan ablates, which a GGUF made from {source.name} cannot carry (a patch "
            f"never rewrites weights): convert it (steerbake convert {source.name} -o DIR), "
            "build the GGUF from DIR (steerbake gguf DIR --plan PLAN) and verify that"
        )
    check_steered_from(steering, Path(steered))
    reference = Path(dequantized) if dequantized is not None else source
    probes = _probes(load_tokenizer(reference), prompts, 0, probe_texts, probe_prompts)
    cv = {k: np.asarray(v, np.float32) for k, v in steering.rounded.items()}
    base_hf, hooked_hf = transformers_runs(reference, cv, probes)
    if control_vector is None:
        steered_run, tokens_ok = llama_run(Path(steered), probes)
        route = _route_check(source, probes, cv, steered_run)
    else:
        steered_run, tokens_ok = llama_run(Path(steered), probes, Path(control_vector))
        route = None
    unsteered, _ = llama_run(source, probes)
    quant = compare_lossy("quantization: unsteered GGUF vs transformers", base_hf.logits,
                          unsteered.logits, [])  # fmt: skip
    hooks = compare_lossy(
        "steered GGUF vs transformers + hooks (dequantized)", hooked_hf.logits,
        steered_run.logits, [],
    )  # fmt: skip
    return _report(steering, steered, control_vector, probes, route, hooks, quant, tokens_ok)


def _route_check(
    source: Path, probes: Probes, cv: dict[int, np.ndarray], steered: Run
) -> RouteComparison:
    with_cv, _ = llama_run(source, probes, cv)
    noise = _noise(source, probes, cv)
    diffs = np.concatenate(
        [np.abs(a - b).ravel() for a, b in zip(steered.logits, with_cv.logits, strict=True)]
    )
    floor = REL_TOLERANCE * max(1.0, max(float(np.abs(x).max()) for x in with_cv.logits))
    tol_max = max(NOISE_FACTOR * noise[0], floor)
    tol_mean = max(NOISE_FACTOR * noise[1], floor)
    return RouteComparison(
        "(1) steered GGUF vs source GGUF + control vector (same quantized weights)",
        float(diffs.max()), float(diffs.mean()), noise[0], noise[1], tol_max, tol_mean,
        float(diffs.max()) <= tol_max and float(diffs.mean()) <= tol_mean,
    )  # fmt: skip


def _noise(source: Path, probes: Probes, cv: dict[int, np.ndarray]) -> tuple[float, float]:
    """(max, mean) |delta logit| between two unsteered runs of the source, the second with
    +-NOISE_ULPS ulps of each steered block's largest value added at that block."""
    rng = np.random.default_rng(0)
    eps = {
        layer: (
            NOISE_ULPS * np.spacing(np.float32(np.abs(v).max())) * rng.choice([-1, 1], v.size)
        ).astype(np.float32)
        for layer, v in cv.items()
    }
    plain, _ = llama_run(source, probes)
    nudged, _ = llama_run(source, probes, eps)
    d = np.concatenate(
        [np.abs(a - b).ravel() for a, b in zip(plain.logits, nudged.logits, strict=True)]
    )
    return float(d.max()), float(d.mean())


def _report(
    steering: Steering,
    steered: Path,
    control_vector: Path | None,
    probes: Probes,
    route: RouteComparison | None,
    reference: LossyComparison,
    quant: LossyComparison,
    tokens_ok: list[bool],
) -> SourceVerifyReport:
    bound = KL_FACTOR * quant.mean_kl + KL_SLACK
    checks = [
        Check(
            "(2) steered GGUF vs transformers + hooks",
            reference.mean_kl <= bound,
            f"mean KL {reference.mean_kl:.3g} (<= {bound:.3g} = {KL_FACTOR:g} x the "
            f"quantization's own {quant.mean_kl:.3g} + {KL_SLACK:g}), top-1 agreement "
            f"{reference.top1_agreement:.3f} (quantization alone {quant.top1_agreement:.3f})",
        ),
        Check(
            "tokenization (llama.cpp vs transformers)",
            all(tokens_ok),
            f"{sum(tokens_ok)}/{len(tokens_ok)} identical",
        ),
    ]
    if route is not None:
        checks.insert(0, Check(route.name, route.passed, _route_detail(route)))
    else:
        checks.insert(0, Check("(1) routes", True, "skipped: the control vector is the route"))
    return SourceVerifyReport(
        check="gguf-source",
        runtime="llama.cpp",
        kind="control-vector" if control_vector is not None else "patched",
        model=str(steering.model.path),
        gguf=str(steered),
        control_vector=str(control_vector) if control_vector else None,
        layers=format_layers(steering.layers),
        alpha=steering.plan.alpha,
        prompts=len(probes.ids),
        route=route,
        steered_vs_hooks=reference,
        quantization=quant,
        checks=checks,
        passed=all(c.ok for c in checks),
    )


def _route_detail(r: RouteComparison) -> str:
    return (
        f"max {r.max_abs_diff:.3g} mean {r.mean_abs_diff:.3g} (tolerance {r.tolerance_max:.3g} / "
        f"{r.tolerance_mean:.3g}: {NOISE_FACTOR:g} x the noise of two unsteered runs, max "
        f"{r.noise_max:.3g} mean {r.noise_mean:.3g})"
    )


def check_steered_from(steering: Steering, steered: Path) -> None:
    """A steered file must be a copy of the source MODEL's, not another model's."""
    from bake.files.gguf_file import read_layout

    a, b = read_layout(Path(steering.model.path)), read_layout(Path(steered))
    same = [(t.name, t.dims, t.type_id) for t in a.tensors]
    theirs = {(t.name, t.dims, t.type_id) for t in b.tensors}
    if not set(same) <= theirs:
        raise InputError(
            f"{steered} is not a steered copy of {steering.model.path} (its tensors differ); "
            "verify a GGUF against the file it was patched from"
        )
