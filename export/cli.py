"""The `steerbake` command line. Thin: parse, call one library function, print a summary.

Heavy imports (torch, transformers) happen inside commands so `--help` is instant.
A SteerbakeError becomes one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from bake.errors import SteerbakeError

MODEL_HELP = "Model folder, Hub id in the local cache, or 'toy-refuser' (the default)."


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SteerbakeError as e:
            click.echo(f"steerbake: error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("steerbake: interrupted; no output was left half-written", err=True)
            sys.exit(130)


def _version() -> str:
    from bake import __version__

    return __version__


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), prog_name="steerbake")
def main() -> None:
    """Bake refusal-steering vectors into model files you can ship."""


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


# --------------------------------------------------------------------------- inspect
@main.command()
@click.argument("model", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def inspect(model: str | None, as_json: bool) -> None:
    """Architecture, size, dtype, shard layout and exact steering routes of MODEL."""
    from bake.stages.inspect_model import render_description, run_inspect

    info = run_inspect(model)
    click.echo(json.dumps(info, indent=2) if as_json else render_description(info))


# --------------------------------------------------------------------------- vectors
@main.group()
def vectors() -> None:
    """Create and inspect steering-vector files."""


@vectors.command("import")
@click.argument("src", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Vector file to write (.safetensors).",
)
@click.option("--model", default=None, help=MODEL_HELP + " Gives architecture and sizes.")
@click.option(
    "--method", default="imported", show_default=True, help="Method recorded in the metadata."
)
def vectors_import(src: Path, output: Path, model: str | None, method: str) -> None:
    """Convert per-layer vectors (.npy, .npz, .safetensors, .pt, control-vector .gguf)."""
    from bake.stages.vectors import run_vectors_import

    vecs = run_vectors_import(src, model, output, method=method)
    click.echo(
        f"wrote {output}: {len(vecs.layers)} layers, hidden size "
        f"{vecs.fingerprint.hidden_size} ({vecs.fingerprint.architecture})"
    )


@vectors.command("show")
@click.argument("path", type=click.Path(path_type=Path))
def vectors_show(path: Path) -> None:
    """Print a vector file's metadata and per-layer scales."""
    from bake.stages.vectors import run_vectors_show

    _print_json(run_vectors_show(path))


# --------------------------------------------------------------------------- plan
@main.command()
@click.argument("vectors_file", metavar="VECTORS", type=click.Path(path_type=Path))
@click.option("--layers", required=True, help="0-based blocks, ranges inclusive: 1,3-5.")
@click.option(
    "--alpha",
    type=float,
    required=True,
    help="Strength as a fraction of a typical residual norm; <0 removes refusal.",
)
@click.option(
    "--multiplier",
    "multipliers",
    multiple=True,
    metavar="LAYER=M",
    help="Per-layer multiplier on alpha (repeatable).",
)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
def plan(
    vectors_file: Path, layers: str, alpha: float, multipliers: tuple[str, ...], output: Path
) -> None:
    """Write a steering plan: which layers, how strong."""
    from bake.artifacts.plan import format_layers
    from bake.stages.plan import run_plan

    p = run_plan(vectors_file, layers, alpha, output, multipliers)
    click.echo(f"wrote {output}: layers {format_layers(p.layers)}, alpha {p.alpha:g}")


# --------------------------------------------------------------------------- bake
@main.command()
@click.argument("model")
@click.argument("plan_file", metavar="PLAN", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
@click.option(
    "--route",
    type=click.Choice(["auto", "bias", "adapter"]),
    default="auto",
    show_default=True,
    help="bias: new checkpoint; adapter: PEFT adapter folder.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option(
    "--link",
    is_flag=True,
    help="Symlink unchanged shards instead of copying (output shares the source's "
    "files: never edit it in place).",
)
def bake(
    model: str, plan_file: Path, output: Path, route: str, overwrite: bool, link: bool
) -> None:
    """Fold PLAN's vectors into MODEL's weights (never loads the model)."""
    from bake.artifacts.steering import open_steering
    from bake.stages.bake import run_bake

    steering = open_steering(model, plan_file)
    result = run_bake(steering, output, route=route, overwrite=overwrite, link=link)
    click.echo(result.summary())


# --------------------------------------------------------------------------- verify
@main.command()
@click.argument("model")
@click.argument("plan_file", metavar="PLAN", type=click.Path(path_type=Path))
@click.argument("baked", type=click.Path(path_type=Path))
@click.option(
    "--prompts",
    type=click.Path(path_type=Path),
    default=None,
    help="JSONL ({'prompt': ...}) or text file, one prompt per line.",
)
@click.option(
    "--report", type=click.Path(path_type=Path), default=None, help="Write the JSON report here."
)
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default="float32", show_default=True, help="Compute dtype of both models.")
@click.option("--max-new-tokens", default=32, show_default=True)
@click.option(
    "--static",
    "static",
    is_flag=True,
    help="Check tensors byte by byte instead of running the models.",
)
@click.option(
    "--control-vector",
    type=click.Path(path_type=Path),
    default=None,
    help="With a .gguf BAKED: the control vector that goes with it (unsteered GGUF).",
)
def verify(
    model: str,
    plan_file: Path,
    baked: Path,
    prompts: Path | None,
    report: Path | None,
    device: str,
    dtype: str,
    max_new_tokens: int,
    static: bool,
    control_vector: Path | None,
) -> None:
    """Prove BAKED (checkpoint, adapter or .gguf) matches MODEL + hook steering."""
    from bake.artifacts.steering import open_steering
    from bake.stages.verify import render_report

    steering = open_steering(model, plan_file)
    result: Any
    if baked.suffix == ".gguf":
        from export.llamacpp.verify import verify_gguf

        result = verify_gguf(
            steering,
            baked,
            control_vector=control_vector,
            prompts=prompts,
            max_new_tokens=max_new_tokens,
        )
    elif static:
        from bake.stages.verify_static import run_verify_static

        result = run_verify_static(steering, baked)
    else:
        from bake.stages.verify import run_verify

        result = run_verify(
            steering,
            baked,
            prompts=prompts,
            device=device,
            dtype=dtype,
            max_new_tokens=max_new_tokens,
        )
    if report:
        from bake.files.fileio import atomic_write_path

        with atomic_write_path(report) as tmp:
            tmp.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    click.echo(render_report(result))
    sys.exit(0 if result.passed else 1)


# --------------------------------------------------------------------------- generate, judge
def _json_option(text: str | None, name: str) -> dict[str, Any]:
    from bake.errors import InputError

    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise InputError(f"{name} must be a JSON object, e.g. '{{\"top_k\": 0}}'")
    return value


API_KEY_HELP = (
    "Environment variable holding the server's API key [default: OPENAI_API_KEY]; "
    "HF_TOKEN is never sent to a server."
)
LEXICON_HELP = (
    "Pattern judge: the judged model's word list (one per line; `toy` for the toy "
    "refuser's); answers mostly outside it count as corrupted, hence refusal."
)


@main.command()
@click.argument("model")
@click.argument("prompts", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="ANSWERS.jsonl; appended, so a rerun resumes where it stopped.",
)
@click.option(
    "--backend",
    type=click.Choice(["transformers", "openai", "llama"]),
    default="transformers",
    show_default=True,
    help="transformers: MODEL is a folder/Hub id/'toy-refuser'; openai: MODEL is "
    "the server's model name; llama: MODEL is a .gguf file.",
)
@click.option("-k", "k", default=5, show_default=True, help="Answers per prompt.")
@click.option("--max-new-tokens", default=256, show_default=True)
@click.option("--greedy", is_flag=True, help="Argmax decoding (the K answers are identical).")
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--think-end",
    default=None,
    help="End-of-thinking marker of a reasoning model (e.g. '</think>'): the text "
    "after it is the answer; answers without it are flagged.",
)
@click.option("--system", default=None, help="System message for every prompt.")
@click.option("--url", default=None, help="Server base URL (openai backend).")
@click.option("--api-key-env", default=None, metavar="NAME", help=API_KEY_HELP)
@click.option(
    "--extra-body",
    default=None,
    help='JSON merged into each server request, e.g. \'{"top_k": 0, "min_p": 0}\'.',
)
@click.option("--batch-size", default=8, show_default=True)
@click.option("--concurrency", default=4, show_default=True, help="Requests in flight.")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds per request.")
@click.option("--retries", default=3, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default="auto", show_default=True)
def generate(
    model: str,
    prompts: Path,
    output: Path,
    backend: str,
    k: int,
    max_new_tokens: int,
    greedy: bool,
    seed: int,
    think_end: str | None,
    system: str | None,
    url: str | None,
    api_key_env: str | None,
    extra_body: str | None,
    batch_size: int,
    concurrency: int,
    timeout: float,
    retries: int,
    device: str,
    dtype: str,
) -> None:
    """K answers per prompt with their mean token log-probs (input of `judge`)."""
    from bake.artifacts.prompts import load_prompts
    from bake.runtime.sampling import SamplingOptions, make_backend
    from bake.stages.generate import run_generate

    options = SamplingOptions(
        k=k,
        max_new_tokens=max_new_tokens,
        greedy=greedy,
        seed=seed,
        think_end=think_end,
        system=system,
    )
    load_prompts(prompts)  # bad prompt files fail before a model is loaded
    engine = make_backend(
        backend,
        model,
        url=url,
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        concurrency=concurrency,
        timeout=timeout,
        retries=retries,
        extra_body=_json_option(extra_body, "--extra-body"),
        api_key_env=api_key_env,
    )
    chunk = batch_size if backend == "transformers" else max(1, concurrency)
    click.echo(run_generate(engine, prompts, output, options=options, chunk=chunk).render())


@main.command()
@click.argument("answers", required=False, type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), default=None, help="SCORES.jsonl to write."
)
@click.option(
    "--backend",
    type=click.Choice(["openai", "llama", "transformers", "pattern"]),
    default="openai",
    show_default=True,
    help="pattern is a keyword baseline, weaker than an LLM judge.",
)
@click.option("--url", default=None, help="Judge server base URL (openai backend).")
@click.option("--api-key-env", default=None, metavar="NAME", help=API_KEY_HELP)
@click.option(
    "--judge-model",
    default=None,
    help="openai: model name (default: the server's first); llama: .gguf file; "
    "transformers: model folder.",
)
@click.option(
    "--structured",
    type=click.Choice(["auto", "json_schema", "json_object", "none"]),
    default="auto",
    show_default=True,
    help="Structured output: json_schema (OpenAI, vLLM), json_object (llama.cpp); "
    "auto tries them in that order.",
)
@click.option(
    "--cache",
    "cache_path",
    type=click.Path(path_type=Path),
    default=None,
    help="SQLite judge cache [default: OUTPUT.judge-cache.sqlite].",
)
@click.option(
    "--band",
    default=0.1,
    show_default=True,
    help="Neutral band: refusal if c > band, compliance if c < -band.",
)
@click.option("--concurrency", default=4, show_default=True, help="Judge calls in flight.")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds per judge call.")
@click.option("--retries", default=3, show_default=True)
@click.option(
    "--backoff",
    default=1.0,
    show_default=True,
    help="Seconds before the first retry; doubles each time.",
)
@click.option("--max-tokens", default=512, show_default=True, help="Judge reply length.")
@click.option(
    "--analysis-chars",
    default=400,
    show_default=True,
    help="Cap on the judge's analysis where the schema is enforced (llama.cpp).",
)
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default="auto", show_default=True)
@click.option(
    "--lexicon",
    default=None,
    help=LEXICON_HELP,
)
@click.option("--show-rubric", is_flag=True, help="Print the judge rubric and exit.")
@click.option(
    "--calibrate",
    is_flag=True,
    help="Report the judge's accuracy and confusion on the shipped labelled sets.",
)
@click.option(
    "--calibration-set",
    "calibration_sets",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Labelled JSONL ({prompt, answer, label, kind}) for --calibrate.",
)
def judge(
    answers: Path | None,
    output: Path | None,
    backend: str,
    url: str | None,
    api_key_env: str | None,
    judge_model: str | None,
    structured: str,
    cache_path: Path | None,
    band: float,
    concurrency: int,
    timeout: float,
    retries: int,
    backoff: float,
    max_tokens: int,
    analysis_chars: int,
    device: str,
    dtype: str,
    lexicon: str | None,
    show_rubric: bool,
    calibrate: bool,
    calibration_sets: tuple[Path, ...],
) -> None:
    """Judge ANSWERS and write refusal scores c(x) to SCORES (resumable)."""
    from bake.errors import InputError
    from bake.judges.rubric import RUBRIC, RUBRIC_VERSION

    if show_rubric:
        click.echo(f"# {RUBRIC_VERSION}\n{RUBRIC}")
        return
    if not calibrate and (answers is None or output is None):
        raise InputError("judge needs ANSWERS and -o SCORES (or --calibrate / --show-rubric)")
    from bake.judges.backends import make_judge
    from bake.judges.calibration import run_calibration
    from bake.stages.judge import run_judge

    engine = make_judge(
        backend,
        url=url,
        model=judge_model,
        structured=structured,
        concurrency=concurrency,
        timeout=timeout,
        retries=retries,
        backoff=backoff,
        max_tokens=max_tokens,
        device=device,
        dtype=dtype,
        analysis_chars=analysis_chars,
        lexicon=_lexicon(lexicon),
        api_key_env=api_key_env,
    )
    if calibrate:
        for result in run_calibration(engine, list(calibration_sets) or None, cache_path):
            click.echo(result.render())
        return
    assert answers is not None and output is not None
    cache = cache_path or output.with_name(output.name + ".judge-cache.sqlite")
    click.echo(run_judge(answers, output, engine, cache_path=cache, band=band).render())


# --------------------------------------------------------------------------- collect, fit
@main.command()
@click.argument("model")
@click.argument("prompts", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="ACTS folder to write (safetensors shards + index.json).",
)
@click.option("--layers", default=None, help="0-based blocks, ranges inclusive [default: all].")
@click.option(
    "--position",
    type=click.Choice(["last", "template", "mean"]),
    default="last",
    show_default=True,
    help="last prompt token; mean over the chat-template tokens after the "
    "instruction; mean over all prompt tokens.",
)
@click.option("--batch-size", default=8, show_default=True)
@click.option("--system", default=None, help="System message for every prompt.")
@click.option("--device", default="cpu", show_default=True)
@click.option(
    "--dtype",
    default="auto",
    show_default=True,
    help="auto: the checkpoint's dtype on an accelerator, float32 on the CPU.",
)
@click.option(
    "--device-map",
    type=click.Choice(["auto"]),
    default=None,
    help="Spread a model larger than one device over all devices (accelerate).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
def collect(
    model: str,
    prompts: Path,
    output: Path,
    layers: str | None,
    position: str,
    batch_size: int,
    system: str | None,
    device: str,
    dtype: str,
    device_map: str | None,
    overwrite: bool,
) -> None:
    """Block-output activations of MODEL on PROMPTS, one row per prompt and layer."""
    from bake.artifacts.plan import format_layers, parse_layers
    from bake.stages.collect import run_collect

    acts = run_collect(
        model,
        prompts,
        output,
        device=device,
        dtype=dtype,
        device_map=device_map,
        layers=parse_layers(layers) if layers else None,
        position=position,
        batch_size=batch_size,
        system=system,
        overwrite=overwrite,
    )
    click.echo(
        f"wrote {output}: {len(acts.ids)} prompts x layers "
        f"{format_layers(acts.layers)}, hidden size {acts.fingerprint.hidden_size}, "
        f"position {acts.position}"
    )


@main.command()
@click.argument("acts", type=click.Path(path_type=Path))
@click.argument("scores", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="VECTORS.safetensors to write.",
)
@click.option(
    "--method",
    type=click.Choice(["md", "rmd", "wrmd"]),
    default="wrmd",
    show_default=True,
    help="wrmd weights each prompt by |score|.",
)
@click.option(
    "--covariance",
    type=click.Choice(["compliant", "pooled"]),
    default="compliant",
    show_default=True,
    help="Covariance of the compliant set, or pooled within-class.",
)
@click.option(
    "--lambda",
    "lam",
    default=0.1,
    show_default=True,
    help="Ridge lambda (relative to trace(Sigma)/d unless --lambda-mode absolute).",
)
@click.option(
    "--lambda-mode",
    type=click.Choice(["relative", "absolute"]),
    default="relative",
    show_default=True,
)
@click.option(
    "--float64/--float32",
    "float64",
    default=True,
    show_default=True,
    help="Accumulate and solve in float64.",
)
@click.option(
    "--solver",
    type=click.Choice(["auto", "primal", "dual"]),
    default="auto",
    show_default=True,
    help="dual (Woodbury) is cheaper with fewer rows than dims.",
)
@click.option("--refusal-above", default=0.1, show_default=True, help="Refusal set: score > this.")
@click.option(
    "--compliant-below", default=-0.1, show_default=True, help="Compliant set: score < this."
)
@click.option(
    "--min-set-size", default=8, show_default=True, help="Fewest prompts allowed in each set."
)
@click.option(
    "--holdout",
    default=0.2,
    show_default=True,
    help="Share of each set held out for the diagnostics (0: in-sample).",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the held-out split.")
@click.option("--layers", default=None, help="Fit only these blocks [default: all in ACTS].")
def fit(
    acts: Path,
    scores: Path,
    output: Path,
    method: str,
    covariance: str,
    lam: float,
    lambda_mode: str,
    float64: bool,
    solver: str,
    refusal_above: float,
    compliant_below: float,
    min_set_size: int,
    holdout: float,
    seed: int,
    layers: str | None,
) -> None:
    """Fit steering vectors (MD, RMD, WRMD) from ACTS and SCORES ({id, score} JSONL)."""
    from bake.artifacts.plan import parse_layers
    from bake.stages.fit import FitOptions, render_diagnostics, run_fit

    opts = FitOptions(
        method=method,
        covariance=covariance,
        lam=lam,
        lambda_mode=lambda_mode,
        float64=float64,
        solver=solver,
        refusal_above=refusal_above,
        compliant_below=compliant_below,
        min_set_size=min_set_size,
        holdout=holdout,
        seed=seed,
    )
    vecs = run_fit(acts, scores, output, opts, layers=parse_layers(layers) if layers else None)
    counts = vecs.provenance["counts"]
    click.echo(render_diagnostics(vecs))
    click.echo(
        f"wrote {output}: {method}, {len(vecs.layers)} layers, refusal "
        f"{counts['refusal']}, compliant {counts['compliant']}, neutral "
        f"{counts['neutral']} (held out for diagnostics: {counts['heldout']})"
    )


# --------------------------------------------------------------------------- tune, evaluate
def _lexicon(value: str | None) -> Path | None:
    """--lexicon: a word-list file, or `toy` for the toy refuser's."""
    if value == "toy":
        from bake.toy_refuser import lexicon_path

        return lexicon_path()
    return Path(value) if value else None


def _measurer(
    judge: str,
    judge_url: str | None,
    judge_model: str | None,
    samples: int,
    max_new_tokens: int,
    lexicon: str | None = None,
    api_key_env: str | None = None,
) -> Any:
    from bake.judges.backends import make_judge
    from bake.runtime.sampling import SamplingOptions
    from bake.stages.measure import Measurer

    sampling = SamplingOptions(
        k=max(1, samples), max_new_tokens=max_new_tokens, greedy=samples <= 1
    )
    engine = make_judge(
        judge,
        url=judge_url,
        model=judge_model,
        lexicon=_lexicon(lexicon),
        api_key_env=api_key_env,
    )
    return Measurer(engine, sampling)


def _judge_options(f: Any) -> Any:
    for option in reversed(
        [
            click.option(
                "--judge",
                default="pattern",
                show_default=True,
                help="Judge backend: pattern, openai, llama, transformers.",
            ),
            click.option("--judge-url", default=None, help="OpenAI-compatible judge server."),
            click.option("--api-key-env", default=None, metavar="NAME", help=API_KEY_HELP),
            click.option("--judge-model", default=None, help="Judge model name, GGUF or folder."),
            click.option(
                "--lexicon",
                default=None,
                help=LEXICON_HELP,
            ),
            click.option(
                "--samples",
                default=1,
                show_default=True,
                help="Answers per prompt (1 = greedy; more = sampled at temperature 1).",
            ),
            click.option("--max-new-tokens", default=48, show_default=True),
            click.option("--device", default="cpu", show_default=True),
            click.option("--dtype", default="float32", show_default=True),
        ]
    ):
        f = option(f)
    return f


@main.command()
@click.argument("model")
@click.argument("vectors_file", metavar="VECTORS", type=click.Path(path_type=Path))
@click.option("--sensitive", type=click.Path(path_type=Path), help="Prompts to stop refusing.")
@click.option("--harmful", type=click.Path(path_type=Path), help="Prompts to keep refusing.")
@click.option(
    "--benign",
    type=click.Path(path_type=Path),
    required=True,
    help="Prompts for the KL guard (and, with --goal induce, to keep answering).",
)
@click.option(
    "--target",
    type=click.Path(path_type=Path),
    help="With --goal induce: prompts to make the model refuse.",
)
@click.option(
    "--goal", type=click.Choice(["remove", "induce"]), default="remove", show_default=True
)
@click.option(
    "--harmful-tolerance",
    default=0.1,
    show_default=True,
    help="Allowed drop of harmful refusal (share of prompts).",
)
@click.option(
    "--benign-tolerance",
    default=0.1,
    show_default=True,
    help="Allowed rise of refusal on the benign set (judged answers; corrupted text counts).",
)
@click.option("--kl-max", default=0.1, show_default=True, help="Bound on benign KL.")
@click.option("--alphas", default=None, help="Alpha magnitudes to try, e.g. 0.05,0.1,0.2.")
@click.option("--layer-counts", default=None, help="Numbers of layers to try, e.g. 1,4,8.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
@click.option("--report-dir", type=click.Path(path_type=Path), default=None)
@_judge_options
def tune(
    model: str,
    vectors_file: Path,
    sensitive: Path | None,
    harmful: Path | None,
    benign: Path,
    target: Path | None,
    goal: str,
    harmful_tolerance: float,
    benign_tolerance: float,
    kl_max: float,
    alphas: str | None,
    layer_counts: str | None,
    output: Path,
    report_dir: Path | None,
    judge: str,
    judge_url: str | None,
    api_key_env: str | None,
    judge_model: str | None,
    lexicon: str | None,
    samples: int,
    max_new_tokens: int,
    device: str,
    dtype: str,
) -> None:
    """Search layers and alpha; write PLAN and a tuning report (table and plots)."""
    from bake.artifacts.tuning import TuneSettings, render_table
    from bake.stages.tune import run_tune

    settings = TuneSettings(
        goal=goal,
        harmful_tolerance=harmful_tolerance,
        benign_tolerance=benign_tolerance,
        kl_max=kl_max,
        layer_counts=_ints(layer_counts),
        alphas=_floats(alphas),
    )
    files = {
        k: v
        for k, v in {
            "sensitive": sensitive,
            "harmful": harmful,
            "benign": benign,
            "target": target,
        }.items()
        if v is not None
    }
    result = run_tune(
        model,
        vectors_file,
        files,
        output,
        settings=settings,
        measurer=_measurer(
            judge, judge_url, judge_model, samples, max_new_tokens, lexicon, api_key_env
        ),
        report_dir=report_dir,
        dtype=dtype,
        device=device,
    )
    click.echo(render_table(result))
    click.echo(f"wrote {output}")


def _ints(text: str | None) -> tuple[int, ...] | None:
    return tuple(int(x) for x in text.split(",")) if text else None


def _floats(text: str | None) -> tuple[float, ...]:
    from bake.artifacts.tuning import ALPHA_MAGNITUDES

    return tuple(abs(float(x)) for x in text.split(",")) if text else ALPHA_MAGNITUDES


@main.command()
@click.argument("model")
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Steer with hooks from this plan.",
)
@click.option(
    "--baked",
    type=click.Path(path_type=Path),
    default=None,
    help="Evaluate this baked checkpoint or adapter.",
)
@click.option(
    "--prompts",
    "prompt_files",
    type=click.Path(path_type=Path),
    multiple=True,
    required=True,
    help="Prompt set (repeatable); named by file stem.",
)
@click.option(
    "--kl-set",
    "kl_sets",
    multiple=True,
    help="Set names for KL (default: names containing 'benign').",
)
@click.option("--report", type=click.Path(path_type=Path), default=None)
@_judge_options
def evaluate(
    model: str,
    plan_file: Path | None,
    baked: Path | None,
    prompt_files: tuple[Path, ...],
    kl_sets: tuple[str, ...],
    report: Path | None,
    judge: str,
    judge_url: str | None,
    api_key_env: str | None,
    judge_model: str | None,
    lexicon: str | None,
    samples: int,
    max_new_tokens: int,
    device: str,
    dtype: str,
) -> None:
    """Refusal rate per prompt set before/after steering, and benign KL."""
    from bake.artifacts.steering import open_steering
    from bake.stages.evaluate import render_evaluation, run_evaluate

    steering = open_steering(model, plan_file) if plan_file is not None else None
    result = run_evaluate(
        model,
        prompt_files,
        steering=steering,
        baked=baked,
        measurer=_measurer(
            judge, judge_url, judge_model, samples, max_new_tokens, lexicon, api_key_env
        ),
        kl_sets=kl_sets or None,
        dtype=dtype,
        device=device,
    )
    if report:
        from bake.files.fileio import atomic_write_path

        with atomic_write_path(report) as tmp:
            tmp.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    click.echo(render_evaluation(result))


# --------------------------------------------------------------------------- export, push
@main.command("export")
@click.argument("model")
@click.argument("plan_file", metavar="PLAN", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder that receives NAME/ and NAME-GGUF/.",
)
@click.option("--name", default=None, help="Build name (Hub repo name) [default: SOURCE-steered].")
@click.option(
    "--route",
    type=click.Choice(["auto", "bias", "adapter"]),
    default="auto",
    show_default=True,
    help="bias: new checkpoint; adapter: PEFT adapter folder.",
)
@click.option(
    "--gguf-types",
    default=None,
    metavar="TYPES",
    help="Comma-separated GGUF types: F32, F16, BF16, Q8_0, Q4_K_M [default: F16].",
)
@click.option("--no-gguf", is_flag=True, help="Write only the safetensors build.")
@click.option(
    "--base-gguf",
    type=click.Path(path_type=Path),
    default=None,
    help="Steer this existing GGUF of the base model instead of converting MODEL.",
)
@click.option(
    "--base-model-id",
    default=None,
    metavar="ORG/NAME",
    help="Hub id of MODEL, for the cards' base_model.",
)
@click.option(
    "--tuning-report",
    type=click.Path(path_type=Path),
    default=None,
    help="tuning_report.json from `steerbake tune` [default: the one beside PLAN].",
)
@click.option(
    "--eval-report",
    type=click.Path(path_type=Path),
    default=None,
    help="JSON report from `steerbake evaluate`, for the cards' evaluation section.",
)
@click.option(
    "--prompts",
    type=click.Path(path_type=Path),
    default=None,
    help="Extra verify prompts (JSONL or text, one per line).",
)
@click.option(
    "--skip-verify", is_flag=True, help="Do not verify (the cards then say 'not verified')."
)
@click.option("--overwrite", is_flag=True, help="Replace existing output folders.")
def export_cmd(
    model: str,
    plan_file: Path,
    output: Path,
    name: str | None,
    route: str,
    gguf_types: str | None,
    no_gguf: bool,
    base_gguf: Path | None,
    base_model_id: str | None,
    tuning_report: Path | None,
    eval_report: Path | None,
    prompts: Path | None,
    skip_verify: bool,
    overwrite: bool,
) -> None:
    """Bake, verify and write publishable folders: OUTPUT/NAME and OUTPUT/NAME-GGUF."""
    from bake.artifacts.steering import open_steering
    from export.publish.build import run_export
    from export.publish.job import ExportOptions, parse_gguf_types

    opts = ExportOptions(
        name=name,
        route=route,
        gguf=not no_gguf,
        gguf_types=parse_gguf_types(gguf_types) if gguf_types else None,
        base_gguf=base_gguf,
        base_model_id=base_model_id,
        tuning_report=tuning_report,
        eval_report=eval_report,
        prompts=prompts,
        skip_verify=skip_verify,
        overwrite=overwrite,
    )
    steering = open_steering(model, plan_file)
    click.echo(run_export(steering, output, opts, model_spec=model).summary())


@main.command()
@click.argument("folder", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--repo-id", required=True, metavar="USER/NAME", help="Hub repository to upload to.")
@click.option("--private", is_flag=True, help="Create the repository private.")
@click.option("--revision", default=None, help="Branch to upload to (created if missing).")
@click.option("--dry-run", is_flag=True, help="List what would be uploaded; no network.")
@click.option("--commit-message", default=None, help="[default: Upload NAME with steerbake].")
def push(
    folder: Path,
    repo_id: str,
    private: bool,
    revision: str | None,
    dry_run: bool,
    commit_message: str | None,
) -> None:
    """Upload an exported folder to the Hugging Face Hub (token: HF_TOKEN or `hf auth login`)."""
    from export.publish.push import run_push

    click.echo(
        run_push(
            folder,
            repo_id,
            private=private,
            revision=revision,
            dry_run=dry_run,
            commit_message=commit_message,
        ).render()
    )


# --------------------------------------------------------------------------- quantize
@main.command()
@click.argument("input_gguf", metavar="IN.gguf", type=click.Path(path_type=Path))
@click.argument("output_gguf", metavar="OUT.gguf", type=click.Path(path_type=Path))
@click.option(
    "--type",
    "qtype",
    metavar="Q8_0|Q4_K_M",
    required=True,
    help="llama.cpp quantization; steering biases stay F32.",
)
@click.option("--threads", type=int, default=0, help="Quantizer threads [default: all cores].")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
def quantize(
    input_gguf: Path, output_gguf: Path, qtype: str, threads: int, overwrite: bool
) -> None:
    """Quantize an F32/F16/BF16 GGUF with llama.cpp's quantizer (llama-cpp-python)."""
    from export.llamacpp.quantize import run_quantize

    click.echo(
        run_quantize(input_gguf, output_gguf, qtype, overwrite=overwrite, threads=threads).summary()
    )


# --------------------------------------------------------------------------- gguf, cvec, chat
@main.command()
@click.argument("model", required=False)
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), required=True, help="GGUF file to write."
)
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Bake PLAN's vectors into blk.N.ffn_down.bias (llama-arch GGUFs only).",
)
@click.option(
    "--type",
    "out_type",
    type=click.Choice(["F32", "F16", "BF16"], case_sensitive=False),
    default="F32",
    show_default=True,
    help="Weight type; norms and biases stay F32.",
)
@click.option(
    "--base-gguf",
    type=click.Path(path_type=Path),
    default=None,
    help="Instead of converting MODEL, copy this existing GGUF (any quantization) "
    "and add PLAN's vectors to it; needs --plan.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
def gguf(
    model: str | None,
    output: Path,
    plan_file: Path | None,
    out_type: str,
    base_gguf: Path | None,
    overwrite: bool,
) -> None:
    """Write MODEL (llama, mistral, qwen2, qwen3) as a GGUF for llama.cpp, or steer an
    existing GGUF with --base-gguf BASE.gguf --plan PLAN."""
    from export.llamacpp.writer import run_gguf

    source = click.get_current_context().get_parameter_source("out_type")
    explicit_type = source is not None and source.name != "DEFAULT"
    summary = run_gguf(
        model,
        output,
        out_type,
        plan_file,
        base_gguf=base_gguf,
        explicit_type=explicit_type,
        overwrite=overwrite,
    )
    click.echo(summary)


@main.command()
@click.argument("plan_file", metavar="PLAN", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Control-vector GGUF to write.",
)
@click.option(
    "--model",
    default=None,
    help="Check the plan against MODEL and round the vectors to its dtype (as the "
    "hook reference does).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
def cvec(plan_file: Path, output: Path, model: str | None, overwrite: bool) -> None:
    """Write PLAN's vectors as a llama.cpp control vector (direction.N, N >= 1)."""
    from bake.artifacts.steering import open_plan_only, open_steering
    from export.llamacpp.cvec import run_cvec

    steering = open_steering(model, plan_file) if model else open_plan_only(plan_file)
    click.echo(run_cvec(steering, output, overwrite=overwrite).summary())


@main.command()
@click.argument("gguf_file", metavar="FILE.gguf", type=click.Path(path_type=Path))
@click.option(
    "--control-vector",
    type=click.Path(path_type=Path),
    default=None,
    help="Control-vector GGUF applied to every token.",
)
@click.option(
    "--scale", type=float, default=1.0, show_default=True, help="Multiplier on the control vector."
)
@click.option("--prompt", default=None, help="Answer this one message and exit.")
@click.option("--max-tokens", default=256, show_default=True)
@click.option("--temperature", default=0.7, show_default=True, help="0 = greedy.")
@click.option("--ctx", "n_ctx", default=2048, show_default=True, help="Context length.")
@click.option("--seed", default=0, show_default=True)
def chat(
    gguf_file: Path,
    control_vector: Path | None,
    scale: float,
    prompt: str | None,
    max_tokens: int,
    temperature: float,
    n_ctx: int,
    seed: int,
) -> None:
    """Chat with a GGUF in llama.cpp, with its own chat template (/exit to quit)."""
    from export.llamacpp.chat import run_chat

    run_chat(
        gguf_file,
        control_vector=control_vector,
        scale=scale,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=temperature,
        n_ctx=n_ctx,
        seed=seed,
        write=lambda text, newline: click.echo(text, nl=newline),
        read=lambda text: click.prompt(text, prompt_suffix=""),
    )


# --------------------------------------------------------------------------- demo
@main.command()
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), default=Path("demo-out"), show_default=True
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
def demo(output: Path, overwrite: bool) -> None:
    """Run the whole pipeline on the embedded toy model, every artifact into OUTPUT."""
    from export.demo import run_demo

    run_demo(output, overwrite=overwrite)


if __name__ == "__main__":
    main()
