"""Vector options for a selective goal: directions fitted on the tuning sets' unsteered
activations (block outputs at the last prompt token) and judged answers, per layer.

With R_S / A_S the sensitive prompts refused / answered, R_H the harmful prompts refused,
A_B the benign prompts answered, C all answered prompts, Sigma_X the covariance of rows X
and lambda relative (lambda * trace(Sigma)/d):
  over:      v_o = mu(R_S) - mu(A_S)                          the over-refusal direction
  harm:      v_h = mu(R_H) - mu(A_B)                          the harmful-refusal direction
  projected: v_o - (v_o' S^-1 v_h / v_h' S^-1 v_h) v_h,  S = Sigma_C + lambda I
             (v_o with its S^-1-component along v_h removed: the result is S^-1-orthogonal
              to v_h, so moving along it changes the harmful projection w = S^-1 v_h not)
  pooled:    (Sigma_C + Sigma_{R_H} + lambda I)^-1 (mu(R_S) - mu(C))
             WRMD whose covariance also holds the refused harmful rows: directions along
             which harmful refusal varies are shrunk
  file:      the fitted VECTORS as given
Each direction is normalised; its scale s_l is the mean norm of the answered rows, as in
`fit`, so alpha means the same across options.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from bake.artifacts.vectors import SteeringVectors

OPTIONS = ("file", "over", "projected", "pooled")
MIN_ROWS = 2  # rows per group a mean needs


def option_vectors(
    option: str,
    base: SteeringVectors,
    states: dict[str, dict[int, np.ndarray]],
    labels: Mapping[str, Sequence[int]],
    layers: Sequence[int],
    lam: float = 0.1,
) -> tuple[SteeringVectors | None, str]:
    """(vectors of `option` for `layers`, "") or (None, why not).

    states: set -> layer -> (n_prompts, d) rows; labels: set -> 1 refused / 0 answered."""
    if option == "file":
        return base, ""
    groups = _groups(states, labels)
    short = [name for name, rows in groups.items() if len(rows[layers[0]]) < MIN_ROWS]
    if short:
        return None, f"fewer than {MIN_ROWS} tuning prompts in {', '.join(short)}"
    directions, scales = {}, {}
    for layer in layers:
        g = {name: rows[layer].astype(np.float64) for name, rows in groups.items()}
        v = _direction(option, g, lam)
        norm = float(np.linalg.norm(v))
        if not np.isfinite(norm) or norm == 0:
            return None, f"the {option} direction of layer {layer} is zero or not finite"
        directions[layer] = (v / norm).astype(np.float32)
        scales[layer] = float(np.linalg.norm(g["answered"], axis=1).mean())
    vectors = replace(
        base,
        directions=directions,
        scales=scales,
        method=f"tune:{option}",
        diagnostics={},
        provenance={**base.provenance, "vector_option": option, "lambda": lam},
    )
    return vectors, ""


def _groups(
    states: dict[str, dict[int, np.ndarray]], labels: Mapping[str, Sequence[int]]
) -> dict[str, dict[int, np.ndarray]]:
    """The row groups of the formulas, by readable name (they appear in messages)."""

    def pick(name: str, value: int) -> dict[int, np.ndarray]:
        mask = np.asarray(labels[name]) == value
        return {layer: rows[mask] for layer, rows in states[name].items()}

    answered = {
        layer: np.concatenate([pick(n, 0)[layer] for n in ("sensitive", "harmful", "benign")])
        for layer in states["sensitive"]
    }
    return {
        "refused sensitive": pick("sensitive", 1),
        "answered sensitive": pick("sensitive", 0),
        "refused harmful": pick("harmful", 1),
        "answered benign": pick("benign", 0),
        "answered": answered,
    }


def _direction(option: str, g: dict[str, np.ndarray], lam: float) -> np.ndarray:
    v_o = g["refused sensitive"].mean(0) - g["answered sensitive"].mean(0)
    if option == "over":
        return v_o
    if option == "projected":
        v_h = g["refused harmful"].mean(0) - g["answered benign"].mean(0)
        w = _ridge_solve([g["answered"]], lam, v_h)
        return v_o - float(v_o @ w) / float(v_h @ w) * v_h
    if option == "pooled":
        return _ridge_solve([g["answered"], g["refused harmful"]], lam, v_o_pooled(g))
    raise ValueError(f"unknown vector option {option!r}")


def v_o_pooled(g: dict[str, np.ndarray]) -> np.ndarray:
    """mu(R_S) - mu(C): the refused sensitive rows against every answered row."""
    return g["refused sensitive"].mean(0) - g["answered"].mean(0)


def _ridge_solve(groups: list[np.ndarray], lam: float, x: np.ndarray) -> np.ndarray:
    """(Sigma + lambda trace(Sigma)/d I)^-1 x with Sigma = sum of the groups' covariances,
    solved in the row space when rows < d (Woodbury):
      (Y'Y + c I)^-1 x = (x - Y' (Y Y' + c I)^-1 Y x) / c,
    Y = each group's rows centred and divided by sqrt(n_group - 1), stacked."""
    y = np.concatenate([(r - r.mean(0)) / np.sqrt(max(len(r) - 1, 1)) for r in groups])
    c = max(lam * float((y * y).sum()) / y.shape[1], 1e-12)  # lambda * trace(Sigma) / d
    gram = y @ y.T + c * np.eye(len(y))
    return (x - y.T @ np.linalg.solve(gram, y @ x)) / c
