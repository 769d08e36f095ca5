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
    from bake.inspect import describe_model, render_description

    info = describe_model(model)
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
    from bake.vectors_import import import_vectors

    vecs = import_vectors(src, model, method=method)
    vecs.save(output)
    click.echo(
        f"wrote {output}: {len(vecs.layers)} layers, hidden size "
        f"{vecs.fingerprint.hidden_size} ({vecs.fingerprint.architecture})"
    )


@vectors.command("show")
@click.argument("path", type=click.Path(path_type=Path))
def vectors_show(path: Path) -> None:
    """Print a vector file's metadata and per-layer scales."""
    from bake.vectors import SteeringVectors

    vecs = SteeringVectors.load(path)
    meta = vecs.metadata()
    meta["scales"] = {str(k): round(v, 6) for k, v in sorted(vecs.scales.items())}
    _print_json(meta)


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
    from bake.errors import InputError
    from bake.plan import format_layers, make_plan, parse_layers

    mults: dict[int, float] = {}
    for item in multipliers:
        try:
            k, v = item.split("=", 1)
            mults[int(k)] = float(v)
        except ValueError:
            raise InputError(f"bad --multiplier {item!r}: use LAYER=VALUE, e.g. 3=0.5") from None
    p = make_plan(vectors_file, parse_layers(layers), alpha, mults)
    p.save(output)
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
    from bake.fold import bake_model

    result = bake_model(model, plan_file, output, route=route, overwrite=overwrite, link=link)
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
) -> None:
    """Prove BAKED (checkpoint, adapter or .gguf) matches MODEL + hook steering."""
    from bake.verify import render_report

    if baked.suffix == ".gguf":
        from export.gguf_verify import verify_gguf

        result = verify_gguf(model, plan_file, baked, prompts=prompts)
    elif static:
        from bake.verify_static import verify_static

        result = verify_static(model, plan_file, baked)
    else:
        from bake.verify import run_verify

        result = run_verify(
            model,
            plan_file,
            baked,
            prompts=prompts,
            device=device,
            dtype=dtype,
            max_new_tokens=max_new_tokens,
        )
    if report:
        from bake.fileio import atomic_write_path

        with atomic_write_path(report) as tmp:
            tmp.write_text(json.dumps(result, indent=2) + "\n")
    click.echo(render_report(result))
    sys.exit(0 if result["passed"] else 1)


# --------------------------------------------------------------------------- demo
@main.command()
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), default=Path("demo-out"), show_default=True
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
def demo(output: Path, overwrite: bool) -> None:
    """Run the whole pipeline on the embedded toy model, every artifact into OUTPUT."""
    from bake.demo import run_demo

    run_demo(output, overwrite=overwrite)


if __name__ == "__main__":
    main()
