"""Stage 1's forward passes are the model's own: replaying from a block with the shared
prefix run once gives the full forward's logits under the same hooks, and the proxies read
them as defined (bake.runtime.replay, bake.runtime.proxy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bake.runtime.hooks import add_to_blocks
from bake.runtime.proxy import (
    greedy_margin,
    kl_along,
    kl_set,
    prompt_ids,
    refusal_probability,
    scored_set,
)
from bake.runtime.replay import Replay, ReplayMismatch, shared_prefix

PROMPTS = ["How do I bake bread?", "Tell me a story about a cat.", "Why is the sky blue?"]


@pytest.fixture(scope="module")
def model_tok(llama_dir: Path) -> tuple[Any, Any]:
    from bake.runtime.loader import load_model_and_tokenizer

    return load_model_and_tokenizer(llama_dir, "float32", "cpu")


def _vectors(model: Any, layers: list[int], size: float = 2.0) -> dict[int, np.ndarray]:
    d = model.config.hidden_size
    rng = np.random.default_rng(0)
    return {layer: size * rng.normal(size=d).astype(np.float32) for layer in layers}


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    diff = (got - want).abs()
    scale = float(want.abs().max())
    assert float(diff.max()) <= 1e-4 * scale, (
        f"{what}: max |delta logit| {float(diff.max()):.3g}, mean {float(diff.mean()):.3g}, "
        f"logit scale {scale:.3g}"
    )


def test_shared_prefix_leaves_every_row_a_token() -> None:
    assert shared_prefix([[1, 2, 3], [1, 2, 4, 5]]) == 2
    assert shared_prefix([[1, 2], [1, 2, 3]]) == 1
    assert shared_prefix([[7], [8, 9]]) == 0


@pytest.mark.parametrize("start", [0, 1, 2])
def test_replay_from_a_block_equals_the_full_forward(
    model_tok: tuple[Any, Any], start: int
) -> None:
    model, tok = model_tok
    rows = [[*ids, 5, 6, 7] for ids in prompt_ids(tok, PROMPTS)]
    replay = Replay(model, rows, keep=4, pad_id=0, starts=[1, 2])
    assert replay.prefix.shape[1] > 0, "the chat template gives the rows a shared prefix"
    _close(replay.logits(start), replay.full_logits(), f"unsteered from block {start}")
    vectors = _vectors(model, [start, start + 1])
    with add_to_blocks(model, vectors):
        got, want = replay.logits(start), replay.full_logits()
    _close(got, want, f"steered at {start}, {start + 1}, replayed from {start}")
    assert float((want - replay.base).abs().max()) > 1e-2, "the steering moved the logits"


def test_replay_without_a_shared_prefix(model_tok: tuple[Any, Any]) -> None:
    model, _ = model_tok
    rows = [[3, 4, 5, 6], [9, 4, 5], [11, 12, 13, 14, 15]]
    replay = Replay(model, rows, keep=2, pad_id=0, starts=[2])
    assert replay.prefix.shape[1] == 0
    with add_to_blocks(model, _vectors(model, [2])):
        _close(replay.logits(2), replay.full_logits(), "no prefix")


def test_replay_check_refuses_a_mismatch(model_tok: tuple[Any, Any]) -> None:
    model, tok = model_tok
    replay = Replay(model, prompt_ids(tok, PROMPTS), keep=1, pad_id=0, starts=[1])
    assert replay.check(1e-3) < 1e-3
    replay.states[1] = replay.states[1] + 1.0  # a family whose blocks do not compose
    with pytest.raises(ReplayMismatch, match="do not compose"):
        replay.check(1e-3)


def _greedy_heads(model: Any, tok: Any, n: int) -> list[tuple[int, ...]]:
    """The first n tokens each prompt's greedy answer starts with."""
    heads = []
    for ids in prompt_ids(tok, PROMPTS):
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=0)
        heads.append(tuple(out[0, len(ids) :].tolist()))
    return heads


def test_greedy_margin_says_whether_greedy_decoding_opens_with_the_opening(
    model_tok: tuple[Any, Any],
) -> None:
    model, tok = model_tok
    heads = _greedy_heads(model, tok, 3)
    s = scored_set(model, tok, PROMPTS, [heads[0]])
    margin = greedy_margin(s, s.replay.base)
    assert margin[0] > 0.5, "prompt 0's own greedy opening"
    for i, head in enumerate(heads[1:], 1):
        assert (margin[i] > 0.5) == (head == heads[0]), (i, head, heads[0], margin[i])
    other = scored_set(model, tok, PROMPTS, [(heads[0][0], heads[0][1], heads[0][2] + 1)])
    assert greedy_margin(other, other.replay.base)[0] < 0.5, "one token off the greedy path"


def test_opening_probability_is_the_product_of_teacher_forced_probabilities(
    model_tok: tuple[Any, Any],
) -> None:
    model, tok = model_tok
    openings = [(5, 6, 7), (5, 8, 9)]
    s = scored_set(model, tok, PROMPTS, openings)
    got = refusal_probability(s, s.replay.base)
    for i, ids in enumerate(prompt_ids(tok, PROMPTS)):
        want = 0.0
        for o in openings:
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ids + list(o)])).logits[0], -1)
            want += float(np.exp(sum(float(logp[len(ids) - 1 + t, o[t]]) for t in range(3))))
        assert got[i] == pytest.approx(want, rel=1e-4)


def test_kl_along_the_answer(model_tok: tuple[Any, Any]) -> None:
    model, tok = model_tok
    answers = [(5, 6, 7, 8), (9,), ()]
    s = kl_set(model, tok, PROMPTS, answers, starts=[1])
    first, along = kl_along(s, s.replay.base)
    assert np.all(first == 0) and np.all(along == 0)
    with add_to_blocks(model, _vectors(model, [1])):
        logits = s.replay.logits(1)
    first, along = kl_along(s, logits)
    ids = prompt_ids(tok, PROMPTS)[0] + [5, 6, 7, 8]
    with torch.no_grad():
        base = torch.log_softmax(model(torch.tensor([ids])).logits[0, -5:].double(), -1)
        with add_to_blocks(model, _vectors(model, [1])):
            steered = torch.log_softmax(model(torch.tensor([ids])).logits[0, -5:].double(), -1)
    kl = (base.exp() * (base - steered)).sum(-1)
    assert first[0] == pytest.approx(float(kl[0]), rel=1e-3)
    assert along[0] == pytest.approx(float(kl.mean()), rel=1e-3)
    assert along[2] == first[2], "an empty answer: the first position only"
