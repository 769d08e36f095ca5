"""The fitting math on synthetic activations, the fit command, and its bad inputs.

Generative model (issue 6): d = 32, N = 4000 per class, shared covariance
Sigma = I + 50 n n^T, mean difference u + 3n (u, n orthonormal). The Fisher direction
Sigma^-1 (mu_R - mu_C) is the truth: MD is pulled towards n (cosine ~0.38), RMD recovers
the truth (~0.99). With 30% of each set flipped at confidence 0.15, WRMD keeps ~0.98 while
RMD falls to ~0.93.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bake.artifacts.activations import ActivationWriter
from bake.artifacts.scores import load_scores
from bake.artifacts.vectors import SteeringVectors
from bake.errors import InputError
from bake.model.fingerprint import Fingerprint
from bake.stages.fit import COMPLIANT, NEUTRAL, REFUSAL, FitOptions, auc, fit_layer, run_fit
from tests.conftest import run_cli


def fisher_problem(
    seed: int, d: int = 32, n: int = 4000, flip: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows x (2n, d) (refusal first), scores c (2n,), truth Sigma^-1 (mu_R - mu_C)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, 2)))
    u, v = q[:, 0], q[:, 1]
    sigma = np.eye(d) + 50 * np.outer(v, v)
    chol = np.linalg.cholesky(sigma)
    mu_c = 4.0 * rng.normal(size=d)  # an offset, so centring matters
    delta = u + 3 * v
    x_r = mu_c + delta + rng.normal(size=(n, d)) @ chol.T
    x_c = mu_c + rng.normal(size=(n, d)) @ chol.T
    c = np.concatenate([np.full(n, 0.9), np.full(n, -0.9)])
    k = round(flip * n)
    c[rng.permutation(n)[:k]] = -0.15  # refusals labelled compliant, low confidence
    c[n + rng.permutation(n)[:k]] = 0.15  # compliances labelled refusal
    return np.concatenate([x_r, x_c]).astype(np.float32), c, np.linalg.solve(sigma, delta)


def groups(c: np.ndarray, opts: FitOptions | None = None) -> np.ndarray:
    opts = opts or FitOptions()
    return np.where(
        c > opts.refusal_above, REFUSAL, np.where(c < opts.compliant_below, COMPLIANT, NEUTRAL)
    )


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def fitted_cosine(method: str, seed: int, flip: float = 0.0) -> float:
    x, c, truth = fisher_problem(seed, flip=flip)
    g = groups(c)
    result = fit_layer(x, c, g, np.zeros(len(c), bool), FitOptions(method=method))
    return cosine(result.vector, truth)


# --------------------------------------------------------------------------- the math
def test_rmd_recovers_the_fisher_direction_md_does_not() -> None:
    md = np.mean([fitted_cosine("md", s) for s in range(3)])
    rmd = np.mean([fitted_cosine("rmd", s) for s in range(3)])
    assert md <= 0.5, f"MD cosine to the truth {md:.4f}, expected <= 0.5 (~0.38)"
    assert rmd >= 0.97, f"RMD cosine to the truth {rmd:.4f}, expected >= 0.97 (~0.99)"


def test_wrmd_resists_flipped_low_confidence_labels() -> None:
    rmd = np.array([fitted_cosine("rmd", s, flip=0.3) for s in range(5)])
    wrmd = np.array([fitted_cosine("wrmd", s, flip=0.3) for s in range(5)])
    msg = (
        f"RMD {np.round(rmd, 4)} mean {rmd.mean():.4f}; WRMD {np.round(wrmd, 4)} "
        f"mean {wrmd.mean():.4f}"
    )
    assert wrmd.mean() >= 0.96, msg
    assert wrmd.mean() - rmd.mean() >= 0.02, msg


def numpy_reference(x: np.ndarray, c: np.ndarray, opts: FitOptions) -> np.ndarray:
    """(Sigma + lambda I)^-1 (mu_R - mu_C), straight from the definitions."""
    g = groups(c, opts)
    w = np.abs(c) if opts.method == "wrmd" else np.ones_like(c)
    x = x.astype(np.float64)

    def mean(m: np.ndarray) -> np.ndarray:
        return (w[m, None] * x[m]).sum(0) / w[m].sum()

    diff = mean(g == REFUSAL) - mean(g == COMPLIANT)
    if opts.method == "md":
        return diff
    cov_groups = [COMPLIANT] if opts.covariance == "compliant" else [REFUSAL, COMPLIANT]
    total = sum(w[g == k].sum() for k in cov_groups)
    sigma = (
        sum(
            ((x[g == k] - mean(g == k)) * w[g == k, None]).T @ (x[g == k] - mean(g == k))
            for k in cov_groups
        )
        / total
    )
    d = x.shape[1]
    lam = opts.lam * np.trace(sigma) / d if opts.lambda_mode == "relative" else opts.lam
    return np.linalg.solve(sigma + lam * np.eye(d), diff)


def small_problem(seed: int, d: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n rows per class plus a few neutral rows, scores spread over [-1, 1]."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    x = rng.normal(size=(2 * n + 3, d)) @ mix + 2.0
    c = np.concatenate([rng.uniform(0.2, 1.0, n), rng.uniform(-1.0, -0.2, n), [0.0, 0.05, -0.1]])
    x[:n] += rng.normal(size=d)
    return x.astype(np.float32), c


@pytest.mark.parametrize("method", ["md", "rmd", "wrmd"])
@pytest.mark.parametrize("covariance", ["compliant", "pooled"])
@pytest.mark.parametrize("lambda_mode,lam", [("relative", 0.05), ("absolute", 0.3)])
def test_closed_form_matches_numpy(
    method: str, covariance: str, lambda_mode: str, lam: float
) -> None:
    x, c = small_problem(1, d=6, n=30)
    opts = FitOptions(
        method=method, covariance=covariance, lam=lam, lambda_mode=lambda_mode, holdout=0.0
    )
    got = fit_layer(x, c, groups(c), np.zeros(len(c), bool), opts).vector
    want = numpy_reference(x, c, opts)
    err = np.abs(got - want)
    assert err.max() <= 1e-9 * np.abs(want).max(), (
        f"max diff {err.max():.3g}, mean {err.mean():.3g}, |want| {np.abs(want).max():.3g}"
    )


def test_diagnostics_are_scored_on_a_held_out_refit() -> None:
    x, c = small_problem(2, d=6, n=40)
    g = groups(c)
    held = np.zeros(len(c), bool)
    held[[0, 1, 2, 3, 40, 41, 42, 43, 44, 80]] = True
    opts = FitOptions(method="wrmd", holdout=0.2)
    result = fit_layer(x, c, g, held, opts)
    train = ~held
    v_train = numpy_reference(x[train], c[train], opts)
    proj = x[held].astype(np.float64) @ (v_train / np.linalg.norm(v_train))
    want_r = np.corrcoef(proj, c[held])[0, 1]
    pos, neg = proj[g[held] == REFUSAL], proj[g[held] == COMPLIANT]
    want_auc = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    dg = result.diagnostics
    assert abs(dg["pearson_r"] - want_r) < 1e-9, (dg["pearson_r"], want_r)
    assert abs(dg["auc"] - want_auc) < 1e-12, (dg["auc"], want_auc)
    assert dg["diagnostics_on"] == "heldout" and dg["n_diagnostic"] == 10
    want_all = numpy_reference(x, c, opts)  # the stored vector uses every row
    assert np.allclose(result.vector, want_all, rtol=1e-9, atol=1e-12)
    assert dg["raw_norm"] == pytest.approx(np.linalg.norm(want_all), rel=1e-9)


def test_auc_counts_ties_as_half() -> None:
    pos, neg = np.array([1.0, 2.0, 2.0, 5.0]), np.array([2.0, 0.0, 2.0])
    brute = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    assert auc(pos, neg) == pytest.approx(brute)
    assert auc(np.array([3.0]), np.array([1.0, 2.0])) == 1.0


@pytest.mark.parametrize("d,n", [(40, 12), (6, 50)])  # fewer rows than dims, and more
@pytest.mark.parametrize("covariance", ["compliant", "pooled"])
def test_dual_form_equals_primal(d: int, n: int, covariance: str) -> None:
    x, c = small_problem(3, d=d, n=n)
    g = groups(c)
    held = np.zeros(len(c), bool)
    held[[0, 1, n, n + 1, n + 2]] = True
    out = {}
    for solver in ("primal", "dual"):
        opts = FitOptions(method="wrmd", covariance=covariance, solver=solver, lam=0.02)
        out[solver] = fit_layer(x, c, g, held, opts)
    p, q = out["primal"], out["dual"]
    err = np.abs(p.vector - q.vector)
    assert err.max() <= 1e-8 * np.abs(p.vector).max(), (
        f"primal vs dual: max diff {err.max():.3g}, mean {err.mean():.3g}"
    )
    for key in ("pearson_r", "auc", "lambda"):
        assert q.diagnostics[key] == pytest.approx(p.diagnostics[key], rel=1e-8), key
    assert (p.diagnostics["form"], q.diagnostics["form"]) == ("primal", "dual")


def test_auto_solver_takes_the_cheaper_form() -> None:
    wide, c_wide = small_problem(4, d=64, n=10)
    tall, c_tall = small_problem(4, d=4, n=60)
    none = np.zeros(len(c_wide), bool)
    assert fit_layer(wide, c_wide, groups(c_wide), none, FitOptions()).diagnostics["form"] == "dual"
    none = np.zeros(len(c_tall), bool)
    assert (
        fit_layer(tall, c_tall, groups(c_tall), none, FitOptions()).diagnostics["form"] == "primal"
    )


def test_float32_accumulation_is_close_to_float64() -> None:
    x, c, _ = fisher_problem(0, n=500)
    g, held = groups(c), np.zeros(len(c), bool)
    v64 = fit_layer(x, c, g, held, FitOptions()).vector
    v32 = fit_layer(x, c, g, held, FitOptions(float64=False)).vector
    assert cosine(v64, v32) > 0.9999, f"cosine {cosine(v64, v32):.6f}"


# --------------------------------------------------------------------------- the command
FP = Fingerprint("llama", 6, 3)


def write_acts(
    folder: Path, ids: list[str], rows: dict[int, np.ndarray], shard_bytes: int = 400
) -> Path:
    folder.mkdir(parents=True)
    writer = ActivationWriter(folder, sorted(rows), FP.hidden_size, shard_bytes)
    for start in range(0, len(ids), 7):  # several batches and shards
        part = slice(start, start + 7)
        writer.add(
            ids[part],
            {k: v[part] for k, v in rows.items()},
            {k: np.linalg.norm(v[part], axis=1) for k, v in rows.items()},
        )
    writer.finish(FP, "last", model={"source": "synthetic"})
    return folder


def write_scores(path: Path, ids: list[str], c: np.ndarray) -> Path:
    path.write_text(
        "".join(
            json.dumps({"id": i, "score": float(s), "note": "x"}) + "\n"
            for i, s in zip(ids, c, strict=True)
        )
    )
    return path


@pytest.fixture()
def synthetic(tmp_path: Path) -> tuple[Path, Path, list[str], np.ndarray, dict[int, np.ndarray]]:
    x, c = small_problem(5, d=6, n=30)
    ids = [f"q{i}" for i in range(len(c))]
    rows = {0: x, 2: x * 2.0 + 1.0}
    acts = write_acts(tmp_path / "acts", ids, rows)
    return acts, write_scores(tmp_path / "scores.jsonl", ids, c), ids, c, rows


def test_fit_writes_unit_directions_scales_and_diagnostics(synthetic, tmp_path: Path) -> None:
    acts, scores, _ids, c, rows = synthetic
    assert len(list(acts.glob("acts-*.safetensors"))) > 1
    out = tmp_path / "vectors.safetensors"
    run_fit(acts, scores, out, FitOptions(method="wrmd", holdout=0.0), progress=False)
    vecs = SteeringVectors.load(out)
    assert vecs.layers == [0, 2] and vecs.method == "wrmd"
    assert vecs.fingerprint == FP
    for layer, x in rows.items():
        want = numpy_reference(x, c, FitOptions(method="wrmd"))
        assert cosine(vecs.directions[layer].astype(np.float64), want) > 1 - 1e-6
        assert np.linalg.norm(vecs.directions[layer]) == pytest.approx(1.0, abs=1e-6)
        compliant = c < -0.1
        assert vecs.scales[layer] == pytest.approx(
            np.linalg.norm(x[compliant], axis=1).mean(), rel=1e-6
        )
        assert set(vecs.diagnostics[layer]) >= {"raw_norm", "pearson_r", "auc", "scale"}
    counts = vecs.provenance["counts"]
    assert (counts["refusal"], counts["compliant"], counts["neutral"]) == (30, 30, 3)
    assert vecs.provenance["options"]["method"] == "wrmd"


def test_cli_fit_prints_the_table(synthetic, tmp_path: Path) -> None:
    acts, scores, *_ = synthetic
    out = tmp_path / "v.safetensors"
    proc = run_cli(
        "fit",
        str(acts),
        str(scores),
        "-o",
        str(out),
        "--method",
        "rmd",
        "--covariance",
        "pooled",
        "--layers",
        "2",
        check=True,
    )
    assert "pearson_r" in proc.stdout and "auc" in proc.stdout, proc.stdout
    assert SteeringVectors.load(out).layers == [2]
    assert "held out for diagnostics" in proc.stdout


def test_cli_fit_error_is_one_line(synthetic, tmp_path: Path) -> None:
    acts, scores, *_ = synthetic
    proc = run_cli(
        "fit",
        str(acts),
        str(scores),
        "-o",
        str(tmp_path / "v.safetensors"),
        "--min-set-size",
        "100",
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and "refusal set has 30" in lines[0] and "compliant set 30" in lines[0]
    ), proc.stderr
    assert not (tmp_path / "v.safetensors").exists()


# --------------------------------------------------------------------------- bad input
def test_score_ids_without_activations_are_refused(synthetic, tmp_path: Path) -> None:
    acts, _scores, ids, c, _ = synthetic
    scores = write_scores(tmp_path / "other.jsonl", [f"other{i}" for i in ids], c)
    with pytest.raises(InputError, match=r"63 of 63 score ids have no activation row"):
        run_fit(acts, scores, tmp_path / "v.safetensors", FitOptions(), progress=False)


def test_scores_for_more_prompts_than_activations_are_dropped_and_counted(
    synthetic, tmp_path: Path
) -> None:
    """Judging a whole prompt file and collecting half of it is normal: the prompts in both
    files are used, the others counted."""
    acts, _scores, ids, c, _ = synthetic
    extra = [f"other{i}" for i in range(7)]
    scores = write_scores(tmp_path / "more.jsonl", [*ids, *extra], np.concatenate([c, c[:7]]))
    vecs = run_fit(acts, scores, tmp_path / "v.safetensors", FitOptions(), progress=False)
    counts = vecs.provenance["counts"]
    assert counts["dropped_scores"] == 7
    assert counts["refusal"] + counts["compliant"] + counts["neutral"] == len(ids)
    assert vecs.provenance["scores_source"] == "labels from more.jsonl"
    proc = run_cli("fit", str(acts), str(scores), "-o", str(tmp_path / "w.safetensors"))
    assert proc.returncode == 0 and "7 scored prompts have no activation row" in proc.stdout


def test_too_small_sets_name_the_counts(synthetic, tmp_path: Path) -> None:
    acts, _scores, ids, c, _ = synthetic
    few = c.copy()
    few[np.flatnonzero(few > 0.1)[3:]] = 0.0  # leave 3 refusals
    scores = write_scores(tmp_path / "few.jsonl", ids, few)
    with pytest.raises(InputError, match=r"refusal set has 3 prompts .* compliant set 30"):
        run_fit(acts, scores, tmp_path / "v.safetensors", FitOptions(), progress=False)


def test_nan_activations_are_refused(tmp_path: Path) -> None:
    x, c = small_problem(6, d=6, n=20)
    x[5, 2] = np.nan
    ids = [f"q{i}" for i in range(len(c))]
    acts = write_acts(tmp_path / "acts", ids, {1: x})
    scores = write_scores(tmp_path / "s.jsonl", ids, c)
    with pytest.raises(InputError, match=r"layer 1 hold NaN/Inf in 1 rows \(e.g. id 'q5'\)"):
        run_fit(acts, scores, tmp_path / "v.safetensors", FitOptions(), progress=False)


@pytest.mark.parametrize(
    "text,match",
    [
        ("", "is empty"),
        ('{"id": "a", "score": 0.5}\n{"id": "a", "score": -0.5}\n', "duplicate id 'a'"),
        ('{"id": "a", "score": 1.5}\n', r"not a number in \[-1, 1\]"),
        ('{"id": "a", "score": NaN}\n', r"not a number in \[-1, 1\]"),
        ('{"id": "a"}\n', "needs an 'id' and a 'score'"),
        ("{not json\n", "malformed JSON"),
    ],
)
def test_bad_score_files(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text(text)
    with pytest.raises(InputError, match=match):
        load_scores(path)


def test_not_an_activation_folder(tmp_path: Path) -> None:
    (tmp_path / "s.jsonl").write_text('{"id": "a", "score": 0.5}\n')
    with pytest.raises(InputError, match="not an activation folder"):
        run_fit(tmp_path, tmp_path / "s.jsonl", tmp_path / "v.safetensors", FitOptions())


def test_duplicate_activation_ids_are_refused(tmp_path: Path) -> None:
    x, _c = small_problem(7, d=6, n=5)
    ids = [f"q{i}" for i in range(len(x))]
    ids[3] = "q0"
    with pytest.raises(InputError, match="duplicate id 'q0'"):
        write_acts(tmp_path / "acts", ids, {0: x})


def test_bad_options_are_refused() -> None:
    with pytest.raises(InputError, match="lambda must be"):
        FitOptions(lam=-1).check()
    with pytest.raises(InputError, match="bands need"):
        FitOptions(refusal_above=-0.5, compliant_below=0.5).check()
