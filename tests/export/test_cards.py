"""Model cards: golden bytes for a fixed input, metadata round-trips through ModelCard.load,
facts inherited from the source's own card, and rendering from an installed wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bake.artifacts.plan import make_plan
from bake.artifacts.reports import (
    Check,
    EvaluationReport,
    RefusalSummary,
    SetEvaluation,
    VerifyReport,
)
from bake.artifacts.steering import Steering, open_plan_only
from bake.artifacts.vectors import SteeringVectors
from bake.model.fingerprint import Fingerprint
from export.llamacpp.verify import GgufVerifyReport, Tokenization
from export.publish.cards import (
    CardInput,
    FileEntry,
    SourceRecord,
    card_data,
    render_card,
    source_record,
    write_card,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
REPO = Path(__file__).resolve().parents[2]
UPDATE = os.environ.get("STEERBAKE_UPDATE_GOLDEN") == "1"

VERIFY_REPORT = VerifyReport(
    check="pytorch",
    runtime="transformers",
    kind="checkpoint",
    model="acme/tiny-llama",
    baked="tiny-llama-steered",
    layers="1-2",
    alpha=-0.15,
    dtype="float32",
    device="cpu",
    prompts=8,
    tolerance=0.00031,
    rel_tolerance=1e-4,
    max_abs_diff=1.07e-06,
    mean_abs_diff=1.28e-07,
    max_abs_logit=3.1,
    effect_max=2.63,
    effect_mean=0.41,
    effect_negligible=False,
    greedy_identical=8,
    greedy_near_ties=0,
    greedy=[],
    passed=True,
)
GGUF_REPORT = GgufVerifyReport(
    check="gguf",
    runtime="llama.cpp",
    kind="control-vector",
    model="acme/tiny-llama",
    gguf="tiny-llama-F16.gguf",
    control_vector="tiny-llama-steered-control-vector.gguf",
    arch="llama",
    out_type="F16",
    layers="1-2",
    alpha=-0.15,
    prompts=8,
    max_new_tokens=32,
    rel_tolerance=5e-05,
    effect_max=2.6,
    comparisons={},
    tokenization=Tokenization(8, 8, []),
    control_vector_check=None,
    checks=[
        Check(
            "(1) unsteered GGUF vs transformers",
            True,
            "top-1 agreement 1.000 (>= 0.9), mean KL 2.8e-07 (<= 0.01)",
        ),
        Check(
            "(3) GGUF + control vector vs transformers + hooks",
            True,
            "top-1 agreement 1.000 (>= 0.9), mean KL 1.6e-07 (<= 0.01)",
        ),
    ],
    passed=True,
)


def _set(n: int, before: float, after: float) -> SetEvaluation:
    return SetEvaluation(RefusalSummary(n, n, before, 0.0), RefusalSummary(n, n, after, 0.0), [])


EVALUATION = EvaluationReport(
    model="acme/tiny-llama",
    steering="plan.json",
    mode="hooks",
    judge="gpt-oss-20b",
    decoding="greedy",
    max_new_tokens=48,
    band=0.1,
    sets={
        "heldout_sensitive": _set(40, 0.95, 0.05),
        "heldout_harmful": _set(40, 1.0, 0.925),
    },
    kl={"heldout_benign": 0.0312},
)
TUNING = {
    "goal": "remove",
    "baseline": {"sensitive": 0.9, "harmful": 1.0, "benign": 0.0},
    "chosen": {
        "layers": [1, 2],
        "alpha": -0.15,
        "primary": 0.1,
        "guard": 0.95,
        "kl": 0.02,
        "feasible": True,
        "reason": "",
    },
    "trials": 12,
    "prompt_sets": {"sensitive": 30, "harmful": 30, "benign": 30},
    "judge": "pattern",
    "decoding": "greedy",
    "max_new_tokens": 48,
    "band": 0.1,
}


def fixed_plan(folder: Path, *, tuned: bool = True) -> Steering:
    """A WRMD-looking plan over deterministic vectors (hidden 8, 4 layers)."""
    raw = {layer: np.arange(1, 9, dtype=np.float64) * (layer + 1) / 10 for layer in range(4)}
    prov = {
        "position": "last",
        "counts": {"refusal": 120, "compliant": 140, "neutral": 20, "heldout": 52},
        "options": {"lam": 0.1, "lambda_mode": "relative", "covariance": "compliant"},
    }
    vecs = SteeringVectors.from_raw(raw, Fingerprint("llama", 8, 4), method="wrmd", provenance=prov)
    folder.mkdir(parents=True, exist_ok=True)
    vecs.save(folder / "vectors.safetensors")
    extra = {"tuning": TUNING} if tuned else {}
    plan = make_plan(folder / "vectors.safetensors", [1, 2], -0.15, {2: 0.5}, provenance=extra)
    return open_plan_only(plan)


SOURCE = SourceRecord(
    base_model="acme/tiny-llama", name="tiny-llama", license="apache-2.0", language=["en"]
)
FILES = [
    FileEntry("config.json", 716, "a" * 64),
    FileEntry("model-00001-of-00002.safetensors", 811_725, "b" * 64),
    FileEntry("steering/plan.json", 517, "c" * 64),
]


def make_card(tmp: Path, kind: str = "checkpoint", route: str = "bias", **kw: object) -> CardInput:
    steering = fixed_plan(tmp / "plan", tuned=bool(kw.pop("tuned", True)))
    args: dict = dict(
        kind=kind,
        name="tiny-llama-steered",
        source=SOURCE,
        steering=steering,
        route=route,
        steerbake_version="0.1.0",
        files=FILES,
        companion="tiny-llama-steered-GGUF",
    )
    if kind != "gguf":
        args["verify"] = VERIFY_REPORT
    args.update(kw)
    return CardInput(**args)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    expected = path.read_text()
    assert text == expected, (
        f"card differs from {path}; if the change is intended, rerun with "
        "STEERBAKE_UPDATE_GOLDEN=1 and review the diff"
    )


# --------------------------------------------------------------------------- golden
def test_checkpoint_card_matches_golden(tmp_path: Path) -> None:
    card = make_card(tmp_path, evaluation=EVALUATION)
    text = render_card(card)
    assert render_card(card) == text, "rendering is not deterministic"
    check_golden("card_checkpoint.md", text)


def test_control_vector_gguf_card_matches_golden(tmp_path: Path) -> None:
    files = [
        FileEntry("tiny-llama-F16.gguf", 420_000, "d" * 64),
        FileEntry("tiny-llama-steered-control-vector.gguf", 768, "e" * 64),
    ]
    card = make_card(
        tmp_path,
        kind="gguf",
        route="control-vector",
        files=files,
        name="tiny-llama-steered-GGUF",
        companion="tiny-llama-steered",
        control_vector="tiny-llama-steered-control-vector.gguf",
        gguf_verify={"tiny-llama-F16.gguf": GGUF_REPORT},
    )
    text = render_card(card)
    check_golden("card_gguf_control_vector.md", text)
    assert "--control-vector tiny-llama-steered-control-vector.gguf" in text
    assert "--control-vector-scaled tiny-llama-steered-control-vector.gguf:0.5" in text
    assert "llama_set_adapter_cvec" in text


# --------------------------------------------------------------------------- metadata
@pytest.mark.parametrize(
    ("kind", "route", "library", "relation", "tag"),
    [
        ("checkpoint", "bias", "transformers", "finetune", "safetensors"),
        ("adapter", "adapter", "peft", "adapter", "lora"),
        ("gguf", "bias", "llama-cpp-python", "quantized", "gguf"),
        ("gguf", "control-vector", "llama-cpp-python", "quantized", "control-vector"),
    ],
)
def test_metadata_round_trips_through_modelcard_load(
    tmp_path: Path, kind: str, route: str, library: str, relation: str, tag: str
) -> None:
    from huggingface_hub import ModelCard

    files = [FileEntry("tiny-llama-F16.gguf", 420_000, "d" * 64)] if kind == "gguf" else FILES
    card = make_card(
        tmp_path,
        kind=kind,
        route=route,
        files=files,
        control_vector="cv.gguf" if route == "control-vector" else None,
    )
    path = write_card(tmp_path, card)
    loaded = ModelCard.load(path).data.to_dict()
    assert loaded == card_data(card).to_dict()
    assert loaded["base_model"] == "acme/tiny-llama"
    assert loaded["base_model_relation"] == relation
    assert loaded["library_name"] == library
    assert loaded["license"] == "apache-2.0" and loaded["language"] == ["en"]
    assert {"steering", "refusal-steering", tag} <= set(loaded["tags"])
    text = path.read_text()
    assert "{{" not in text and "}}" not in text and "None" not in text
    assert str(tmp_path) not in text, "a local path leaked into the card"


def test_unknown_base_model_is_omitted(tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    source = SourceRecord(base_model=None, name="model")
    path = write_card(tmp_path, make_card(tmp_path, source=source))
    data = ModelCard.load(path).data.to_dict()
    assert "base_model" not in data and "base_model_relation" not in data
    assert "the source model (model)" in path.read_text()


def test_skip_verify_card_says_not_verified(tmp_path: Path) -> None:
    text = render_card(make_card(tmp_path, verify=None))
    assert "**Not verified.**" in text and "--skip-verify" in text
    gguf = render_card(make_card(tmp_path, kind="gguf", files=[], gguf_notes=["x: skipped"]))
    assert "**Not verified in llama.cpp.**" in gguf and "- x: skipped" in gguf


def test_evaluation_from_report_and_from_tuning(tmp_path: Path) -> None:
    with_report = render_card(make_card(tmp_path, evaluation=EVALUATION))
    assert "| heldout_sensitive | 40 | 95.0% | 5.0% |" in with_report
    assert "heldout_benign: 0.0312" in with_report
    assert "| Judge | pattern |" in with_report  # the plan's own record comes first
    tuning_only = render_card(make_card(tmp_path))
    assert "| sensitive | 30 | 90.0% | 10.0% |" in tuning_only
    assert "not held-out" in tuning_only
    neither = render_card(make_card(tmp_path, tuned=False))
    assert "makes no claim about" in neither
    assert "by hand (the plan has no tuning record)" in neither


def test_card_says_when_the_vectors_came_from_labels(tmp_path: Path) -> None:
    card = make_card(tmp_path)
    judged = render_card(card)
    assert "answers were scored by a judge" in judged
    card.steering.plan.provenance["scores_source"] = "labels from categories.jsonl"
    labelled = render_card(card)
    assert "answers were scored by a judge" not in labelled
    assert "fitted on labels from categories.jsonl" in labelled


def test_steering_table_gives_units_and_norms(tmp_path: Path) -> None:
    card = make_card(tmp_path)
    text = render_card(card)
    s2 = card.vectors.scales[2]
    assert f"| 2 | {s2:.4g} | 0.5 | {0.15 * 0.5 * s2:.4g} |" in text
    assert "WRMD" in text and "lambda = 0.1 x trace(Sigma)/d" in text
    assert "| Decoder blocks steered (0-based) | 1-2 (2 of 4) |" in text


# --------------------------------------------------------------------------- source record
def test_source_record_inherits_license_and_language(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"_name_or_path": "acme/from-config"}))
    (src / "README.md").write_text(
        "---\nlicense: other\nlicense_name: acme-license\nlicense_link: LICENSE\n"
        "language:\n- en\n- fr\nbase_model: acme/its-parent\n---\n# card\n"
    )
    rec = source_record(src, str(src), None)
    assert rec.base_model == "acme/from-config"  # never the README's base_model (the parent)
    assert (rec.license, rec.license_name, rec.language) == ("other", "acme-license", ["en", "fr"])
    assert source_record(src, str(src), "org/explicit").base_model == "org/explicit"
    (src / "config.json").write_text("{}")
    unknown = source_record(src, str(src), None)
    assert unknown.base_model is None and unknown.name == "src"
    assert any("--base-model-id" in w for w in unknown.warnings)


def test_source_record_from_hub_cache_path(tmp_path: Path) -> None:
    snap = tmp_path / "hub" / "models--acme--Tiny-1B" / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    rec = source_record(snap, "acme/Tiny-1B", None)
    assert rec.base_model == "acme/Tiny-1B" and rec.name == "Tiny-1B"
    assert source_record(snap, str(snap), None).base_model == "acme/Tiny-1B"


def test_bad_base_model_id(tmp_path: Path) -> None:
    from bake.errors import InputError

    with pytest.raises(InputError, match="ORG/NAME"):
        source_record(tmp_path, str(tmp_path), "not a hub id")


# --------------------------------------------------------------------------- installed wheel
WHEEL_SCRIPT = r"""
import json, sys, tempfile
from pathlib import Path
import numpy as np
import export.publish.cards as cards, model_cards
from bake.artifacts.plan import make_plan
from bake.artifacts.steering import open_plan_only
from bake.artifacts.vectors import SteeringVectors
from bake.model.fingerprint import Fingerprint
from huggingface_hub import ModelCard
tmp = Path(tempfile.mkdtemp())
v = SteeringVectors.from_raw({1: np.ones(8)}, Fingerprint("llama", 8, 4))
v.save(tmp / "v.safetensors")
plan = make_plan(tmp / "v.safetensors", [1], -0.1)
src = cards.SourceRecord("acme/tiny", "tiny", license="mit")
card = cards.CardInput("checkpoint", "tiny-steered", src, open_plan_only(plan), "bias", "9.9.9", [])
path = cards.write_card(tmp, card)
print(json.dumps({"cards": cards.__file__, "templates": model_cards.__file__,
                  "data": ModelCard.load(path).data.to_dict(),
                  "title": "# tiny-steered" in path.read_text()}))
"""


def test_cards_render_from_installed_wheel(tmp_path: Path) -> None:
    """Build the wheel from a copy of the sources, install it into a fresh venv that reuses
    this environment's site-packages (not its editable install), render a card there."""
    import sysconfig

    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for item in ("pyproject.toml", "README.md", "bake", "export", "model_cards"):
        path = REPO / item
        if path.is_dir():
            shutil.copytree(path, src / item, ignore=ignore)
        else:
            shutil.copy2(path, src / item)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(wheels),
            str(src),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("steerbake-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "model_cards/steered_model.md.jinja" in names, "templates missing from the wheel"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    (site / "reuse_dev_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    out = subprocess.run(
        [str(py), "-c", WHEEL_SCRIPT],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["cards"].startswith(str(site)), f"imported from {result['cards']}"
    assert result["templates"].startswith(str(site))
    assert result["data"]["base_model"] == "acme/tiny" and result["data"]["license"] == "mit"
    assert result["title"]
