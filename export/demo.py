"""`steerbake demo`: the whole pipeline on the embedded toy refuser, every artifact into
one folder: answers -> judge scores -> activations -> WRMD vectors -> tuned plan -> bake ->
verify -> export -> held-out evaluation before/after.

The held-out sets are only measured, never used for fitting or tuning.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from bake.errors import InputError

HELDOUT = ("heldout_sensitive", "heldout_harmful", "heldout_benign")
TUNING = {"sensitive": "tune_sensitive", "harmful": "tune_harmful", "benign": "tune_benign"}


@dataclass
class DemoConfig:
    samples: int = 3  # answers per fitting prompt (temperature 1), for c(x)
    max_new_tokens: int = 40
    limit: int | None = None  # prompts per set (a shortened run), None = all
    alphas: tuple[float, ...] | None = None
    layer_counts: tuple[int, ...] | None = None


@contextmanager
def _step(n: int, title: str) -> Iterator[None]:
    click.secho(f"[{n}/9] {title}", bold=True)
    start = time.perf_counter()
    yield
    click.echo(f"      done in {time.perf_counter() - start:.1f} s")


def _copy_sets(dest: Path, limit: int | None) -> dict[str, Path]:
    """The toy's prompt sets copied into the run folder (first `limit` lines each)."""
    from bake.toy_refuser import PROMPT_SETS, prompt_set

    dest.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in PROMPT_SETS:
        lines = prompt_set(name).read_text().splitlines(keepends=True)
        (dest / f"{name}.jsonl").write_text("".join(lines[:limit] if limit else lines))
        out[name] = dest / f"{name}.jsonl"
    return out


def _judge_accuracy(judge: Any) -> dict[str, Any]:
    from bake.judge import run_calibration

    return {
        r.name: {"accuracy": r.accuracy, "n": r.n} for r in run_calibration(judge, progress=False)
    }


def run_demo(
    output: Path,
    *,
    overwrite: bool = False,
    config: DemoConfig | None = None,
    echo: Callable[[str], None] = click.echo,
) -> dict[str, Any]:
    from bake.fileio import check_output_dir
    from bake.models import toy_model_dir

    cfg = config or DemoConfig()
    check_output_dir(output, overwrite=overwrite)
    model = toy_model_dir()
    if not (model / "config.json").exists():
        raise InputError("the toy refuser is missing from the package; reinstall steerbake")
    if output.exists():
        import shutil

        shutil.rmtree(output)
    output.mkdir(parents=True)
    start = time.perf_counter()
    summary = _pipeline(model, output, cfg)
    summary["seconds"] = time.perf_counter() - start
    (output / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    echo(render_summary(summary))
    return summary


def _pipeline(model: Path, out: Path, cfg: DemoConfig) -> dict[str, Any]:
    from bake.collect import collect
    from bake.evaluate import Measurer, run_evaluate
    from bake.fit import FitOptions, fit
    from bake.fold import bake_model
    from bake.generate import SamplingOptions, TransformersBackend, run_generate
    from bake.judge import make_judge, run_judge
    from bake.tune import ALPHA_MAGNITUDES, TuneSettings, run_tune
    from bake.verify import run_verify

    sets = _copy_sets(out / "prompts", cfg.limit)
    judge = make_judge("pattern")
    with _step(1, "answers: sampling the toy on the fitting prompts"):
        options = SamplingOptions(k=cfg.samples, max_new_tokens=cfg.max_new_tokens)
        run_generate(
            TransformersBackend(str(model), dtype="float32"),
            sets["fit"],
            out / "answers.jsonl",
            options=options,
        )
    with _step(2, "judge: refusal scores c(x) (pattern judge)"):
        run_judge(out / "answers.jsonl", out / "scores.jsonl", judge, cache_path=None)
    with _step(3, "activations at every block output"):
        collect(model, sets["fit"], out / "activations", dtype="float32")
    with _step(4, "WRMD steering vectors"):
        fit(
            out / "activations",
            out / "scores.jsonl",
            out / "vectors.safetensors",
            FitOptions(method="wrmd"),
        )
    with _step(5, "tune: layers and alpha on the tuning sets"):
        settings = TuneSettings(
            layer_counts=cfg.layer_counts, alphas=cfg.alphas or ALPHA_MAGNITUDES
        )
        tuned = run_tune(
            model,
            out / "vectors.safetensors",
            {k: sets[v] for k, v in TUNING.items()},
            out / "plan.json",
            settings=settings,
            report_dir=out / "tuning",
        )
    with _step(6, "bake: bias terms into a new checkpoint"):
        bake_model(model, out / "plan.json", out / "baked")
    with _step(7, "verify: baked == hooked"):
        report = run_verify(model, out / "plan.json", out / "baked")
        (out / "verify_report.json").write_text(json.dumps(report, indent=2) + "\n")
    with _step(8, "export"):
        exported = _export(model, out)
    with _step(9, "evaluate the baked model on the held-out sets"):
        evaluation = run_evaluate(
            model, [sets[n] for n in HELDOUT], baked=out / "baked", measurer=Measurer(judge)
        )
        (out / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n")
    best = tuned.best
    assert best is not None
    return {
        "model": str(model),
        "judge": judge.model_id,
        "judge_accuracy": _judge_accuracy(judge),
        "evaluation": evaluation,
        "plan": {"layers": best.layers, "alpha": best.alpha},
        "verify": {
            k: report[k]
            for k in (
                "passed",
                "max_abs_diff",
                "mean_abs_diff",
                "tolerance",
                "greedy_identical",
                "prompts",
            )
        },
        "artifacts": {
            "answers": "answers.jsonl",
            "scores": "scores.jsonl",
            "activations": "activations/",
            "vectors": "vectors.safetensors",
            "plan": "plan.json",
            "tuning report": "tuning/",
            "baked checkpoint": "baked/",
            "verify report": "verify_report.json",
            "evaluation": "evaluation.json",
            **exported,
        },
    }


def _export(model: Path, out: Path) -> dict[str, str]:
    """Placeholder until the export command lands: the baked folder is the build."""
    return {}


def render_summary(s: dict[str, Any]) -> str:
    ev = s["evaluation"]
    rows = [f"{'held-out set':<22}{'n':>4}{'refusal before':>16}{'refusal after':>15}"]
    for name, r in ev["sets"].items():
        rows.append(
            f"{name:<22}{r['before']['n']:>4}{r['before']['refusal_rate']:>16.0%}"
            f"{r['after']['refusal_rate']:>15.0%}"
        )
    kl = ", ".join(f"{k} {v:.4f}" for k, v in ev["kl"].items())
    acc = "; ".join(f"{k}: {v['accuracy']:.0%} of {v['n']}" for k, v in s["judge_accuracy"].items())
    v = s["verify"]
    lines = [
        "",
        *rows,
        f"benign KL(base || steered): {kl}",
        f"judge: {s['judge']} ({ev['decoding']}); measured accuracy on labelled answers: {acc}",
        f"plan: layers {','.join(map(str, s['plan']['layers']))}, alpha {s['plan']['alpha']:+g}",
        f"verify: {'PASS' if v['passed'] else 'FAIL'}, max |delta logit| "
        f"{v['max_abs_diff']:.2g} (tolerance {v['tolerance']:.2g}), greedy "
        f"{v['greedy_identical']}/{v['prompts']} identical",
        "artifacts:",
    ]
    lines += [f"  {k:<18} {p}" for k, p in s["artifacts"].items()]
    lines.append(f"total {s['seconds']:.0f} s")
    return "\n".join(lines)
