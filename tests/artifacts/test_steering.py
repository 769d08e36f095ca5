"""The Steering object (a plan bound to its vectors and model, checked once), the stages
that take it refusing a plan for another model, and `export --dry-run` listing exactly what
the export writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bake.artifacts.steering import Steering, open_plan_only, open_steering
from bake.errors import InputError, PlanMismatchError
from bake.files.tensor_bytes import round_to
from bake.model.checkpoint import open_checkpoint
from tests.conftest import run_cli, tree_digest
from tests.pipeline import plan_vectors
from tests.stages.test_bake import make_plan_for


def test_added_and_rounded_vectors(llama_tied_bf16_sharded_dir: Path, tmp_path: Path) -> None:
    plan = make_plan_for(
        llama_tied_bf16_sharded_dir, tmp_path, [1, 3], -0.3, layer_multipliers={3: 0.5}
    )
    steering = open_steering(llama_tied_bf16_sharded_dir, plan)
    want = plan_vectors(plan)  # computed independently from the plan and vector file
    assert sorted(steering.added) == [1, 3] and steering.rounding == "BF16"
    for layer, v in want.items():
        np.testing.assert_allclose(steering.added[layer], v, rtol=0, atol=0)
        assert steering.rounded[layer].dtype == np.float32
        np.testing.assert_array_equal(steering.rounded[layer], round_to(v, "BF16"))
    with pytest.raises(TypeError):
        steering.added[1] = np.zeros(4)  # type: ignore[index]  # read-only


def test_candidates_vary_in_memory_and_are_checked(llama_dir: Path, tmp_path: Path) -> None:
    steering = open_steering(llama_dir, make_plan_for(llama_dir, tmp_path, [1], -0.3))
    vectors_file = steering.vectors_file
    vectors_file.rename(vectors_file.with_suffix(".gone"))  # nothing may be reopened
    other = steering.with_config([0, 2], 0.5, provenance={"note": "candidate"})
    assert other.layers == [0, 2] and other.plan.alpha == 0.5
    assert other.plan.provenance["note"] == "candidate" and "method" in other.plan.provenance
    np.testing.assert_allclose(other.added[2], 0.5 * steering.vectors.vector(2))
    with pytest.raises(InputError, match="out of range"):
        steering.with_config([99], 0.1)
    with pytest.raises(InputError, match="not finite"):
        steering.with_config([1], 1e39)


def test_opening_checks_the_vector_file(llama_dir: Path, tmp_path: Path) -> None:
    plan = make_plan_for(llama_dir, tmp_path, [1], -0.3)
    (tmp_path / "vectors.safetensors").write_bytes(b"changed")
    with pytest.raises(PlanMismatchError, match="changed since the plan was written"):
        open_steering(llama_dir, plan)


def test_plan_only_steering_rounds_to_f32(qwen3_dir: Path, tmp_path: Path) -> None:
    plan = make_plan_for(qwen3_dir, tmp_path, [1], -0.3)
    steering = open_plan_only(plan)
    assert isinstance(steering, Steering) and steering.rounding == "F32"
    assert steering.model.fingerprint == open_checkpoint(qwen3_dir).fingerprint


@pytest.mark.parametrize(
    "command",
    [
        ["evaluate", "{model}", "--plan", "{plan}", "--prompts", "{prompts}"],
        ["bake", "{model}", "{plan}", "-o", "{out}"],
        ["verify", "{model}", "{plan}", "{out}"],
        ["export", "{model}", "{plan}", "-o", "{out}", "--skip-verify"],
        ["cvec", "{plan}", "-o", "{out}.gguf", "--model", "{model}"],
        ["gguf", "{model}", "--plan", "{plan}", "-o", "{out}.gguf"],
    ],
    ids=lambda c: c[0],
)
def test_a_plan_for_another_model_is_refused_in_one_line(
    command: list[str], qwen3_dir: Path, llama_dir: Path, tmp_path: Path
) -> None:
    plan = make_plan_for(qwen3_dir, tmp_path / "plan", [1], -0.3)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "hello"}) + "\n")
    values = {"model": str(llama_dir), "plan": str(plan), "prompts": str(prompts)}
    values["out"] = str(tmp_path / "out")
    proc = run_cli(*[part.format(**values) for part in command])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "another model" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- dry run
def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _forbid_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to load, map, copy or convert the model's weights fails the dry run (the
    plan's small vector file may be read: it is how the steering is checked)."""
    import sys

    import transformers

    import bake.files.shards as shards
    import export.llamacpp.cvec
    import export.llamacpp.writer
    import export.publish.build  # noqa: F401  # loaded now, so their names get patched

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("the dry run touched weights")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    monkeypatch.setattr(shards.MappedShards, "__init__", boom)
    # wherever a module holds the copying and writing functions (imported by name)
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in ("bake", "export"):
            for attr in ("copy_hashed", "fast_copy", "StreamWriter", "write_gguf"):
                if hasattr(module, attr):
                    monkeypatch.setattr(module, attr, boom)


@pytest.mark.parametrize(
    ("fixture", "extra"),
    [("llama_dir", ["--gguf-types", "F32,Q8_0"]), ("qwen3_dir", [])],
    ids=["bias-route", "adapter-route"],
)
def test_dry_run_lists_exactly_what_the_export_writes(
    fixture: str,
    extra: list[str],
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from click.testing import CliRunner

    from export.cli import main

    model: Path = request.getfixturevalue(fixture)
    plan = make_plan_for(model, tmp_path / "plan", [1, 2], -0.3)
    evaluation = tmp_path / "evaluation.json"
    evaluation.write_text(json.dumps(_evaluation()))
    out = tmp_path / "out"
    args = ["export", str(model), str(plan), "-o", str(out), "--name", "m", *extra]
    args += ["--eval-report", str(evaluation), "--base-model-id", "acme/tiny"]
    before = tree_digest(tmp_path)
    with monkeypatch.context() as patched:
        _forbid_weights(patched)
        dry = CliRunner().invoke(main, [*args, "--dry-run"], catch_exceptions=False)
    assert dry.exit_code == 0, dry.output
    assert tree_digest(tmp_path) == before and not out.exists(), "the dry run wrote something"
    listed: dict[str, list[str]] = {}
    for line in dry.output.splitlines():
        if line.startswith(str(out)):
            folder = line.split("/  (")[0]
            listed[folder] = []
        elif line.startswith("  ") and listed:
            listed[folder].append(line.strip())
    run_cli(*args, check=True)
    written = {str(out / d.name): _files(d) for d in sorted(out.iterdir())}
    assert listed == written, f"dry run {listed}\nwritten {written}"


def _evaluation() -> dict:
    summary = {"n": 2, "scored": 2, "refusal_rate": 0.5, "compliance_rate": 0.5}
    return {
        "model": "m",
        "steering": "plan.json",
        "mode": "hooks",
        "judge": "pattern-2",
        "decoding": "greedy",
        "max_new_tokens": 8,
        "band": 0.1,
        "sets": {"benign": {"before": summary, "after": summary, "samples": []}},
        "kl": {"benign": 0.01},
    }
