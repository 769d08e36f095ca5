"""The `analyze` report's plots (PNG, matplotlib when installed; none otherwise):
layers.png          per layer: held-out AUC, Pearson r, cos(fit, MD), relative |mu_R - mu_C|;
dimensionality.png  held-out probe accuracy vs k (top-k subspace) at a few layers, and the
                    leading eigenvalues of Sigma_C^-1/2 S_R Sigma_C^-1/2 per layer;
categories.png      the cross-category cosine matrix (MD directions) per layer, as heatmaps.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bake.artifacts.plotting import pyplot, save_figure

if TYPE_CHECKING:
    from bake.artifacts.analysis import AnalysisReport


def write_plots(report: AnalysisReport, folder: Path) -> list[str]:
    """Every plot into `folder`; the file names written (none without matplotlib)."""
    plt = pyplot()
    if plt is None or not report.layers:
        return []
    written = [_layers(plt, report, folder), _dimensionality(plt, report, folder)]
    if any(la.categories is not None for la in report.layers):
        written.append(_categories(plt, report, folder))
    return written


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _layers(plt: Any, r: AnalysisReport, folder: Path) -> str:
    xs = [la.layer for la in r.layers]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(xs, [_nan(la.auc) for la in r.layers], "o-", label="held-out AUC")
    ax.plot(xs, [_nan(la.pearson_r) for la in r.layers], "s-", label="held-out Pearson r")
    ax.plot(xs, [la.cos_md for la in r.layers], "^-", label=f"cos({r.method}, MD)")
    ax.plot(xs, [la.md_norm_relative for la in r.layers], "d-", label="|mu_R - mu_C| / norm")
    ax.set_xlabel("layer")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(plt, fig, folder, "layers.png")


def _dimensionality(plt: Any, r: AnalysisReport, folder: Path) -> str:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    best = r.best_layer().layer
    step = max(1, len(r.layers) // 4)
    shown = {la.layer for la in r.layers[::step]} | {best}
    for la in r.layers:
        if la.layer in shown:
            acc = la.dimensionality.probe_accuracy
            style = "o-" if la.layer == best else ".--"
            left.plot([int(k) for k in acc], list(acc.values()), style, label=f"layer {la.layer}")
    left.set_xscale("log", base=2)
    left.set_xlabel("k (top-k subspace)")
    left.set_ylabel("held-out probe accuracy")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    for la in r.layers:
        values = la.dimensionality.eigenvalues[:8]
        right.scatter([la.layer] * len(values), values, s=10, c=range(len(values)), cmap="viridis")
    right.set_yscale("log")
    right.set_xlabel("layer")
    right.set_ylabel("top 8 eigenvalues, Sigma_C^-1/2 S_R Sigma_C^-1/2")
    right.grid(alpha=0.3)
    return save_figure(plt, fig, folder, "dimensionality.png")


def _categories(plt: Any, r: AnalysisReport, folder: Path) -> str:
    shown = [la for la in r.layers if la.categories is not None]
    cols = min(6, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.4 * rows), squeeze=False)
    image = None
    for i, (ax, la) in enumerate(zip(axes.flat, shown, strict=False)):
        c = la.categories
        assert c is not None
        image = ax.imshow(c.cosine_md, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(f"layer {la.layer}", fontsize=9)
        ticks = range(len(c.names))
        bottom, left = i + cols >= len(shown), i % cols == 0  # label the outer edges only
        ax.set_xticks(ticks, c.names if bottom else [], rotation=90, fontsize=6)
        ax.set_yticks(ticks, c.names if left else [], fontsize=6)
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="cosine (MD directions)")
    fig.savefig(folder / "categories.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "categories.png"
