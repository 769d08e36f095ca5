"""The pipeline's commands: inspect, vectors, plan, bake, verify, generate, judge, collect,
fit, tune, evaluate. Each parses, opens what it needs, calls its bake.stages function and
prints; its options are the fields of the dataclasses named in `@options`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from bake.artifacts.tuning import TuneSettings
from bake.judges.backends import JudgeOptions
from bake.runtime.sampling import EngineOptions, SamplingOptions
from bake.stages.bake import BakeOptions
from bake.stages.collect import CollectOptions
from bake.stages.evaluate import EvaluateOptions
from bake.stages.fit import FitLayers, FitOptions
from bake.stages.fit_categories import FitCategoryOptions
from bake.stages.inspect_model import InspectOptions
from bake.stages.judge import JudgeRunOptions
from bake.stages.measure import MeasureOptions, TuneMeasureOptions
from bake.stages.plan import KindOptions, PlanOptions
from bake.stages.tune import TuneFiles
from bake.stages.vectors import ImportOptions
from bake.stages.verify import VerifyOptions
from export.cli.options import PATH, build, options, output, threaded, write_json


@click.command()
@click.argument("model", required=False)
@options(InspectOptions)
def inspect(model: str | None, **kw: Any) -> None:
    """Architecture, size, dtype, shard layout and exact steering routes of MODEL."""
    from bake.stages.inspect_model import render_description, run_inspect

    info = run_inspect(model)
    as_json = build(InspectOptions, kw).as_json
    click.echo(json.dumps(info, indent=2) if as_json else render_description(info))


@click.group()
def vectors() -> None:
    """Create and inspect steering-vector files."""


@vectors.command("import")
@click.argument("src", type=PATH)
@output("Vector file to write (.safetensors).")
@options(ImportOptions)
def vectors_import(src: Path, output: Path, **kw: Any) -> None:
    """Convert per-layer vectors (.npy, .npz, .safetensors, .pt, control-vector .gguf)."""
    from bake.stages.vectors import run_vectors_import

    o = build(ImportOptions, kw)
    vecs = run_vectors_import(src, o.model, output, method=o.method)
    click.echo(
        f"wrote {output}: {len(vecs.layers)} layers, hidden size "
        f"{vecs.fingerprint.hidden_size} ({vecs.fingerprint.architecture})"
    )


@vectors.command("show")
@click.argument("path", type=PATH)
def vectors_show(path: Path) -> None:
    """Print a vector file's metadata and per-layer scales."""
    from bake.stages.vectors import run_vectors_show

    click.echo(json.dumps(run_vectors_show(path), indent=2))


@click.command()
@click.argument("vectors_file", metavar="VECTORS", type=PATH)
@options(PlanOptions, KindOptions)
@output()
def plan(vectors_file: Path, output: Path, **kw: Any) -> None:
    """Write a steering plan: which layers, how strong, which intervention."""
    from bake.stages.plan import describe_plan, run_plan

    o = build(PlanOptions, kw)
    kind = build(KindOptions, kw)
    p = run_plan(vectors_file, o.layers, o.alpha, output, o.multipliers, o.categories, kind)
    click.echo(f"wrote {output}: {describe_plan(p)}")
    if o.categories:
        click.echo(f"  over {p.vectors_file.name}: {', '.join(o.categories)} (whitened)")


@click.command()
@click.argument("model")
@click.argument("plan_file", metavar="PLAN", type=PATH)
@output()
@options(BakeOptions)
def bake(model: str, plan_file: Path, output: Path, **kw: Any) -> None:
    """Fold PLAN's vectors into MODEL's weights (never loads the model)."""
    from bake.artifacts.steering import open_steering
    from bake.stages.bake import run_bake

    steering = open_steering(model, plan_file)
    click.echo(run_bake(steering, output, **vars(build(BakeOptions, kw))).summary())


@click.command()
@click.argument("model")
@click.argument("plan_file", metavar="PLAN", type=PATH)
@click.argument("baked", type=PATH)
@options(VerifyOptions)
@threaded
def verify(model: str, plan_file: Path, baked: Path, **kw: Any) -> None:
    """Prove BAKED (checkpoint, adapter or .gguf) matches MODEL + hook steering."""
    from bake.artifacts.steering import open_steering
    from bake.stages.verify import render_report

    o = build(VerifyOptions, kw)
    steering = open_steering(model, plan_file)
    result: Any
    if steering.model.path.suffix == ".gguf":  # MODEL is a GGUF: OUT is steered from it
        from export.llamacpp.verify_source import verify_from_source

        result = verify_from_source(
            steering, baked, control_vector=o.control_vector, prompts=o.prompts
        )
    elif baked.suffix == ".gguf":
        from export.llamacpp.verify import verify_gguf

        result = verify_gguf(
            steering,
            baked,
            control_vector=o.control_vector,
            prompts=o.prompts,
            max_new_tokens=o.max_new_tokens,
        )
    elif o.static:
        from bake.stages.verify_static import run_verify_static

        result = run_verify_static(steering, baked)
    else:
        from bake.stages.verify import run_verify

        result = run_verify(
            steering,
            baked,
            prompts=o.prompts,
            device=o.device,
            dtype=o.dtype,
            max_new_tokens=o.max_new_tokens,
        )
    write_json(o.report, result.to_json())
    click.echo(render_report(result))
    sys.exit(0 if result.passed else 1)


@click.command()
@click.argument("model")
@click.argument("prompts", type=PATH)
@output("ANSWERS.jsonl; appended, so a rerun resumes where it stopped.")
@options((EngineOptions, "backend"), SamplingOptions, EngineOptions)
@threaded
def generate(model: str, prompts: Path, output: Path, **kw: Any) -> None:
    """K answers per prompt with their mean token log-probs (input of `judge`)."""
    from bake.artifacts.prompts import load_prompts
    from bake.runtime.sampling import make_backend
    from bake.stages.generate import run_generate

    sampling = build(SamplingOptions, kw)
    load_prompts(prompts)  # bad prompt files fail before a model is loaded
    e = build(EngineOptions, kw)
    engine = make_backend(model, e)
    chunk = e.batch_size if e.backend == "transformers" else max(1, e.concurrency)
    click.echo(run_generate(engine, prompts, output, options=sampling, chunk=chunk).render())


@click.command()
@click.argument("answers", required=False, type=PATH)
@click.option("-o", "--output", type=PATH, default=None, help="SCORES.jsonl to write.")
@options(
    (JudgeOptions, "backend", "url", "api_key_env", "model", "structured"),
    (JudgeRunOptions, "cache", "band"),
    JudgeOptions,
    JudgeRunOptions,
)
@threaded
def judge(answers: Path | None, output: Path | None, **kw: Any) -> None:
    """Judge ANSWERS and write refusal scores c(x) to SCORES (resumable)."""
    from bake.errors import InputError
    from bake.judges.rubric import RUBRIC, RUBRIC_VERSION

    run = build(JudgeRunOptions, kw)
    if run.show_rubric:
        click.echo(f"# {RUBRIC_VERSION}\n{RUBRIC}")
        return
    if not run.calibrate and (answers is None or output is None):
        raise InputError("judge needs ANSWERS and -o SCORES (or --calibrate / --show-rubric)")
    from bake.judges.backends import make_judge
    from bake.judges.calibration import run_calibration
    from bake.stages.judge import run_judge

    engine = make_judge(build(JudgeOptions, kw))
    if run.calibrate:
        for result in run_calibration(engine, list(run.calibration_sets) or None, run.cache):
            click.echo(result.render())
        return
    assert answers is not None and output is not None
    cache = run.cache or output.with_name(output.name + ".judge-cache.sqlite")
    click.echo(run_judge(answers, output, engine, cache_path=cache, band=run.band).render())


@click.command()
@click.argument("model")
@click.argument("prompts", type=PATH)
@output("ACTS folder to write (safetensors shards + index.json).")
@options(CollectOptions)
@threaded
def collect(model: str, prompts: Path, output: Path, **kw: Any) -> None:
    """Block-output activations of MODEL on PROMPTS, one row per prompt and layer."""
    from bake.artifacts.plan import format_layers
    from bake.stages.collect import run_collect

    acts = run_collect(model, prompts, output, **vars(build(CollectOptions, kw)))
    click.echo(
        f"wrote {output}: {len(acts.ids)} prompts x layers "
        f"{format_layers(acts.layers)}, hidden size {acts.fingerprint.hidden_size}, "
        f"position {acts.position}"
    )


@click.command()
@click.argument("acts", type=PATH)
@click.argument("scores", type=PATH)
@output("VECTORS.safetensors to write.")
@options(FitOptions, FitLayers, FitCategoryOptions)
@threaded
def fit(acts: Path, scores: Path, output: Path, **kw: Any) -> None:
    """Fit steering vectors (MD, RMD, WRMD) from ACTS and SCORES ({id, score} JSONL)."""
    from bake.stages.fit import render_diagnostics, run_fit

    opts, cats = build(FitOptions, kw), build(FitCategoryOptions, kw)
    layers = build(FitLayers, kw).layers
    if cats.by_category:
        from bake.stages.fit_categories import render_categories, run_fit_by_category

        result = run_fit_by_category(
            acts, scores, output, opts, names=cats.categories, layers=layers
        )
        click.echo(render_diagnostics(result.pooled))
        click.echo(render_categories(result))
        click.echo(f"wrote {output}: {opts.method}, categories {', '.join(result.names)}")
        return
    vecs = run_fit(acts, scores, output, opts, layers=layers, categories=cats.categories)
    counts = vecs.provenance["counts"]
    click.echo(render_diagnostics(vecs))
    click.echo(
        f"wrote {output}: {opts.method}, {len(vecs.layers)} layers, refusal "
        f"{counts['refusal']}, compliant {counts['compliant']}, neutral "
        f"{counts['neutral']} (held out for diagnostics: {counts['heldout']})"
    )
    if counts.get("dropped_scores"):
        click.echo(
            f"note: {counts['dropped_scores']} scored prompts have no activation row and were "
            "left out (collect them too to use them)"
        )


@click.command()
@click.argument("model")
@click.argument("vectors_file", metavar="VECTORS", type=PATH)
@options(
    (TuneFiles, "sensitive", "harmful", "benign", "target"),
    (TuneSettings, "goal", "harmful_tolerance", "benign_tolerance", "kl_max", "stage1", "confirm"),
    TuneSettings,
    TuneFiles,
    TuneMeasureOptions,
)
@threaded
def tune(model: str, vectors_file: Path, **kw: Any) -> None:
    """Search vector, layers and alpha (forward-pass proxy, then the best confirmed by
    generating and judging); write PLAN and a tuning report (tables and plots)."""
    from bake.artifacts.tuning import render_table
    from bake.stages.tune import run_tune

    settings, files = build(TuneSettings, kw), build(TuneFiles, kw)
    m = build(TuneMeasureOptions, kw)
    result = run_tune(
        model,
        vectors_file,
        files.sets(),
        files.output,
        settings=settings,
        measurer=m.measurer(),
        report_dir=files.report_dir,
        dtype=m.dtype,
        device=m.device,
    )
    click.echo(render_table(result))
    click.echo(f"wrote {files.output}")


@click.command()
@click.argument("model")
@options(EvaluateOptions, MeasureOptions)
@threaded
def evaluate(model: str, **kw: Any) -> None:
    """Refusal rate per prompt set before/after steering, and benign KL."""
    from bake.artifacts.probe import Probe
    from bake.artifacts.steering import open_steering
    from bake.stages.evaluate import render_evaluation, run_evaluate

    o, m = build(EvaluateOptions, kw), build(MeasureOptions, kw)
    steering = open_steering(model, o.plan) if o.plan is not None else None
    result = run_evaluate(
        model,
        o.prompts,
        steering=steering,
        baked=o.baked,
        measurer=m.measurer(),
        kl_sets=o.kl_sets or None,
        dtype=m.dtype,
        device=m.device,
        answers_file=o.answers,
        probe=Probe.load(o.probe) if o.probe is not None else None,
        probe_mode=o.probe_mode,
    )
    write_json(o.report, result.to_json())
    click.echo(render_evaluation(result))


COMMANDS = [inspect, vectors, plan, bake, verify, generate, judge, collect, fit, tune, evaluate]
