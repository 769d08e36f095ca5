"""Prompt categories (issue 19) and category directions (issue 21): the `category` field
flows from the prompt file through answers, scores and activations; `fit --category` fits on
one category's rows; `fit --by-category` writes one direction per category per layer; `plan
--category` combines them in a whitened basis into one vector per layer, which bakes,
verifies and goes to GGUF like any vector."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bake.artifacts.activations import ActivationSet
from bake.artifacts.answers import read_answers
from bake.artifacts.categories import CategoryVectors, combine_categories, parse_weights
from bake.artifacts.plan import Plan
from bake.artifacts.prompts import load_prompts
from bake.artifacts.scores import load_score_categories
from bake.artifacts.vectors import SteeringVectors
from bake.errors import InputError
from bake.stages.fit import FitOptions, run_fit
from bake.stages.fit_categories import run_fit_by_category
from bake.stages.geometry import Whitener
from bake.stages.plan import run_plan
from tests.conftest import run_cli
from tests.pipeline import bake_model, convert, verify_baked, verify_gguf_file
from tests.stages.planted import planted_categories, planted_directions

CATEGORIES = ["geo", "food", "geo", None]
PROMPTS = [
    "What is the capital of the northern province?",
    "How do I bake bread at home?",
    "Tell me about the river valley.",
    "Explain how a steering vector works.",
]


def write_category_prompts(path: Path) -> Path:
    lines = []
    for i, (text, cat) in enumerate(zip(PROMPTS, CATEGORIES, strict=True)):
        obj = {"id": f"q{i}", "prompt": text} | ({"category": cat} if cat else {})
        lines.append(json.dumps(obj) + "\n")
    path.write_text("".join(lines))
    return path


# --------------------------------------------------------------------------- the field
def test_category_flows_through_answers_scores_and_activations(
    llama_dir: Path, tmp_path: Path
) -> None:
    from bake.judges.backends import PatternJudge
    from bake.runtime.sampling import SamplingOptions, TransformersBackend
    from bake.stages.collect import run_collect
    from bake.stages.generate import run_generate
    from bake.stages.judge import run_judge

    prompts = write_category_prompts(tmp_path / "p.jsonl")
    answers, scores = tmp_path / "a.jsonl", tmp_path / "s.jsonl"
    options = SamplingOptions(k=1, max_new_tokens=3, greedy=True)
    run_generate(TransformersBackend(str(llama_dir)), prompts, answers, options=options)
    assert [r.category for r in read_answers(answers)] == CATEGORIES
    no_field = json.loads(answers.read_text().splitlines()[3])
    assert "category" not in no_field, "a prompt without a category writes no category key"
    run_judge(answers, scores, PatternJudge(), cache_path=None, progress=False)
    assert load_score_categories(scores) == {"q0": "geo", "q1": "food", "q2": "geo"}
    acts = run_collect(llama_dir, prompts, tmp_path / "acts", layers=[1], progress=False)
    assert ActivationSet.open(acts.path).categories == CATEGORIES

    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"id": "x", "prompt": PROMPTS[0]}) + "\n")
    old = run_collect(llama_dir, plain, tmp_path / "acts-old", layers=[1], progress=False)
    assert "categories" not in old.index and old.categories is None


def test_a_category_that_is_not_a_string_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "prompt": "hi", "category": 3}) + "\n")
    with pytest.raises(InputError, match=r"bad.jsonl:1: 'category' must be a non-empty string"):
        load_prompts(bad)


# --------------------------------------------------------------------------- fitting
@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("planted")
    acts, scores = planted_categories(root / "data")
    vectors = root / "by-category.safetensors"
    run_fit_by_category(acts, scores, vectors, FitOptions(method="md"))
    return {"acts": acts, "scores": scores, "vectors": vectors, "root": root}


def test_fit_within_one_category_uses_only_its_rows(planted: dict[str, Path]) -> None:
    truth = planted_directions()
    one = run_fit(
        planted["acts"],
        planted["scores"],
        planted["root"] / "a.safetensors",
        FitOptions(method="md"),
        categories=["a"],
        progress=False,
    )
    everything = run_fit(
        planted["acts"],
        planted["scores"],
        planted["root"] / "all.safetensors",
        FitOptions(method="md"),
        progress=False,
    )
    counts = one.provenance["counts"]
    assert (counts["refusal"], counts["compliant"]) == (150, 150)
    assert one.provenance["categories"] == ["a"]
    cos_one = float(one.directions[1] @ truth["a"])
    cos_all = float(everything.directions[1] @ truth["a"])
    assert cos_one >= 0.97 and cos_all <= 0.9, f"category a {cos_one:.3f}, pooled {cos_all:.3f}"
    with pytest.raises(InputError, match="no prompt has category 'z'"):
        run_fit(
            planted["acts"],
            planted["scores"],
            planted["root"] / "z",
            FitOptions(),
            categories=["z"],
        )


def test_by_category_file_holds_each_category_and_loads_as_vectors(
    planted: dict[str, Path],
) -> None:
    truth = planted_directions()
    cv = CategoryVectors.load(planted["vectors"])
    assert cv.names == ["a", "b", "c"]
    for name, t in truth.items():
        for layer in cv.layers:
            cos = float(cv.directions[name][layer] @ t)
            assert cos >= 0.97, f"category {name} layer {layer}: cosine to the planted {cos:.4f}"
    pooled = SteeringVectors.load(planted["vectors"])  # an ordinary vector file, too
    assert pooled.layers == cv.layers and pooled.provenance["categories"] == ["a", "b", "c"]
    plain = planted["root"] / "plain.safetensors"
    pooled.save(plain)
    with pytest.raises(InputError, match="holds no category directions"):
        CategoryVectors.load(plain)


def test_whitened_combination_matches_its_definition(planted: dict[str, Path]) -> None:
    """v = Sigma^1/2 Q w with Q the symmetric orthonormalisation of Sigma^-1/2 [u_a, u_b],
    built here with explicit matrix square roots, against combine_categories."""
    from bake.stages.fit import COMPLIANT, align_labels

    cv = CategoryVectors.load(planted["vectors"])
    acts = ActivationSet.open(planted["acts"])
    from bake.artifacts.scores import load_scores

    labels = align_labels(acts.ids, load_scores(planted["scores"]), FitOptions())
    weights = {"a": 1.0, "b": -0.5}
    combined = combine_categories(cv, cv.whitening, weights)
    worst = 1.0
    for layer in cv.layers:
        x = acts.layer(layer)[labels.rows[labels.group == COMPLIANT]].astype(np.float64)
        whitener = Whitener(x, 0.1)
        sigma = whitener.z.T @ whitener.z + whitener.lam * np.eye(x.shape[1])
        values, vectors = np.linalg.eigh(sigma)
        root, inv_root = (
            (vectors * np.sqrt(values)) @ vectors.T,
            (vectors / np.sqrt(values)) @ vectors.T,
        )
        u = np.stack([cv.directions[n][layer].astype(np.float64) for n in weights], 1)
        a = inv_root @ u
        av, ae = np.linalg.eigh(a.T @ a)
        q = a @ (ae / np.sqrt(av)) @ ae.T  # (d, 2), orthonormal
        assert np.allclose(q.T @ q, np.eye(2), atol=1e-9)
        v = root @ q @ np.array(list(weights.values()))
        cos = float(v @ combined.directions[layer] / np.linalg.norm(v))
        worst = min(worst, cos)
        assert combined.scales[layer] == pytest.approx(cv.pooled.scales[layer])
    assert worst >= 1 - 1e-5, f"combination vs definition: worst cosine {worst:.8f}"
    single = combine_categories(cv, cv.whitening, {"b": 2.0})
    assert float(single.directions[2] @ cv.directions["b"][2]) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(InputError, match="no category 'z'"):
        combine_categories(cv, cv.whitening, {"z": 1.0})
    with pytest.raises(InputError, match="NAME=WEIGHT"):
        parse_weights(["a=x"])


def test_combined_plan_bakes_verifies_and_goes_to_gguf(
    planted: dict[str, Path], llama_dir: Path, tmp_path: Path
) -> None:
    """The planted data has the tiny Llama's fingerprint (llama, 64, 4): the combination's
    plan passes the same proofs as any plan."""
    plan_file = tmp_path / "plan.json"
    plan = run_plan(planted["vectors"], "1-3", -0.5, plan_file, categories=["a", "c=0.5"])
    assert plan.vectors_file == (tmp_path / "plan.combined.safetensors").resolve()
    combined = SteeringVectors.load(plan.vectors_file)
    assert combined.layers == [0, 1, 2, 3] and combined.method == "whitened-combination"
    record = Plan.load(plan_file).provenance["categories"]
    assert record["weights"] == {"a": 1.0, "c": 0.5}
    baked = tmp_path / "baked"
    bake_model(llama_dir, plan_file, baked)
    report = verify_baked(llama_dir, plan_file, baked)
    assert report["passed"], (
        f"baked != hooked: max {report['max_abs_diff']:.3g} mean {report['mean_abs_diff']:.3g}"
    )
    gguf = convert(llama_dir, tmp_path / "steered.gguf", "F32", plan_file).output
    gguf_report = verify_gguf_file(llama_dir, plan_file, gguf)
    assert gguf_report["passed"], (
        f"GGUF != hooked: max {gguf_report['max_abs_diff']:.3g} "
        f"mean {gguf_report['mean_abs_diff']:.3g}"
    )


def test_fit_and_plan_by_category_from_the_command_line(
    planted: dict[str, Path], tmp_path: Path
) -> None:
    vectors = tmp_path / "v.safetensors"
    fit = run_cli(
        "fit", str(planted["acts"]), str(planted["scores"]), "-o", str(vectors),
        "--by-category", "--method", "md", "--category", "a", "--category", "b",
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr
    assert "categories a, b" in fit.stdout
    assert CategoryVectors.load(vectors).names == ["a", "b"]
    plan = run_cli(
        "plan", str(vectors), "--layers", "1-2", "--alpha", "-0.2", "--category", "a",
        "--category", "b=0.5", "-o", str(tmp_path / "p.json"),
    )  # fmt: skip
    assert plan.returncode == 0, plan.stderr
    assert (tmp_path / "p.combined.safetensors").is_file()
    bad = run_cli(
        "plan", str(vectors), "--layers", "1", "--alpha", "-0.2", "--category", "c",
        "-o", str(tmp_path / "q.json"),
    )  # fmt: skip
    assert bad.returncode == 2 and "no category 'c'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "q.json").exists() and not (tmp_path / "q.combined.safetensors").exists()


# --------------------------------------------------------------------------- the weights
def test_weight_search_finds_the_constrained_optimum(planted: dict[str, Path]) -> None:
    """A proxy scorer with a known optimum: refusal = -u.t_a (lower: u along category a),
    harmful = 1 - |u.t_c| kept >= 0.8. With cos(t_a, t_c) = 0.6 the best unit u in their
    span has u.t_c = 0.2 and u.t_a = 0.6 * 0.2 + 0.8 * sqrt(1 - 0.2^2) = 0.904; u = t_a
    (u.t_c = 0.6) would break the guard."""
    from bake.stages.combination import search_combination_weights

    truth = planted_directions()
    cv = CategoryVectors.load(planted["vectors"])

    def scorer(vectors: SteeringVectors) -> tuple[float, float, float]:
        u = vectors.directions[1].astype(np.float64)
        return -float(u @ truth["a"]), 1 - abs(float(u @ truth["c"])), 0.2 * max(0, u @ truth["b"])

    search = search_combination_weights(cv, scorer, harmful_min=0.8, kl_max=0.1, trials=40)
    best, optimum = search.best, 0.6 * 0.2 + 0.8 * np.sqrt(1 - 0.2**2)
    assert any(t.refusal < best.refusal for t in search.trials), "the guard binds"
    assert best.feasible and len(search.trials) <= 40
    assert -best.refusal >= optimum - 0.02, f"found {-best.refusal:.4f}, optimum {optimum:.4f}"
    assert all(t.feasible == (t.harmful >= 0.8 and t.kl <= 0.1) for t in search.trials)
    again = search_combination_weights(cv, scorer, harmful_min=0.8, kl_max=0.1, trials=40)
    assert again.trials == search.trials, "the search is seeded"
    combined = combine_categories(cv, cv.whitening, best.weights)
    assert -float(combined.directions[1] @ truth["a"]) == pytest.approx(best.refusal)
    with pytest.raises(InputError, match="1 to 6 categories"):
        search_combination_weights(cv, scorer, harmful_min=0, kl_max=1, names=["a"] * 7)


def test_tune_searches_the_combination_weights_by_proxy(
    planted: dict[str, Path], llama_dir: Path, tmp_path: Path
) -> None:
    """`tune --vector-options combined` on a by-category file: the weights come from the
    stage-1 proxies (kept in the tune cache, so a second run searches nothing), and the
    combined option's candidates are searched like any other."""
    from bake.artifacts.tuning import TuneSettings
    from bake.runtime.sampling import SamplingOptions
    from bake.stages.measure import Measurer
    from bake.stages.tune import NoPlan, run_tune
    from tests.tiny_models import write_prompts

    sets = {
        name: write_prompts(tmp_path / f"{name}.jsonl", [f"{name} question {i}" for i in range(4)])
        for name in ("sensitive", "harmful", "benign")
    }
    settings = TuneSettings(
        vector_options=("combined",), layer_counts=(2,), alphas=(0.05, 0.1), stage1=4, confirm=1
    )
    m = Measurer(sampling=SamplingOptions(k=1, max_new_tokens=4, greedy=True))
    plan, cache = tmp_path / "plan.json", tmp_path / "plan.tune-cache.jsonl"

    def run() -> object:
        try:
            return run_tune(llama_dir, planted["vectors"], sets, plan, settings=settings,
                            measurer=m, progress=False)  # fmt: skip
        except NoPlan as e:  # a random tiny model refuses nothing: no plan from noise
            return e

    run()
    report = json.loads((tmp_path / "plan-tuning" / "tuning_report.json").read_text())
    assert report["vector_options"] == {"combined": ""}
    assert {c["option"] for c in report["stage1"]} == {"combined"}
    records = [json.loads(line)["record"] for line in cache.read_text().splitlines()]
    weights = [r for r in records if set(r) == set(CategoryVectors.load(planted["vectors"]).names)]
    assert len(weights) == 1, "the weights are searched once and cached"
    assert abs(sum(w * w for w in weights[0].values()) - 1) < 1e-6, "w on the unit sphere"
    before = cache.read_bytes()
    run()
    assert cache.read_bytes() == before, "the second run measured something again"
