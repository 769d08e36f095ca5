"""The `analyze` report: the refusal geometry of an activation folder, per layer.

DIR/analysis.json   AnalysisReport.to_json()
DIR/analysis.md     render_markdown(): the tables, the plots linked
DIR/*.png           bake.artifacts.analysis_plots (matplotlib when installed)

Per layer: held-out AUC and Pearson r of the projection on the fitted direction (the fit's
diagnostics), |mu_R - mu_C| (absolute, and over the compliant set's mean norm), the cosine
of the fitted direction (WRMD by default) to MD; the dimensionality: eigenvalues of
Sigma_C^-1/2 S_R Sigma_C^-1/2 and k-fold accuracies of a ridge probe restricted to the
top-k subspace; with categories, the cross-category cosine matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bake.artifacts.reports import JsonReport

FORMAT = "steerbake.analysis/1"


@dataclass
class Dimensionality(JsonReport):
    """Eigenvalues (largest first) of Sigma_C^-1/2 S_R Sigma_C^-1/2, S_R the refusal rows'
    scatter about mu_C; probe accuracy per k of the top-k subspace (k-fold, held out)."""

    eigenvalues: list[float]
    rank_eigengap: int  # j maximising eigenvalue_j / eigenvalue_{j+1} (top 16)
    probe_accuracy: dict[str, float]  # str(k) -> held-out accuracy
    probe_rows: int  # predictions behind each accuracy (every scored R and C row once)
    rank_probe: int  # smallest k within max(0.01, 1 s.e.) of the best accuracy
    majority: float  # accuracy of always answering the larger class
    full_accuracy: float  # the same probe on every dimension (k-fold, held out)


@dataclass
class CategoryGeometry(JsonReport):
    """Category directions at one layer: cosines between them (MD and the fit's method),
    each category's split-half self-cosine (Spearman-Brown: what two independent samples
    of its size would give if the directions were equal), and the cosines corrected for
    that noise, cos_ab / sqrt(self_a self_b); and p_same, a permutation p-value of the
    hypothesis that two categories share one direction."""

    names: list[str]
    cosine_md: list[list[float]]
    cosine_fitted: list[list[float]]
    self_cosine: list[float]
    cosine_corrected: list[list[float]]
    # permutation test of "a and b share one direction": the share of relabellings of a's and
    # b's rows (refused and answered kept) whose MD cosine is at most the observed one
    p_same: list[list[float]]


@dataclass
class LayerAnalysis(JsonReport):
    layer: int
    auc: float | None  # held-out, projection on the fitted direction
    pearson_r: float | None
    md_norm: float  # |mu_R - mu_C|
    md_norm_relative: float  # over the compliant set's mean activation norm
    cos_md: float  # fitted direction vs MD
    dimensionality: Dimensionality
    categories: CategoryGeometry | None = None


@dataclass
class AnalysisReport(JsonReport):
    activations: str
    scores: str
    method: str
    counts: dict[str, int]
    folds: int
    layers: list[LayerAnalysis]
    categories: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> counts
    plots: list[str] = field(default_factory=list)
    format: str = FORMAT

    def best_layer(self) -> LayerAnalysis:
        """The layer whose direction separates refusal best (held-out AUC)."""
        return max(self.layers, key=lambda la: la.auc or 0.0)


def _num(value: Any, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def render_markdown(r: AnalysisReport) -> str:
    best = r.best_layer()
    lines = [
        "# Refusal geometry",
        "",
        f"Activations `{r.activations}`, scores `{r.scores}`; fitted direction: {r.method}; "
        f"refusal {r.counts.get('refusal', 0)}, compliant {r.counts.get('compliant', 0)}, "
        f"neutral {r.counts.get('neutral', 0)} prompts. Probe accuracies: {r.folds}-fold, "
        "held out.",
        "",
        f"Best layer by held-out AUC: **{best.layer}** (AUC {_num(best.auc)}, "
        f"rank {best.dimensionality.rank_eigengap} by the eigenvalue gap, "
        f"{best.dimensionality.rank_probe} by the probe).",
        "",
        "## Per layer",
        "",
        "| layer | AUC | r | \\|mu_R - mu_C\\| | relative | cos(fit, MD) | rank (eig gap) "
        "| rank (probe) | probe k=1 | best probe |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for la in r.layers:
        d = la.dimensionality
        acc = d.probe_accuracy
        top = max(acc.values()) if acc else None
        lines.append(
            f"| {la.layer} | {_num(la.auc)} | {_num(la.pearson_r)} | {la.md_norm:.4g} | "
            f"{la.md_norm_relative:.3f} | {la.cos_md:.3f} | {d.rank_eigengap} | {d.rank_probe} "
            f"| {_num(acc.get('1'))} | {_num(top)} |"
        )
    lines += ["", "## Dimensionality at the best layer", ""]
    d = best.dimensionality
    lines.append(
        "| k | " + " | ".join(d.probe_accuracy) + " |\n|---|" + "---|" * len(d.probe_accuracy)
    )
    lines.append("| accuracy | " + " | ".join(f"{v:.3f}" for v in d.probe_accuracy.values()) + " |")
    lines += [
        "",
        f"Majority-class accuracy {d.majority:.3f}; the ridge probe on every dimension "
        f"{d.full_accuracy:.3f}. Largest eigenvalues of "
        "Sigma_C^-1/2 S_R Sigma_C^-1/2: " + ", ".join(f"{e:.3g}" for e in d.eigenvalues[:8]),
    ]
    if best.categories is not None:
        lines += _categories_markdown(r, best)
    elif r.categories:
        lines += ["", "## Categories", "", _too_few_categories(r)]
    if r.plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in r.plots]
    return "\n".join(lines) + "\n"


def _too_few_categories(r: AnalysisReport) -> str:
    """Why a report over categorised prompts has no cosine matrix."""
    enough = [n for n, c in r.categories.items() if c.get("refusal") and c.get("compliant")]
    return (
        f"The prompts have {len(r.categories)} categories, but fewer than 2 have enough "
        f"refused and answered prompts (--min-set-size each) for a direction of their own "
        f"({len(enough)} have at least one of each); no cross-category cosines. Counts: "
        + "; ".join(
            f"{n} {v.get('refusal', 0)}/{v.get('compliant', 0)}" for n, v in r.categories.items()
        )
        + " (refused/answered)."
    )


def _categories_markdown(r: AnalysisReport, la: LayerAnalysis) -> list[str]:
    c = la.categories
    assert c is not None
    head = "| | " + " | ".join(c.names) + " |"
    rule = "|---|" + "---|" * len(c.names)
    lines = [
        "",
        f"## Categories at layer {la.layer}",
        "",
        "Counts: "
        + "; ".join(
            f"{n} {v.get('refusal', 0)} refused / {v.get('compliant', 0)} answered"
            for n, v in r.categories.items()
        ),
        "",
        "Cosines of the mean-difference directions (diagonal: split-half self-cosine):",
        "",
        head,
        rule,
    ]
    for i, name in enumerate(c.names):
        cells = [
            f"({c.self_cosine[i]:.2f})" if i == j else f"{c.cosine_md[i][j]:.2f}"
            for j in range(len(c.names))
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Corrected for sampling noise, cos_ab / sqrt(self_a self_b):", "", head, rule]
    for i, name in enumerate(c.names):
        lines.append(
            f"| {name} | " + " | ".join(_num(v, ".2f") for v in c.cosine_corrected[i]) + " |"
        )
    lines += [
        "",
        "p-value that two categories share one direction (permutation test of the MD cosine; "
        "small: distinguishable):",
        "",
        head,
        rule,
    ]
    for i, name in enumerate(c.names):
        lines.append(f"| {name} | " + " | ".join(_num(v, ".3f") for v in c.p_same[i]) + " |")
    return lines


def write_analysis(report: AnalysisReport, folder: Path) -> None:
    """analysis.json and analysis.md into `folder` (plots are written first, by the stage)."""
    from bake.files.jsonio import dumps

    (folder / "analysis.json").write_text(dumps(report.to_json(), indent=2) + "\n")
    (folder / "analysis.md").write_text(render_markdown(report))
