"""Synthetic activations with planted refusal geometry, written as the folders `collect` and
`judge` write (an activation folder with per-row categories and a scores file).

Categories: category c has its own topic offset o_c (shared by its refused and answered
rows, so it cancels within the category) and a refusal direction t_c (unit) with planted
pairwise cosines; answered rows are base + o_c + noise, refused rows add MAGNITUDE * t_c.
Rank k: refused rows sit in one of k clusters along orthonormal directions q_1..q_k with
distinct magnitudes (so the top-k eigenvectors of the whitened scatter are the q_j).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bake.artifacts.activations import ActivationWriter
from bake.model.fingerprint import Fingerprint

D, LAYERS = 64, 4  # the tiny Llama's hidden size and layer count (tests/tiny_models.py)
MAGNITUDE = 8.0
# planted cosines between the refusal directions of categories a, b, c
COSINES = {("a", "b"): 0.2, ("a", "c"): 0.6, ("b", "c"): 0.85}


def planted_directions(seed: int = 0) -> dict[str, np.ndarray]:
    """Unit directions t_a, t_b, t_c (D,) with the COSINES between them."""
    names = ["a", "b", "c"]
    gram = np.eye(3)
    for (x, y), value in COSINES.items():
        i, j = names.index(x), names.index(y)
        gram[i, j] = gram[j, i] = value
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(D, 3)))
    rows = np.linalg.cholesky(gram)  # gram = L L^T: t_i = Q L[i] has t_i . t_j = gram_ij
    return {n: q @ rows[i] for i, n in enumerate(names)}


def write_folder(
    root: Path, ids: list[str], x: np.ndarray, scores: dict[str, float], categories: list[str]
) -> tuple[Path, Path]:
    """ACTS (every layer the same rows, slightly scaled per layer) and SCORES under root."""
    acts = root / "acts"
    acts.mkdir(parents=True)
    writer = ActivationWriter(acts, list(range(LAYERS)), D)
    rows = {layer: (x * (1 + 0.1 * layer)).astype(np.float32) for layer in range(LAYERS)}
    writer.add(ids, rows, {layer: np.linalg.norm(r, axis=1) for layer, r in rows.items()})
    writer.finish(Fingerprint("llama", D, LAYERS), "last", categories=categories)
    scores_file = root / "scores.jsonl"
    scores_file.write_text(
        "".join(
            json.dumps({"id": i, "score": scores[i], "category": c}) + "\n"
            for i, c in zip(ids, categories, strict=True)
        )
    )
    return acts, scores_file


def planted_categories(
    root: Path,
    n: int = 150,
    seed: int = 0,
    directions: dict[str, np.ndarray] | None = None,
    topic: float = 3.0,
) -> tuple[Path, Path]:
    """Three categories (COSINES between their directions; or `directions`), n refused and
    n answered rows each, topic offsets of scale `topic`; returns (ACTS, SCORES)."""
    rng = np.random.default_rng(seed + 1)
    base = 20 + rng.normal(size=D)
    ids, rows, cats, scores = [], [], [], {}
    for name, t in (directions or planted_directions(seed)).items():
        offset = topic * rng.normal(size=D)
        for refused in (True, False):
            for i in range(n):
                pid = f"{name}-{'r' if refused else 'c'}{i}"
                shift = MAGNITUDE * t if refused else 0.0
                rows.append(base + offset + shift + rng.normal(size=D))
                ids.append(pid)
                cats.append(name)
                scores[pid] = 0.9 if refused else -0.9
    return write_folder(root, ids, np.array(rows), scores, cats)


def planted_rank(k: int, n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x (2n, D) (refused first) and refusal (2n,) bool, refused rows in k clusters."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(D, k)))
    magnitudes = np.linspace(14, 8, k) if k > 1 else np.array([10.0])
    which = rng.integers(0, k, size=n)
    x_r = 5 + rng.normal(size=(n, D)) + (q[:, which] * magnitudes[which]).T
    x_c = 5 + rng.normal(size=(n, D))
    return np.concatenate([x_r, x_c]), np.r_[np.ones(n, bool), np.zeros(n, bool)]
