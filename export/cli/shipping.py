"""The commands that ship a steered model: export, push, quantize, gguf, cvec, chat, demo;
and convert (a GGUF into a checkpoint folder).
Each parses, opens what it needs, calls its export.* function and prints; its options are
the fields of the dataclasses named in `@options`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from export.cli.options import PATH, build, options, output, threaded
from export.demo import DemoOptions
from export.llamacpp.chat import ChatOptions
from export.llamacpp.convert import ConvertOptions
from export.llamacpp.cvec import CvecOptions
from export.llamacpp.quantize import QuantizeOptions
from export.llamacpp.writer import GgufOptions
from export.publish.job import ExportOptions
from export.publish.push import PushOptions


@click.command("export")
@click.argument("model")
@click.argument("plan_file", metavar="PLAN", type=PATH)
@output("Folder that receives NAME/ and NAME-GGUF/.")
@options(ExportOptions)
@threaded
def export_cmd(model: str, plan_file: Path, output: Path, **kw: Any) -> None:
    """Bake, verify and write publishable folders: OUTPUT/NAME and OUTPUT/NAME-GGUF."""
    from bake.artifacts.steering import open_steering
    from export.publish.build import run_export

    opts = build(ExportOptions, kw)
    steering = open_steering(model, plan_file)
    click.echo(run_export(steering, output, opts, model_spec=model).summary())


@click.command()
@click.argument("folder", metavar="DIR", type=PATH)
@options(PushOptions)
def push(folder: Path, **kw: Any) -> None:
    """Upload an exported folder to the Hugging Face Hub (token: HF_TOKEN or `hf auth login`)."""
    from export.publish.push import run_push

    click.echo(run_push(folder, **vars(build(PushOptions, kw))).render())


@click.command()
@click.argument("input_gguf", metavar="IN.gguf", type=PATH)
@click.argument("output_gguf", metavar="OUT.gguf", type=PATH)
@options(QuantizeOptions)
def quantize(input_gguf: Path, output_gguf: Path, **kw: Any) -> None:
    """Quantize an F32/F16/BF16 GGUF with llama.cpp's quantizer (llama-cpp-python)."""
    from export.llamacpp.quantize import run_quantize

    o = build(QuantizeOptions, kw)
    click.echo(run_quantize(input_gguf, output_gguf, **vars(o)).summary())


@click.command()
@click.argument("model", required=False)
@output("GGUF file to write.")
@options(GgufOptions)
def gguf(model: str | None, output: Path, **kw: Any) -> None:
    """Write MODEL (llama, mistral, qwen2, qwen3) as a GGUF for llama.cpp, or steer an
    existing GGUF with --base-gguf BASE.gguf --plan PLAN."""
    from export.llamacpp.writer import run_gguf

    source = click.get_current_context().get_parameter_source("out_type")
    explicit_type = source is not None and source.name != "DEFAULT"
    o = build(GgufOptions, kw)
    click.echo(run_gguf(model, output, explicit_type=explicit_type, **vars(o)))


@click.command()
@click.argument("plan_file", metavar="PLAN", type=PATH)
@output("Control-vector GGUF to write.")
@options(CvecOptions)
def cvec(plan_file: Path, output: Path, **kw: Any) -> None:
    """Write PLAN's vectors as a llama.cpp control vector (direction.N, N >= 1)."""
    from bake.artifacts.steering import open_plan_only, open_steering
    from export.llamacpp.cvec import run_cvec

    o = build(CvecOptions, kw)
    steering = open_steering(o.model, plan_file) if o.model else open_plan_only(plan_file)
    click.echo(run_cvec(steering, output, overwrite=o.overwrite).summary())


@click.command()
@click.argument("gguf_file", metavar="FILE.gguf", type=PATH)
@output("Folder to write the transformers checkpoint to.")
@options(ConvertOptions)
@threaded
def convert(gguf_file: Path, output: Path, **kw: Any) -> None:
    """Convert a GGUF into a transformers checkpoint folder (dequantized safetensors,
    tokenizer, chat template, license), checked against llama.cpp."""
    from export.llamacpp.convert import run_convert

    click.echo(run_convert(gguf_file, output, **vars(build(ConvertOptions, kw))).summary())


@click.command()
@click.argument("gguf_file", metavar="FILE.gguf", type=PATH)
@options(ChatOptions)
@threaded
def chat(gguf_file: Path, **kw: Any) -> None:
    """Chat with a GGUF in llama.cpp, with its own chat template (/exit to quit); with
    --backend transformers, with a GGUF or folder steered by --plan, gated by --probe."""
    from export.llamacpp.chat import run_chat

    run_chat(
        gguf_file,
        **vars(build(ChatOptions, kw)),
        write=lambda text, newline: click.echo(text, nl=newline),
        read=lambda text: click.prompt(text, prompt_suffix=""),
    )


@click.command()
@click.option("-o", "--output", type=PATH, default=Path("demo-out"), show_default=True)
@options(DemoOptions)
@threaded
def demo(output: Path, **kw: Any) -> None:
    """Run the whole pipeline on the embedded toy model, every artifact into OUTPUT."""
    from export.demo import run_demo

    run_demo(output, overwrite=build(DemoOptions, kw).overwrite)


COMMANDS = [export_cmd, push, quantize, gguf, cvec, chat, convert, demo]
