"""Refusal styles as categories: is "how the model refuses" a direction of its own?

Each refused prompt (c > band) takes the style of its answers (a classifier of answer text,
e.g. the toy's `answer_style`: the most common refusal style among its samples); answered
prompts (c < -band) are one shared compliant set C. Per style s at one layer:
  d_s = mu_{R,s} - mu_C                            the style's mean-difference direction
  cos(d_s, d_t)                                    the cross-style cosine matrix
  self_s = Spearman-Brown split-half cosine of d_s (bake.stages.analyze.split_half_cosine)
  corrected cos = cos(d_s, d_t) / sqrt(self_s self_t)
Styles are answer properties, not prompt categories: `fit --category` cannot fit them (a
style has no answered prompts of its own), but their directions show whether the refusals
differ in kind ("There Is More to Refusal than a Single Direction"). `make demo` shows this
for the toy's four political refusal styles and its harmful style (toy_style_geometry).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bake.artifacts.reports import JsonReport
from bake.errors import InputError
from bake.stages.analyze import split_half_cosine
from bake.stages.geometry import cosine
from bake.stats import auc

if TYPE_CHECKING:
    from bake.artifacts.activations import ActivationSource

MIN_ROWS = 5  # refused prompts a style needs to get a direction


@dataclass
class StyleGeometry(JsonReport):
    layer: int
    names: list[str]  # styles with at least MIN_ROWS refused prompts
    counts: dict[str, int]  # refused prompts per style (every style seen), and "answered"
    cosine: list[list[float]]
    self_cosine: list[float]
    cosine_corrected: list[list[float]]


def prompt_styles(
    answers_file: Path, classify: Callable[[str], str], refusal_styles: tuple[str, ...]
) -> dict[str, str]:
    """id -> the most common refusal style among the prompt's samples (ties: the first in
    `refusal_styles`); prompts with no sample in a refusal style are left out."""
    from bake.artifacts.answers import read_answers

    found = {}
    for record in read_answers(Path(answers_file)):
        styles = Counter(classify(s.text) for s in record.samples)
        ranked = [s for s in refusal_styles if styles[s] > 0]
        if ranked:
            found[record.id] = max(ranked, key=lambda s: (styles[s], -ranked.index(s)))
    return found


def separating_layer(acts: ActivationSource, refused: np.ndarray, answered: np.ndarray) -> int:
    """The layer whose MD projection (all refused vs answered rows) has the highest AUC."""
    best, best_auc = 0, -1.0
    for layer in acts.layers:
        x = acts.layer(layer).astype(np.float64)
        md = x[refused].mean(0) - x[answered].mean(0)
        value = auc(x[refused] @ md, x[answered] @ md) or 0.0
        if value > best_auc:
            best, best_auc = layer, value
    return best


def style_geometry(
    acts_folder: Path,
    scores_file: Path,
    answers_file: Path,
    classify: Callable[[str], str],
    refusal_styles: tuple[str, ...],
    *,
    layer: int | None = None,
    band: float = 0.1,
    seed: int = 0,
) -> StyleGeometry:
    """The cross-style cosine matrix at `layer` (default: separating_layer)."""
    from bake.artifacts.activations import ActivationSet
    from bake.artifacts.scores import load_scores

    acts = ActivationSet.open(Path(acts_folder))
    scores = load_scores(Path(scores_file))
    styles = prompt_styles(Path(answers_file), classify, refusal_styles)
    row_style = np.array(
        [styles.get(i, "") if scores.get(i, 0.0) > band else "" for i in acts.ids], dtype=object
    )
    answered = np.array([scores.get(i, 0.0) < -band for i in acts.ids])
    counts = {s: int((row_style == s).sum()) for s in refusal_styles if (row_style == s).any()}
    names = [s for s, n in counts.items() if n >= MIN_ROWS]
    if len(names) < 2 or answered.sum() < MIN_ROWS:
        raise InputError(
            f"style directions need 2 styles of at least {MIN_ROWS} refused prompts and "
            f"{MIN_ROWS} answered ones; found {counts} and {int(answered.sum())} answered: "
            "score more prompts"
        )
    if layer is None:
        layer = separating_layer(acts, row_style != "", answered)
    x = acts.layer(layer).astype(np.float64)
    directions, self_cos = [], []
    for name in names:
        rows = (row_style == name) | answered
        refused = row_style[rows] == name
        directions.append(x[rows][refused].mean(0) - x[answered].mean(0))
        self_cos.append(split_half_cosine(x[rows], refused, seed))
    k = len(names)
    cos = [[cosine(directions[i], directions[j]) for j in range(k)] for i in range(k)]
    corrected = [
        [
            cos[i][j] / math.sqrt(self_cos[i] * self_cos[j])
            if self_cos[i] > 0 and self_cos[j] > 0
            else float("nan")
            for j in range(k)
        ]
        for i in range(k)
    ]
    return StyleGeometry(
        layer, names, {**counts, "answered": int(answered.sum())}, cos, self_cos, corrected
    )


def render_style_geometry(g: StyleGeometry) -> str:
    """The cosine matrix as text (diagonal: split-half self-cosine), then the counts."""
    width = max(8, *(len(n) + 2 for n in g.names))
    lines = [
        f"refusal styles at layer {g.layer}: cosines of their directions mu_R,style - mu_C "
        "(diagonal: split-half self-cosine)",
        " " * width + "".join(f"{n:>{width}}" for n in g.names),
    ]
    for i, name in enumerate(g.names):
        cells = [
            f"({g.self_cosine[i]:.2f})" if i == j else f"{g.cosine[i][j]:.2f}"
            for j in range(len(g.names))
        ]
        lines.append(f"{name:<{width}}" + "".join(f"{c:>{width}}" for c in cells))
    lines.append("prompts: " + ", ".join(f"{n} {c}" for n, c in g.counts.items()))
    return "\n".join(lines)


def toy_style_geometry(out: Path) -> StyleGeometry:
    """For `make demo`: the style directions of the toy's refusals, from the demo folder's
    answers.jsonl, scores.jsonl and activations/ (no model pass; render with
    render_style_geometry)."""
    from bake.toy_refuser import REFUSAL_STYLES, answer_style

    out = Path(out)
    return style_geometry(
        out / "activations",
        out / "scores.jsonl",
        out / "answers.jsonl",
        answer_style,
        REFUSAL_STYLES,
    )
