"""The `steerbake` command line. Thin: parse, call one library function, print a summary.

Every option is a dataclass field declared next to the code that consumes it
(bake.options.opt); export.cli.options turns the fields into click options. Heavy imports
(torch, transformers) happen inside the library calls, so `--help` is instant. A
SteerbakeError becomes one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from bake import __version__
from bake.errors import SteerbakeError
from export.cli import pipeline, shipping


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


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="steerbake")
def main() -> None:
    """Bake refusal-steering vectors into model files you can ship."""


for _command in (*pipeline.COMMANDS, *shipping.COMMANDS):
    main.add_command(_command)
