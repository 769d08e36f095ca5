"""The commands that look at the refusal geometry: analyze (per-layer separation,
dimensionality, category cosines) and probe (the linear probe of probe-gated steering)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from bake.stages.analyze import AnalyzeOptions
from bake.stages.fit import FitOptions
from bake.stages.probe import ProbeOptions
from export.cli.options import PATH, build, options, output, threaded


@click.command()
@click.argument("acts", type=PATH)
@click.argument("scores", type=PATH)
@click.option(
    "-o", "--output", type=PATH, default=None, help="Report folder [default: ACTS-analysis]."
)
@options(AnalyzeOptions, FitOptions)
@threaded
def analyze(acts: Path, scores: Path, output: Path | None, **kw: Any) -> None:
    """Refusal geometry per layer: separation, dimensionality, category cosines (Markdown,
    PNG, JSON)."""
    from bake.stages.analyze import run_analyze

    report = run_analyze(acts, scores, output, build(FitOptions, kw), build(AnalyzeOptions, kw))
    best = report.best_layer()
    folder = output or acts.with_name(acts.name + "-analysis")
    click.echo(
        f"wrote {folder}/analysis.md: {len(report.layers)} layers; best layer {best.layer} "
        f"(held-out AUC {best.auc or 0:.3f}, rank {best.dimensionality.rank_eigengap} by the "
        f"eigenvalue gap, {best.dimensionality.rank_probe} by the probe)"
    )


@click.command()
@output("PROBE.safetensors to write.")
@options(ProbeOptions)
@threaded
def probe(output: Path, **kw: Any) -> None:
    """Fit the linear probe of probe-gated steering (prompts to refuse vs to answer)."""
    from bake.stages.probe import render_probe, run_probe

    click.echo(render_probe(run_probe(output, build(ProbeOptions, kw))))
    click.echo(f"wrote {output}")


COMMANDS = [analyze, probe]
