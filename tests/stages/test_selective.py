"""Selective vector options on planted activations: the Woodbury solve equals the dense one,
the projected direction is S^-1-orthogonal to the harmful-refusal direction, and too few
rows in a group give a reason instead of a vector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bake.artifacts.vectors import SteeringVectors
from bake.model.fingerprint import Fingerprint
from bake.stages.selective import _ridge_solve, option_vectors

D, LAYERS = 24, (0, 1)


def _planted(seed: int = 0) -> tuple[dict[str, dict[int, np.ndarray]], dict[str, list[int]]]:
    """sets of 12 rows; refusal adds a shared direction r plus a set-specific one."""
    rng = np.random.default_rng(seed)
    r, s, h = rng.normal(size=(3, D)) * 3
    states: dict[str, dict[int, np.ndarray]] = {}
    labels = {
        "sensitive": [1] * 6 + [0] * 6,
        "harmful": [1] * 8 + [0] * 4,
        "benign": [0] * 11 + [1],
    }
    for name, extra in (("sensitive", s), ("harmful", h), ("benign", 0 * s)):
        refused = np.asarray(labels[name])[:, None]
        rows = {}
        for layer in LAYERS:
            noise = rng.normal(size=(12, D)) * (1 + np.arange(D) / 4)  # anisotropic
            rows[layer] = noise + refused * (r + extra)
        states[name] = rows
    return states, labels


def _base() -> SteeringVectors:
    fp = Fingerprint("llama", D, len(LAYERS))
    return SteeringVectors.from_raw({i: np.ones(D) for i in LAYERS}, fp)


def _dense_solve(groups: list[np.ndarray], lam: float, x: np.ndarray) -> np.ndarray:
    sigma = sum(np.cov(g, rowvar=False) for g in groups)
    c = lam * np.trace(sigma) / D
    return np.linalg.solve(sigma + c * np.eye(D), x)


def test_woodbury_solve_equals_the_dense_solve() -> None:
    rng = np.random.default_rng(1)
    groups = [rng.normal(size=(7, D)), rng.normal(size=(5, D)) * 2]
    x = rng.normal(size=D)
    got, want = _ridge_solve(groups, 0.1, x), _dense_solve(groups, 0.1, x)
    diff = np.abs(got - want)
    assert np.allclose(got, want, rtol=1e-9, atol=1e-12), f"max {diff.max()} mean {diff.mean()}"


def test_projected_is_orthogonal_to_the_harmful_direction_in_the_inverse_metric() -> None:
    states, labels = _planted()
    vecs, why = option_vectors("projected", _base(), states, labels, LAYERS)
    assert vecs is not None, why
    for layer in LAYERS:
        g = {n: states[n][layer] for n in states}
        lab = {n: np.asarray(labels[n]) for n in labels}
        v_h = g["harmful"][lab["harmful"] == 1].mean(0) - g["benign"][lab["benign"] == 0].mean(0)
        answered = np.concatenate([g[n][lab[n] == 0] for n in ("sensitive", "harmful", "benign")])
        w = _dense_solve([answered], 0.1, v_h)
        v = vecs.directions[layer].astype(np.float64)
        assert abs(np.linalg.norm(v) - 1) < 1e-5
        cos = abs(v @ w) / np.linalg.norm(w)
        assert cos < 1e-4, f"layer {layer}: |v . S^-1 v_h| / |S^-1 v_h| = {cos:.3g}"
        over, _ = option_vectors("over", _base(), states, labels, [layer])
        assert over is not None
        cos_over = abs(over.directions[layer].astype(np.float64) @ w) / np.linalg.norm(w)
        assert cos_over > 0.05, "the planted over-refusal direction overlaps v_h"
        assert vecs.scales[layer] > 0 and vecs.method == "tune:projected"


@pytest.mark.parametrize("option", ["over", "pooled"])
def test_other_options_point_towards_sensitive_refusal(option: str) -> None:
    states, labels = _planted(2)
    vecs, why = option_vectors(option, _base(), states, labels, LAYERS)
    assert vecs is not None, why
    for layer in LAYERS:
        rows, refused = states["sensitive"][layer], np.asarray(labels["sensitive"]) == 1
        gap = float((rows[refused].mean(0) - rows[~refused].mean(0)) @ vecs.directions[layer])
        assert gap > 0, f"{option} layer {layer}: refused rows project lower ({gap:.3g})"


def test_too_few_refused_rows_give_a_reason() -> None:
    states, labels = _planted()
    labels = {**labels, "harmful": [1] + [0] * 11}
    vecs, why = option_vectors("projected", _base(), states, labels, LAYERS)
    assert vecs is None and "refused harmful" in why
    same, _ = option_vectors("file", _base(), states, labels, LAYERS)
    assert same is not None


def test_a_fitted_option_binds_to_the_layers_it_covers(llama_dir: Path) -> None:
    """tune's base plan names the file's first layer; an option fitted on the ranked layers
    only must still make a Steering (its plan moved onto a layer it has)."""
    from bake.artifacts.steering import Steering
    from bake.model.resolve import open_model

    model = open_model(llama_dir)
    fp = model.fingerprint
    rng = np.random.default_rng(0)
    full = SteeringVectors.from_raw(
        {i: rng.normal(size=fp.hidden_size) for i in range(fp.num_layers)}, fp
    )
    full.save(llama_dir.parent / "all-layers.safetensors")
    base = Steering.from_vectors(model, llama_dir.parent / "all-layers.safetensors", [0], 0.0)
    fitted = SteeringVectors.from_raw({i: rng.normal(size=fp.hidden_size) for i in (1, 2)}, fp)
    bound = base.with_vectors(fitted)
    assert bound.layers == [1]
    assert bound.with_config([2], -0.5).layers == [2]

    from bake.artifacts.tuning import Candidate
    from bake.stages.tune import candidate_steering

    options = {"file": base, "over": bound}
    ablate = candidate_steering(options, Candidate("over", (1, 2), 0.75, kind="ablate"))
    assert ablate.kind == "ablate" and ablate.layers == [1, 2]
    assert ablate.plan.ablation is not None and ablate.plan.ablation.strength == 0.75
    add = candidate_steering(
        options, Candidate("file", (2, 3), -0.1, "ranked", ((2, 1.0), (3, 0.5)))
    )
    assert (
        add.kind == "add"
        and add.plan.alpha == -0.1
        and add.plan.layer_multipliers == {2: 1.0, 3: 0.5}
    )
