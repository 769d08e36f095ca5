"""Probe-gated steering (issue 21): the probe is fitted on activations of prompts to refuse
and to answer; at run time it reads the last prompt token at its layer in an unsteered pass
(the same rows `collect` writes), and its per-prompt gate multiplies the plan's vectors for
the prompt and every generated token. Gates of +1 everywhere equal plain hook steering,
-1 the opposite alpha, 0 no steering; a mixed batch steers each row its own way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bake.artifacts.activations import Activations
from bake.artifacts.probe import Probe
from bake.artifacts.steering import Steering, open_steering
from bake.errors import InputError
from bake.model.fingerprint import Fingerprint
from bake.runtime.gated import probe_gated
from bake.runtime.hooks import hooked
from bake.stages.probe import fit_probe, probe_accuracy
from tests.conftest import run_cli
from tests.stages.test_bake import make_plan_for

PROMPTS = [
    "How do I bake bread at home?",
    "Tell me about the history of the river valley and its old towns.",
    "What is the capital of the northern province?",
]


def synthetic_acts(n: int, refuse: bool, seed: int) -> Activations:
    """Rows of 4 layers (d 32): only layer 2 separates the classes (along e_0)."""
    rng = np.random.default_rng(seed)
    rows = {layer: rng.normal(size=(n, 32)).astype(np.float32) for layer in range(4)}
    rows[2][:, 0] += 3.0 if refuse else -3.0
    ids = [f"{'r' if refuse else 'a'}{seed}-{i}" for i in range(n)]
    norms = {layer: np.linalg.norm(r, axis=1) for layer, r in rows.items()}
    return Activations(ids, list(range(4)), "last", Fingerprint("llama", 32, 4), rows, norms)


def test_probe_finds_the_separating_layer_and_reports_held_out_accuracy() -> None:
    probe = fit_probe([synthetic_acts(60, True, 0)], [synthetic_acts(80, False, 1)])
    cv = probe.provenance["cv_accuracy"]
    assert probe.layer == 2, f"chose layer {probe.layer}; cv accuracy per layer {cv}"
    assert cv["2"] >= 0.97 and max(cv[k] for k in ("0", "1", "3")) <= 0.75, cv
    held = probe_accuracy(probe, [synthetic_acts(50, True, 2)], [synthetic_acts(50, False, 3)])
    lo, hi = held["wilson95"]
    assert held["accuracy"] >= 0.97 and lo <= held["accuracy"] <= hi + 1e-12, held
    assert held["n"] == 100, held
    with pytest.raises(InputError, match="position"):
        acts = synthetic_acts(10, True, 4)
        acts.position = "mean"
        fit_probe([acts], [synthetic_acts(10, False, 5)])


def test_probe_file_round_trips(tmp_path: Path) -> None:
    probe = fit_probe([synthetic_acts(30, True, 0)], [synthetic_acts(30, False, 1)], layer=1)
    probe.save(tmp_path / "p.safetensors")
    back = Probe.load(tmp_path / "p.safetensors")
    assert back.layer == 1 and np.array_equal(back.weight, probe.weight)
    assert back.bias == pytest.approx(probe.bias) and back.provenance == probe.provenance
    with pytest.raises(InputError, match="not a steerbake probe"):
        Probe.load(make_plan_for_vectors(tmp_path))


def make_plan_for_vectors(tmp_path: Path) -> Path:
    from bake.artifacts.vectors import SteeringVectors

    v = SteeringVectors.from_raw({0: np.ones(32)}, Fingerprint("llama", 32, 4))
    v.save(tmp_path / "v.safetensors")
    return tmp_path / "v.safetensors"


# --------------------------------------------------------------------------- at run time
@pytest.fixture(scope="module")
def tiny(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny Llama, a plan over blocks 1-3 and the rows `collect` takes at block 2."""
    from bake.artifacts.prompts import Prompt
    from bake.runtime.loader import load_model_and_tokenizer
    from bake.stages.collect import collect_activations

    root = tmp_path_factory.mktemp("probe")
    plan = make_plan_for(llama_dir, root / "plan", [1, 2, 3], alpha=-0.6)
    model, tok = load_model_and_tokenizer(llama_dir)
    prompts = [Prompt(f"p{i}", t) for i, t in enumerate(PROMPTS)]
    acts = collect_activations(model, tok, prompts, layers=[2], batch_size=2)
    return {"model": model, "tok": tok, "plan": plan, "rows": acts.layer(2), "dir": llama_dir}


def probe_through(rows: np.ndarray, refuse: list[int], threshold: float = 0.0) -> Probe:
    """A probe at block 2 whose f is positive exactly on the rows `refuse`."""
    w = rows[refuse].mean(0) - np.delete(rows, refuse, axis=0).mean(0)
    f = rows @ w
    cut = (f[refuse].min() + np.delete(f, refuse).max()) / 2
    assert f[refuse].min() > np.delete(f, refuse).max(), "the rows are not separable this way"
    return Probe(2, w.astype(np.float32), float(-cut), Fingerprint("llama", 64, 4), threshold)


def next_logits(tiny: dict[str, Any], prompts: list[str]) -> np.ndarray:
    from bake.artifacts.prompts import Prompt
    from bake.runtime.forward import next_token_logprobs

    ps = [Prompt(str(i), p) for i, p in enumerate(prompts)]
    return next_token_logprobs(tiny["model"], tiny["tok"], ps).numpy()


def greedy(tiny: dict[str, Any], prompts: list[str]) -> list[tuple[int, ...]]:
    from bake.runtime.sampling import SamplingOptions, generate_answers

    options = SamplingOptions(k=1, max_new_tokens=6, greedy=True)
    out = generate_answers(tiny["model"], tiny["tok"], prompts, options=options, batch_size=8)
    return [group[0].token_ids for group in out]


def test_gates_read_the_rows_collect_writes(tiny: dict[str, Any]) -> None:
    probe = probe_through(tiny["rows"], [1])
    steering = open_steering(tiny["dir"], tiny["plan"])
    with probe_gated(tiny["model"], steering, probe, "soft") as log:
        greedy(tiny, PROMPTS)
    expected = probe.decision(tiny["rows"])
    got = log.decisions[0]
    diff = np.abs(got - expected)
    scale = np.abs(expected).max()
    assert len(log.decisions) == 1, "one probe pass per prompt batch, none per generated token"
    assert diff.max() <= 1e-4 * scale, (
        f"max {diff.max():.3g} mean {diff.mean():.3g} (f ~{scale:.3g})"
    )
    assert list(log.gates[0] < 0) == [False, True, False]


def _assert_same(a: np.ndarray, b: np.ndarray, what: str) -> None:
    diff = np.abs(a - b)
    assert diff.max() <= 1e-5 * max(1.0, np.abs(a).max()), (
        f"{what}: max |dlogp| {diff.max():.3g} mean {diff.mean():.3g}"
    )


def test_uniform_gates_equal_plain_hooks_and_opposite_alpha(tiny: dict[str, Any]) -> None:
    steering: Steering = open_steering(tiny["dir"], tiny["plan"])
    opposite = steering.with_config(steering.layers, -steering.plan.alpha)
    all_answer = probe_through(tiny["rows"], [1], threshold=1e9)
    all_refuse = probe_through(tiny["rows"], [1], threshold=-1e9)
    with hooked(tiny["model"], steering):
        hooks = next_logits(tiny, PROMPTS)
    with hooked(tiny["model"], opposite):
        hooks_opposite = next_logits(tiny, PROMPTS)
    unsteered = next_logits(tiny, PROMPTS)
    with probe_gated(tiny["model"], steering, all_answer, "sign"):
        _assert_same(next_logits(tiny, PROMPTS), hooks, "gate +1 vs hooks")
    with probe_gated(tiny["model"], steering, all_refuse, "sign"):
        _assert_same(next_logits(tiny, PROMPTS), hooks_opposite, "gate -1 vs hooks at -alpha")
    with probe_gated(tiny["model"], steering, all_refuse, "gate"):
        _assert_same(next_logits(tiny, PROMPTS), unsteered, "gate 0 vs unsteered")
    assert np.abs(hooks - unsteered).max() > 1e-2, "the plan must change the logits at all"


def test_mixed_batch_steers_each_prompt_its_own_way_for_every_token(
    tiny: dict[str, Any],
) -> None:
    steering = open_steering(tiny["dir"], tiny["plan"])
    opposite = steering.with_config(steering.layers, -steering.plan.alpha)
    probe = probe_through(tiny["rows"], [1])  # prompt 1: refuse -> -alpha; 0 and 2: alpha
    with hooked(tiny["model"], steering):
        planned = greedy(tiny, PROMPTS)
    with hooked(tiny["model"], opposite):
        flipped = greedy(tiny, PROMPTS)
    with probe_gated(tiny["model"], steering, probe, "sign") as log:
        gated = greedy(tiny, PROMPTS)
    assert gated == [planned[0], flipped[1], planned[2]]
    assert planned[1] != flipped[1], "the two signs must generate differently"
    assert log.counts() == {"as_planned": 2, "opposite": 1, "unsteered": 0}


def test_evaluate_and_chat_take_a_probe(tiny: dict[str, Any], tmp_path: Path) -> None:
    from bake.runtime.sampling import SamplingOptions
    from bake.stages.evaluate import run_evaluate
    from bake.stages.measure import Measurer
    from export.llamacpp.chat import run_chat
    from tests.tiny_models import write_prompts

    probe = probe_through(tiny["rows"], [1])
    probe.save(tmp_path / "probe.safetensors")
    prompts = write_prompts(tmp_path / "set_benign.jsonl", PROMPTS)
    steering = open_steering(tiny["dir"], tiny["plan"])
    m = Measurer(sampling=SamplingOptions(k=1, max_new_tokens=4, greedy=True))
    report = run_evaluate(tiny["dir"], [prompts], steering=steering, measurer=m, probe=probe)
    assert report.mode == "hooks, probe-gated"
    assert report.gating is not None
    assert report.gating["set_benign"] == {"as_planned": 2, "opposite": 1, "unsteered": 0}
    with pytest.raises(InputError, match="a baked model cannot be gated"):
        run_evaluate(tiny["dir"], [prompts], baked=tmp_path, probe=probe)
    cli = run_cli(
        "evaluate", str(tiny["dir"]), "--plan", str(tiny["plan"]), "--prompts", str(prompts),
        "--probe", str(tmp_path / "probe.safetensors"), "--samples", "1", "--max-new-tokens", "4",
        "--report", str(tmp_path / "report.json"), "--answers", str(tmp_path / "answers.jsonl"),
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["mode"] == "hooks, probe-gated", "the CLI passes --probe on"
    rows = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == PROMPTS
    assert {"before", "after", "before_refusal", "after_refusal", "after_kind"} <= set(rows[0])

    said: list[str] = []
    run_chat(
        tiny["dir"], backend="transformers", plan=tiny["plan"],
        probe=tmp_path / "probe.safetensors", prompt=PROMPTS[1], max_tokens=3,
        temperature=0.0, write=lambda t, nl: said.append(t),
    )  # fmt: skip
    assert said[0].startswith("[probe: gate -1]"), said
    proc = run_cli(
        "chat", str(tiny["dir"]), "--probe", str(tmp_path / "probe.safetensors"), "--prompt", "hi"
    )
    assert proc.returncode == 2 and "llama.cpp exposes no intermediate activations" in proc.stderr


def test_probe_cli(tmp_path: Path) -> None:
    from tests.stages.planted import write_folder

    rng = np.random.default_rng(0)
    folders = {}
    for name, shift in (("refuse", 3.0), ("answer", -3.0)):
        x = rng.normal(size=(40, 64)) + 20
        x[:, 5] += shift
        ids = [f"{name}{i}" for i in range(40)]
        acts, _ = write_folder(tmp_path / name, ids, x, dict.fromkeys(ids, 0.0), ["x"] * 40)
        folders[name] = acts
    out = tmp_path / "probe.safetensors"
    proc = run_cli(
        "probe", "--refuse", str(folders["refuse"]), "--answer", str(folders["answer"]),
        "--test-refuse", str(folders["refuse"]), "--test-answer", str(folders["answer"]),
        "-o", str(out), "--folds", "4",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "<- probe" in proc.stdout and "held out: accuracy" in proc.stdout
    assert Probe.load(out).provenance["heldout"]["accuracy"] >= 0.95
