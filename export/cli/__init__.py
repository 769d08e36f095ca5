"""The `steerbake` command line. Thin: parse, call one library function, print a summary.

Every option is a dataclass field declared next to the code that consumes it
(bake.options.opt); export.cli.options turns the fields into click options. Heavy imports
(torch, transformers) happen inside the library calls, so `--help` is instant.

Every failure ends in one line on stderr and exit status 2, never a traceback: a
SteerbakeError says what to fix; an OSError is mapped by its errno (the one place this is
done) to the path and the fix; anything else is a bug, reported as `internal error` with
the full trace written to a file under the system's temporary folder. Ctrl-C exits 130.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import click

from bake import __version__
from bake.errors import SteerbakeError, os_error_message, remote_code_error
from export.cli import analysis, pipeline, shipping


def fail(message: str) -> NoReturn:
    """`steerbake: error: MESSAGE` (one line) and exit status 2."""
    click.echo(f"steerbake: error: {' '.join(message.split())}", err=True)
    sys.exit(2)


def write_trace(e: BaseException) -> str:
    """The full traceback of `e` in a new file under the temporary folder; its path."""
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix="steerbake-trace-", suffix=".txt")
    with open(fd, "w", encoding="utf-8") as f:
        f.write(f"steerbake {__version__}: {' '.join(sys.argv)}\n")
        f.write("".join(traceback.format_exception(e)))
    return path


def internal_error(e: BaseException) -> NoReturn:
    """An unexpected exception: one line naming its type and a file with the full trace."""
    text = " ".join(str(e).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    try:
        where = f"full trace in {write_trace(e)}"
    except OSError as trace_error:
        where = f"no trace file could be written: {trace_error.strerror}"
    fail(f"internal error: {type(e).__name__}: {text} ({where}; please report it)")


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        import numpy as np

        try:
            # Inf or NaN from a damaged file is reported by the checks that meet it (a failed
            # verify, a refused value), not by numpy's RuntimeWarning lines on stderr.
            with np.errstate(all="ignore"):
                return super().invoke(ctx)
        except SteerbakeError as e:
            fail(str(e))
        except KeyboardInterrupt:
            click.echo("steerbake: interrupted; no output was left half-written", err=True)
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # usage errors and --help: click prints them
        except OSError as e:
            fail(os_error_message(e))
        except Exception as e:
            known = remote_code_error(e)
            if known is not None:
                fail(str(known))
            internal_error(e)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="steerbake")
def main() -> None:
    """Bake refusal-steering vectors into model files you can ship."""


for _command in (*pipeline.COMMANDS, *analysis.COMMANDS, *shipping.COMMANDS):
    main.add_command(_command)
