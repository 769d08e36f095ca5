"""`steerbake demo`: the whole pipeline on the embedded toy refuser, every artifact into
one folder: answers -> judge scores -> activations -> WRMD vectors -> tuned plan -> bake ->
verify -> export -> held-out evaluation before/after.

The held-out sets are only measured, never used for fitting or tuning.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bake.errors import InputError
from bake.files.jsonio import dumps
from bake.options import OVERWRITE_HELP, opt

if TYPE_CHECKING:
    from bake.artifacts.steering import Steering

HELDOUT = ("heldout_sensitive", "heldout_harmful", "heldout_benign")
TUNING = {"sensitive": "tune_sensitive", "harmful": "tune_harmful", "benign": "tune_benign"}
BATCH = 32  # prompts per forward pass for the toy
LAMBDA = 10.0  # WRMD ridge, relative to trace(Sigma)/d


@dataclass(frozen=True)
class DemoOptions:
    overwrite: bool = opt(False, OVERWRITE_HELP)


@dataclass
class DemoConfig:
    samples: int = 5  # answers per fitting prompt (temperature 1), for c(x)
    max_new_tokens: int = 40
    limit: int | None = None  # prompts per tuning/held-out set (a shortened run); None = all
    fit_limit: int | None = None  # prompts of the fitting set; None = all
    alphas: tuple[float, ...] | None = None
    layer_counts: tuple[int, ...] | None = None


STEP_SECONDS: dict[str, float] = {}  # step title -> seconds, of the run in progress


@contextmanager
def _step(n: int, title: str) -> Iterator[None]:
    click.secho(f"[{n}/9] {title}", bold=True)
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    STEP_SECONDS[title.split(":")[0]] = round(seconds, 2)
    click.echo(f"      done in {seconds:.1f} s")


def _copy_sets(dest: Path, limit: int | None, fit_limit: int | None) -> dict[str, Path]:
    """The toy's prompt sets copied into the run folder (the first lines of each, when a
    shortened run asks for fewer)."""
    from bake.toy_refuser import PROMPT_SETS, prompt_set

    dest.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in PROMPT_SETS:
        lines = prompt_set(name).read_text().splitlines(keepends=True)
        n = fit_limit if name == "fit" else limit
        (dest / f"{name}.jsonl").write_text("".join(lines[:n] if n else lines))
        out[name] = dest / f"{name}.jsonl"
    return out


def _judge_accuracy(judge: Any) -> dict[str, Any]:
    from bake.judges.calibration import run_calibration

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
    import torch

    from bake.files.fileio import check_output_dir
    from bake.model.resolve import toy_model_dir

    cfg = config or DemoConfig()
    check_output_dir(output, overwrite=overwrite)
    # The toy is tiny: every matmul is latency-bound, and a second intra-op thread only
    # contends (measured on 2 cores: 1.1 s vs 5.2 s to sample 64 answers).
    torch.set_num_threads(1)
    model = toy_model_dir()
    if not (model / "config.json").exists():
        raise InputError("the toy refuser is missing from the package; reinstall steerbake")
    if output.exists():
        import shutil

        shutil.rmtree(output)
    output.mkdir(parents=True)
    start = time.perf_counter()
    STEP_SECONDS.clear()
    summary = _pipeline(model, output, cfg)
    summary["seconds"] = time.perf_counter() - start
    summary["step_seconds"] = dict(STEP_SECONDS)
    (output / "demo_summary.json").write_text(dumps(summary, indent=2) + "\n")
    echo(render_summary(summary))
    return summary


def _pipeline(model: Path, out: Path, cfg: DemoConfig) -> dict[str, Any]:
    from bake.artifacts.steering import open_steering
    from bake.artifacts.tuning import TuneSettings
    from bake.judges.backends import JudgeOptions, make_judge
    from bake.runtime.sampling import SamplingOptions, TransformersBackend
    from bake.stages.bake import run_bake
    from bake.stages.collect import run_collect
    from bake.stages.evaluate import run_evaluate
    from bake.stages.fit import FitOptions, run_fit
    from bake.stages.generate import run_generate
    from bake.stages.judge import run_judge
    from bake.stages.measure import Measurer
    from bake.stages.tune import run_tune
    from bake.stages.verify import run_verify
    from bake.toy_refuser import lexicon_path

    sets = _copy_sets(out / "prompts", cfg.limit, cfg.fit_limit)
    # The pattern judge with the toy's lexicon: steered text that breaks down into words the
    # toy never learned counts as refusal (the rubric's "corrupted output"), which plain
    # keyword matching misses (README: judge accuracy on the toy's hand-labelled answers).
    judge = make_judge(JudgeOptions(backend="pattern", lexicon=lexicon_path()))
    measurer = Measurer(judge, batch_size=BATCH)
    with _step(1, "answers: sampling the toy on the fitting prompts"):
        options = SamplingOptions(k=cfg.samples, max_new_tokens=cfg.max_new_tokens)
        run_generate(
            TransformersBackend(str(model), dtype="float32", batch_size=BATCH),
            sets["fit"],
            out / "answers.jsonl",
            options=options,
        )
    with _step(2, "judge: refusal scores c(x) (pattern judge with the toy's lexicon)"):
        run_judge(out / "answers.jsonl", out / "scores.jsonl", judge, cache_path=None)
    with _step(3, "activations at every block output"):
        run_collect(model, sets["fit"], out / "activations", dtype="float32")
        styles = _style_geometry(out)
    with _step(4, "WRMD steering vectors"):
        run_fit(
            out / "activations",
            out / "scores.jsonl",
            out / "vectors.safetensors",
            # ~130 scored prompts for d = 256: the compliant covariance is rank-deficient,
            # so the ridge is set well above the library default (0.1 * trace/d)
            FitOptions(method="wrmd", lam=LAMBDA),
        )
    with _step(5, "tune: layers and alpha on the tuning sets"):
        settings = TuneSettings(layer_counts=cfg.layer_counts, alphas=cfg.alphas)
        tuned = run_tune(
            model,
            out / "vectors.safetensors",
            {k: sets[v] for k, v in TUNING.items()},
            out / "plan.json",
            settings=settings,
            measurer=measurer,
            report_dir=out / "tuning",
        )
    with _step(6, "bake: bias terms into a new checkpoint"):
        steering = open_steering(model, out / "plan.json")
        run_bake(steering, out / "baked")
    with _step(7, "verify: baked == hooked"):
        report = run_verify(steering, out / "baked").to_json()
        (out / "verify_report.json").write_text(dumps(report, indent=2) + "\n")
    with _step(8, "evaluate the baked model on the held-out sets"):
        evaluation = run_evaluate(
            model, [sets[n] for n in HELDOUT], baked=out / "baked", measurer=measurer
        ).to_json()
        (out / "evaluation.json").write_text(dumps(evaluation, indent=2) + "\n")
    with _step(9, "export: safetensors + GGUF builds with cards, checked in llama.cpp"):
        exported = _export(steering, out, sets["heldout_sensitive"])
    best = tuned.best
    assert best is not None
    keys = ("passed", "max_abs_diff", "mean_abs_diff", "tolerance", "greedy_identical", "prompts")
    return {
        "model": str(model),
        "judge": judge.model_id,
        "judge_accuracy": _judge_accuracy(judge),
        "evaluation": evaluation,
        "plan": {"layers": list(best.candidate.layers), "alpha": best.candidate.alpha},
        "refusal_styles": styles,
        "verify": {k: report[k] for k in keys},
        "llama_cpp_sample": exported.pop("sample"),
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


def _export(steering: Steering, out: Path, sensitive: Path) -> dict[str, Any]:
    """run_export into out/export, then one held-out sensitive prompt answered by the
    exported GGUF in llama.cpp (greedy)."""
    from bake.artifacts.prompts import load_prompts
    from bake.runtime.llama import LlamaRuntime
    from export.publish.build import run_export
    from export.publish.job import ExportOptions

    opts = ExportOptions(
        name="toy-refuser-steered",
        tuning_report=out / "tuning" / "tuning_report.json",
        eval_report=out / "evaluation.json",
        progress=False,
    )
    result = run_export(steering, out / "export", opts)
    gguf = next((out / "export").glob("*-GGUF/*.gguf"))
    prompt = load_prompts(sensitive)[0].text
    with LlamaRuntime(gguf) as runtime:
        messages = [{"role": "user", "content": prompt}]
        answer = "".join(runtime.stream_chat(messages, max_tokens=48, temperature=0.0))
    folders = {Path(f).name: f"export/{Path(f).name}/" for f in result.folders}
    return {**folders, "sample": {"gguf": gguf.name, "prompt": prompt, "answer": answer}}


def _style_geometry(out: Path) -> str:
    """The toy's refusal styles as directions (`steerbake analyze` with categories, on the
    demo's own answers and activations), as text; why not, when too few refusals."""
    from bake.stages.refusal_styles import render_style_geometry, toy_style_geometry

    try:
        text = render_style_geometry(toy_style_geometry(out))
    except InputError as e:
        text = f"refusal styles: not shown ({e})"
    click.echo(text)
    return text


def _short(text: str, width: int = 96) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


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
    ]
    lines.append("sample answers (greedy, transformers), before -> after:")
    for name, r in ev["sets"].items():
        x = r["samples"][0]
        lines += [
            f"  [{name}] {x['prompt']}",
            f"    before: {_short(x['before'])}",
            f"    after:  {_short(x['after'])}",
        ]
    sample = s["llama_cpp_sample"]
    lines.append(f"llama.cpp ({sample['gguf']}), held-out sensitive prompt:")
    lines.append(f"  Q: {sample['prompt']}")
    lines.append(f"  A: {sample['answer'].strip()}")
    lines.append("artifacts:")
    lines += [f"  {k:<24} {p}" for k, p in s["artifacts"].items()]
    lines.append(f"total {s['seconds']:.0f} s")
    return "\n".join(lines)
