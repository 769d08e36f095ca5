"""The tuning report: JSON, a Markdown table and two PNG plots
(refusal vs alpha per layer count; refusal vs KL with the chosen point marked)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bake.tune import TuneResult


def _fmt(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.0%}"


def render_table(result: TuneResult) -> str:
    goal = result.settings.goal
    primary, guard = ("sensitive", "harmful") if goal == "remove" else ("target", "benign")
    base = result.baseline
    benign = " benign refusal |" if goal == "remove" else ""
    unsteered = (
        f"unsteered: {primary} refusal {base[primary]:.0%}, {guard} refusal {base[guard]:.0%}"
    )
    if goal == "remove":
        unsteered += f", benign refusal {base['benign']:.0%}"
    lines = [
        unsteered,
        "",
        f"| layers | alpha | {primary} refusal | {guard} refusal |{benign} benign KL | ok |",
        "|---|---|---|---|---|" + ("---|" if benign else "") + "---|",
    ]
    for t in result.trials:
        mark = " **chosen**" if t is result.best else ""
        cells = f" {_fmt(t.benign)} |" if benign else ""
        lines.append(
            f"| {len(t.layers)}: {','.join(map(str, t.layers))} | {t.alpha:+.3f} | "
            f"{_fmt(t.primary)} | {_fmt(t.guard)} |{cells} {t.kl:.4f} | "
            f"{'yes' if t.feasible else 'no: ' + t.reason}{mark} |"
        )
    return "\n".join(lines)


def _plots(result: TuneResult, folder: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    goal = result.settings.goal
    label = "sensitive" if goal == "remove" else "target"
    fig, ax = plt.subplots(figsize=(6, 4))
    for n in sorted({t.n_layers for t in result.trials}):
        ts = [t for t in result.trials if t.n_layers == n and not math.isnan(t.primary)]
        ax.plot([t.alpha for t in ts], [t.primary for t in ts], marker="o", label=f"{n} layers")
    ax.set(xlabel="alpha", ylabel=f"{label} refusal rate", title="Refusal vs alpha")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "refusal_vs_alpha.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    ts = [t for t in result.trials if not math.isnan(t.primary)]
    ax.scatter(
        [t.kl for t in ts],
        [t.primary for t in ts],
        c=["tab:blue" if t.feasible else "tab:gray" for t in ts],
    )
    if result.best:
        ax.scatter(
            [result.best.kl],
            [result.best.primary],
            s=160,
            facecolors="none",
            edgecolors="red",
            linewidths=2,
            label="chosen",
        )
        ax.legend()
    ax.set(
        xlabel="benign KL(base || steered)",
        ylabel=f"{label} refusal rate",
        title="Refusal vs KL (grey: a guard broke)",
    )
    fig.tight_layout()
    fig.savefig(folder / "refusal_vs_kl.png", dpi=100)
    plt.close(fig)
    return ["refusal_vs_alpha.png", "refusal_vs_kl.png"]


def write_report(result: TuneResult, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tuning_report.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    plots = _plots(result, folder)
    images = "".join(f"\n![{p}]({p})\n" for p in plots)
    (folder / "tuning_report.md").write_text(f"# Tuning report\n\n{render_table(result)}\n{images}")
    return folder
