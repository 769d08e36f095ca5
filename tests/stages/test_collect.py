"""collect on tiny models: rows equal a direct forward pass, whatever the batching and
padding; the template and mean positions; the activation folder; the CLI and bad input.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bake.artifacts.activations import ActivationSet
from bake.artifacts.prompts import Prompt
from bake.errors import InputError, SteerbakeError
from bake.runtime.chat import chat_text
from bake.runtime.hooks import decoder_blocks
from bake.stages.collect import collect_activations, load_model, write_activations
from tests.conftest import run_cli
from tests.tiny_models import write_prompts

TEXTS = [
    "hi",
    "How do I bake bread at home with simple flour and water?",
    "Tell me about the river valley.",
    "What is the capital of the northern province, and why?",
    "x",
    "Explain how a steering vector changes the hidden states of a model.",
    "The quick brown fox",
]
PROMPTS = [Prompt(f"p{i}", t) for i, t in enumerate(TEXTS)]


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def loaded(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    folder = request.getfixturevalue(f"{request.param}_dir")
    model, tok, _ = load_model(str(folder))
    return model, tok


def direct(model: Any, tok: Any, text: str) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One prompt alone, no padding: block outputs (s, d) per layer from
    output_hidden_states (hidden_states[l + 1] is block l's output, except the last entry,
    which has the final norm applied) and that last, normed entry."""
    ids = tok(chat_text(tok, text), add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    n = len(decoder_blocks(model))
    return [hs[layer + 1][0] for layer in range(n - 1)], hs[n][0]


def final_norm(model: Any) -> Any:
    return model.model.norm


def report(a: np.ndarray, b: np.ndarray) -> str:
    diff = np.abs(a - b)
    return f"max diff {diff.max():.3g}, mean {diff.mean():.3g}"


def test_rows_match_a_direct_forward_pass(loaded: tuple[Any, Any]) -> None:
    model, tok = loaded
    acts = collect_activations(model, tok, PROMPTS, batch_size=3)
    n = len(acts.layers)
    for k, p in enumerate(PROMPTS):
        blocks, normed_last = direct(model, tok, p.text)
        for layer in range(n - 1):
            want = blocks[layer][-1].numpy()
            got = acts.rows[layer][k]
            assert np.allclose(got, want, atol=1e-4), f"{p.id} layer {layer}: {report(got, want)}"
            assert acts.row_norms[layer][k] == pytest.approx(np.linalg.norm(want), rel=1e-5)
        # the last block: its row, through the final norm, is the last hidden state
        with torch.no_grad():
            got = final_norm(model)(torch.from_numpy(acts.rows[n - 1][k])).numpy()
        want = normed_last[-1].numpy()
        assert np.allclose(got, want, atol=1e-4), f"{p.id} last layer: {report(got, want)}"


def test_padding_side_and_batch_size_do_not_change_rows(loaded: tuple[Any, Any]) -> None:
    model, tok = loaded
    base = collect_activations(model, tok, PROMPTS, batch_size=1)
    for kw in (
        {"batch_size": 4, "padding_side": "left"},
        {"batch_size": 4, "padding_side": "right"},
        {"batch_size": 7, "padding_side": "left"},
    ):
        other = collect_activations(model, tok, PROMPTS, **kw)
        assert other.ids == base.ids
        for layer in base.layers:
            a, b = other.rows[layer], base.rows[layer]
            assert np.allclose(a, b, atol=1e-4), f"{kw} layer {layer}: {report(a, b)}"


def test_template_and_mean_positions(loaded: tuple[Any, Any]) -> None:
    model, tok = loaded
    # the tiny template closes the user turn with "<|end|><|assistant|>": two tokens
    n_template = len(tok("<|end|><|assistant|>", add_special_tokens=False).input_ids)
    assert n_template == 2
    template = collect_activations(model, tok, PROMPTS, position="template", batch_size=3)
    mean = collect_activations(
        model, tok, PROMPTS, position="mean", batch_size=3, padding_side="right"
    )
    for k, p in enumerate(PROMPTS):
        blocks, _ = direct(model, tok, p.text)
        for layer in range(len(blocks)):
            h = blocks[layer].numpy()  # (s, d)
            for acts, span in ((template, h[-n_template:]), (mean, h)):
                got, want = acts.rows[layer][k], span.mean(0)
                assert np.allclose(got, want, atol=1e-4), (
                    f"{acts.position} {p.id} layer {layer}: {report(got, want)}"
                )
                want_norm = np.linalg.norm(span, axis=1).mean()
                assert acts.row_norms[layer][k] == pytest.approx(want_norm, rel=1e-5)


def test_template_position_needs_a_chat_template(loaded: tuple[Any, Any]) -> None:
    model, tok = loaded
    bare = copy.deepcopy(tok)
    bare.chat_template = None
    with pytest.raises(InputError, match="needs a chat template"):
        collect_activations(model, bare, PROMPTS, position="template")
    acts = collect_activations(model, bare, PROMPTS[:2], layers=[0])  # last still works
    ids = bare(PROMPTS[1].text, return_tensors="pt").input_ids
    with torch.no_grad():
        want = model(input_ids=ids, output_hidden_states=True).hidden_states[1][0, -1]
    assert np.allclose(acts.rows[0][1], want.numpy(), atol=1e-4)


def test_a_layer_subset_equals_the_full_run(loaded: tuple[Any, Any]) -> None:
    model, tok = loaded
    full = collect_activations(model, tok, PROMPTS[:3])
    part = collect_activations(model, tok, PROMPTS[:3], layers=[1])
    assert part.layers == [1]
    assert np.array_equal(part.rows[1], full.rows[1])


def test_folder_streams_shards_in_id_order(loaded: tuple[Any, Any], tmp_path: Path) -> None:
    model, tok = loaded
    d = model.config.hidden_size
    out = write_activations(
        model,
        tok,
        PROMPTS,
        tmp_path / "acts",
        batch_size=3,
        shard_bytes=2 * 4 * d * 4,
        source="tiny",
    )  # 2 rows per shard
    assert len(out.index["shards"]) == 4
    assert out.ids == [p.id for p in PROMPTS]
    again = ActivationSet.open(tmp_path / "acts")
    mem = collect_activations(model, tok, PROMPTS, batch_size=3)
    for layer in mem.layers:
        assert np.array_equal(again.layer(layer), mem.rows[layer])
        assert np.array_equal(again.norms(layer), mem.row_norms[layer])
    index = json.loads((tmp_path / "acts" / "index.json").read_text())
    assert index["position"] == "last" and index["dtype"] == "float32"
    assert index["model"]["hidden_size"] == d and index["model"]["source"] == "tiny"
    assert index["compute_dtype"] == "float32"
    assert not list(tmp_path.glob(".steerbake-tmp-*"))


def test_nan_activations_fail_with_a_fix(llama_dir: Path) -> None:
    model, tok, _ = load_model(str(llama_dir))
    with torch.no_grad():
        decoder_blocks(model)[1].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(SteerbakeError, match=r"NaN/Inf at block 1 .* --dtype float32"):
        collect_activations(model, tok, PROMPTS[:2])


def test_cli_collect_then_fit(llama_dir: Path, tmp_path: Path) -> None:
    texts = [f"{t} ({i})" for i in range(4) for t in TEXTS[:5]]
    prompts = write_prompts(tmp_path / "prompts.jsonl", texts)
    acts = tmp_path / "acts"
    proc = run_cli(
        "collect",
        str(llama_dir),
        str(prompts),
        "-o",
        str(acts),
        "--layers",
        "1-2",
        "--batch-size",
        "6",
        "--position",
        "template",
        check=True,
    )
    assert "20 prompts" in proc.stdout, proc.stdout
    stored = ActivationSet.open(acts)
    assert stored.layers == [1, 2] and stored.position == "template"
    scores = tmp_path / "scores.jsonl"
    scores.write_text(
        "".join(
            json.dumps({"id": f"p{i}", "score": 0.8 if i % 2 else -0.7}) + "\n" for i in range(20)
        )
    )
    out = tmp_path / "v.safetensors"
    proc = run_cli("fit", str(acts), str(scores), "-o", str(out), "--min-set-size", "4", check=True)
    assert "pearson_r" in proc.stdout
    again = run_cli("collect", str(llama_dir), str(prompts), "-o", str(acts))
    assert again.returncode == 2 and "--overwrite" in again.stderr, again.stderr


@pytest.mark.parametrize(
    "content,match",
    [
        ("", "is empty"),
        ('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', "duplicate prompt id 'a'"),
    ],
)
def test_cli_bad_prompt_files(llama_dir: Path, tmp_path: Path, content: str, match: str) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(content)
    proc = run_cli("collect", str(llama_dir), str(prompts), "-o", str(tmp_path / "acts"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and match in lines[0], proc.stderr
    assert not (tmp_path / "acts").exists()


def test_bad_layers_and_options(loaded: tuple[Any, Any]) -> None:
    model, tok = loaded
    with pytest.raises(InputError, match="out of range"):
        collect_activations(model, tok, PROMPTS, layers=[99])
    with pytest.raises(InputError, match="duplicate id"):
        collect_activations(model, tok, [PROMPTS[0], PROMPTS[0]])
    with pytest.raises(InputError, match="empty"):
        collect_activations(model, tok, [])
    with pytest.raises(InputError, match="unknown position"):
        collect_activations(model, tok, PROMPTS, position="first")


def test_device_map_auto_loads_and_matches(llama_dir: Path) -> None:
    """device_map='auto' (accelerate) places the model itself; on a CPU-only machine it
    must give the same rows as a plain load."""
    plain, tok, _ = load_model(str(llama_dir))
    mapped, _, _ = load_model(str(llama_dir), dtype="float32", device_map="auto")
    a = collect_activations(plain, tok, PROMPTS[:3])
    b = collect_activations(mapped, tok, PROMPTS[:3])
    for layer in a.layers:
        assert np.allclose(a.rows[layer], b.rows[layer], atol=1e-5), report(
            a.rows[layer], b.rows[layer]
        )
