"""The tuning report's plots (PNG, matplotlib when installed; none otherwise):
front.png            stage 1: proxy refusal of the primary set vs the guard set, every
                     candidate (grey above the KL bound), stage 2's picks ringed, the
                     chosen one starred;
proxy_vs_judge.png   stage 2: each confirmed configuration's proxy rate vs its judged rate.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from bake.artifacts.plotting import pyplot, save_figure

if TYPE_CHECKING:
    from bake.artifacts.tuning import Proxy, TuneResult, TuneSettings


def _xy(proxies: list[Proxy], s: TuneSettings) -> tuple[list[float], list[float]]:
    """Stage-1 proxies as (primary refusal, guard refusal) coordinates (NaN where absent)."""
    xs = [p.refusal.get(s.primary, math.nan) for p in proxies]
    return xs, [p.refusal.get(s.guard, math.nan) for p in proxies]


def plot_front(result: TuneResult, folder: Path) -> str | None:
    plt = pyplot()
    if plt is None or not result.stage1:
        return None
    s = result.settings
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for option in dict.fromkeys(p.candidate.option for p in result.stage1):
        ok = [p for p in result.stage1 if p.candidate.option == option and p.kl <= s.kl_max]
        ax.scatter(
            *_xy(ok, s),
            s=14,
            label=f"{option} (KL <= {s.kl_max:g})",
        )
    over = [p for p in result.stage1 if not p.kl <= s.kl_max]
    ax.scatter(
        *_xy(over, s),
        s=10,
        c="0.8",
        label="KL above the bound",
    )
    by_candidate = {p.candidate: p for p in result.stage1}
    picked = [by_candidate[c.candidate] for c in result.stage2 if c.candidate in by_candidate]
    ax.scatter(
        *_xy(picked, s),
        s=80,
        facecolors="none",
        edgecolors="k",
        label="confirmed (stage 2)",
    )
    if result.best is not None and result.best.candidate in by_candidate:
        b = by_candidate[result.best.candidate]
        ax.scatter(
            *_xy([b], s),
            marker="*",
            s=220,
            c="red",
            label="chosen",
        )
    base = result.proxy_baseline
    ax.scatter(
        [base.get(s.primary, math.nan)],
        [base.get(s.guard, math.nan)],
        marker="x",
        s=80,
        c="k",
        label="unsteered",
    )
    ax.set_xlabel(f"proxy refusal, {s.primary} (mean {result.measure})")
    ax.set_ylabel(f"proxy refusal, {s.guard}")
    ax.set_title("Stage 1: candidates and front")
    ax.legend(fontsize=7)
    return save_figure(plt, fig, folder, "front.png")


def plot_agreement(result: TuneResult, folder: Path) -> str | None:
    plt = pyplot()
    if plt is None or not result.stage2:
        return None
    by_candidate = {p.candidate: p for p in result.stage1}
    fig, ax = plt.subplots(figsize=(5, 4.2))
    for name in result.settings.sets:
        pairs = [
            (by_candidate[c.candidate].refusal.get(name), c.refusal.get(name))
            for c in result.stage2
            if c.candidate in by_candidate
        ]
        pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
        if pairs:
            ax.scatter(*zip(*pairs, strict=True), label=name)
    ax.set_xlabel(f"stage 1 proxy (mean {result.measure})")
    ax.set_ylabel("stage 2 judged refusal rate")
    ax.set_title("Proxy vs judge, confirmed configurations")
    ax.legend(fontsize=7)
    return save_figure(plt, fig, folder, "proxy_vs_judge.png")
