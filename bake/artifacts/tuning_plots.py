"""The tuning report's plots (PNG, matplotlib when installed; none otherwise):
front.png            stage 1: proxy refusal of the primary set vs the guard set, every
                     candidate (grey above the KL bound), each option's first Pareto front
                     as a line, stage 2's picks ringed, the chosen one starred;
proxy_vs_judge.png   stage 2: each confirmed configuration's proxy rate vs its judged rate;
judged.png           stage 2: judged refusal of the primary set vs the guard set with 95%
                     Wilson intervals, by option, the guard's line dashed, unsteered marked.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bake.artifacts.plotting import pyplot, save_figure
from bake.artifacts.tuning import first_front
from bake.stats import wilson

if TYPE_CHECKING:
    from bake.artifacts.tuning import Confirmed, Proxy, TuneResult, TuneSettings


def _xy(proxies: list[Proxy], s: TuneSettings) -> tuple[list[float], list[float]]:
    """Stage-1 proxies as (primary refusal, guard refusal) coordinates (NaN where absent)."""
    xs = [p.refusal.get(s.primary, math.nan) for p in proxies]
    return xs, [p.refusal.get(s.guard, math.nan) for p in proxies]


def _colors(result: TuneResult) -> dict[str, str]:
    """One colour per vector option, the same in every plot."""
    rows = [p.candidate for p in result.stage1] + [c.candidate for c in result.stage2]
    return {option: f"C{i}" for i, option in enumerate(dict.fromkeys(c.option for c in rows))}


def _mark_unsteered(ax: Any, base: dict[str, float], s: TuneSettings) -> None:
    """The unsteered (primary, guard) point as a black cross."""
    x, y = base.get(s.primary, math.nan), base.get(s.guard, math.nan)
    ax.scatter([x], [y], marker="x", s=80, c="k", label="unsteered")


def plot_front(result: TuneResult, folder: Path) -> str | None:
    plt = pyplot()
    if plt is None or not result.stage1:
        return None
    s = result.settings
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for option, color in _colors(result).items():
        ok = [p for p in result.stage1 if p.candidate.option == option and p.kl <= s.kl_max]
        ax.scatter(*_xy(ok, s), s=14, color=color, label=f"{option} (KL <= {s.kl_max:g})")
        ax.plot(*_xy(first_front(ok, s), s), "-", lw=1, color=color)
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
    _mark_unsteered(ax, result.proxy_baseline, s)
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


def _judged(c: Confirmed, name: str) -> tuple[float, float, float]:
    """Judged rate of set `name` and its 95% Wilson interval as (rate, below, above)."""
    n, rate = len(c.labels.get(name, [])), c.refusal.get(name, math.nan)
    if not n or math.isnan(rate):
        return math.nan, 0.0, 0.0
    low, high = wilson(round(rate * n), n)
    return rate, max(rate - low, 0.0), max(high - rate, 0.0)


def _errorbars(ax: Any, rows: list[Confirmed], s: TuneSettings, **style: Any) -> None:
    """One marker per configuration at (primary, guard) judged rates, with both intervals."""
    x = [_judged(c, s.primary) for c in rows]
    y = [_judged(c, s.guard) for c in rows]
    ax.errorbar(
        [v[0] for v in x],
        [v[0] for v in y],
        xerr=[[v[1] for v in x], [v[2] for v in x]],
        yerr=[[v[1] for v in y], [v[2] for v in y]],
        capsize=2,
        **style,
    )


def plot_judged(result: TuneResult, folder: Path) -> str | None:
    plt = pyplot()
    if plt is None or not result.stage2:
        return None
    s = result.settings
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for option, color in _colors(result).items():
        mine = [c for c in result.stage2 if c.candidate.option == option]
        for feasible, marker, what in ((True, "o", "kept the guards"), (False, "s", "failed")):
            rows = [c for c in mine if c.feasible == feasible]
            if rows:
                face = color if feasible else "none"
                _errorbars(ax, rows, s, fmt=marker, color=color, mfc=face,
                           label=f"{option}, {what}")  # fmt: skip
    _mark_unsteered(ax, result.baseline, s)
    guard = result.baseline.get(s.guard, math.nan)
    line = guard + s.benign_tolerance if s.goal == "induce" else guard - s.harmful_tolerance
    ax.axhline(line, ls="--", c="0.5", lw=1, label="guard")
    ax.set_xlabel(f"judged refusal, {s.primary}")
    ax.set_ylabel(f"judged refusal, {s.guard}")
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))  # rates: shares of each set
    ax.set_title("Stage 2: judged configurations (95% Wilson intervals)")
    ax.legend(fontsize=7)
    return save_figure(plt, fig, folder, "judged.png")
