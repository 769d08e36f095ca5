"""`steerbake generate`: K sampled answers with mean token log-probs, resumable.

The log-probs are checked against an independent forward pass over prompt + answer; padding
side and batch composition must not change greedy results; a rerun skips finished prompts
and drops a partially written last line; bad prompt files fail with one line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bake.artifacts.answers import read_answers
from bake.errors import InputError
from bake.runtime.chat import chat_text
from bake.runtime.sampling import (
    SamplingOptions,
    TransformersBackend,
    answer_start,
    generate_answers,
    make_sample,
)
from bake.stages.generate import run_generate
from tests.conftest import run_cli
from tests.tiny_models import write_prompts

PROMPTS = [
    "How do I bake bread?",
    "Tell me about the history of the river valley and its old towns, please.",
    "What is the capital?",
]


@pytest.fixture(scope="module")
def loaded(llama_dir: Path) -> tuple[object, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    return model, AutoTokenizer.from_pretrained(llama_dir)


def _recomputed_mean_logprob(
    model: object, tok: object, prompt: str, ids: tuple[int, ...]
) -> float:
    """mean_t log p(a_t | prompt, a_<t) from one unpadded forward pass over prompt + answer."""
    import torch

    prompt_ids = tok(chat_text(tok, prompt), add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    full = torch.tensor([prompt_ids + list(ids)])
    with torch.no_grad():
        logits = model(full).logits[0].float()  # type: ignore[operator]  # (T, vocab)
    logprobs = torch.log_softmax(logits, dim=-1)
    # the token at position p is predicted by the logits at position p - 1
    picked = [logprobs[len(prompt_ids) + t - 1, tok_id].item() for t, tok_id in enumerate(ids)]
    return sum(picked) / len(picked)


def test_mean_logprob_matches_a_forward_pass(loaded: tuple[object, object]) -> None:
    model, tok = loaded
    options = SamplingOptions(k=3, max_new_tokens=8, seed=1)
    answers = generate_answers(model, tok, PROMPTS, options=options, batch_size=4)
    assert [len(a) for a in answers] == [3, 3, 3]
    diffs = []
    for prompt, samples in zip(PROMPTS, answers, strict=True):
        assert len({s.token_ids for s in samples}) > 1, "temperature-1 samples all identical"
        for s in samples:
            assert s.n_tokens == len(s.token_ids) > 0 and not s.flagged
            assert s.mean_logprob is not None
            diffs.append(
                abs(s.mean_logprob - _recomputed_mean_logprob(model, tok, prompt, s.token_ids))
            )
    assert max(diffs) < 1e-4, f"max diff {max(diffs):.2e}, mean {sum(diffs) / len(diffs):.2e}"


def test_padding_side_and_batching_do_not_change_greedy_answers(
    loaded: tuple[object, object],
) -> None:
    model, tok = loaded
    options = SamplingOptions(k=2, max_new_tokens=6, greedy=True)
    results = []
    for side, batch in (("left", 3), ("right", 3), ("right", 1)):
        tok.padding_side = side  # type: ignore[attr-defined]
        results.append(generate_answers(model, tok, PROMPTS, options=options, batch_size=batch))
    assert tok.padding_side == "right", "the caller's padding side must be restored"  # type: ignore[attr-defined]
    ref = results[0]
    for other in results[1:]:
        diffs = []
        for a, b in zip(ref, other, strict=True):
            assert [s.token_ids for s in a] == [s.token_ids for s in b]
            diffs += [
                abs(x.mean_logprob - y.mean_logprob)  # type: ignore[operator]
                for x, y in zip(a, b, strict=True)
            ]
        assert max(diffs) < 1e-4, f"max diff {max(diffs):.2e}, mean {sum(diffs) / len(diffs):.2e}"
    assert all(a[0].token_ids == a[1].token_ids for a in ref), "greedy K answers differ"


def test_answer_span_after_the_thinking_marker() -> None:
    pieces = ["<think>", "hmm", "</th", "ink>", "Hello", " world"]
    lps = [-1.0, -2.0, -3.0, -4.0, -5.0, -7.0]

    def prefix(i: int) -> str:
        return "".join(pieces[:i])

    def rest(i: int) -> str:
        return "".join(pieces[i:])

    assert answer_start(len(pieces), prefix, prefix(6), "</think>") == (4, True)
    s = make_sample(lps, prefix, prefix(6), rest, "</think>")
    assert (s.text, s.mean_logprob, s.n_tokens, s.flagged) == ("Hello world", -6.0, 2, False)
    assert s.raw == "<think>hmm</think>Hello world"
    missing = make_sample(lps[:2], prefix, prefix(2), rest, "</think>")
    assert missing.flagged and not missing.scorable
    assert make_sample(lps, prefix, prefix(6), rest, None).mean_logprob == pytest.approx(-22 / 6)


def test_reasoning_answers_without_marker_are_flagged_and_left_out(
    loaded: tuple[object, object], llama_dir: Path, tmp_path: Path
) -> None:
    from bake.judges.backends import PatternJudge
    from bake.stages.judge import run_judge

    model, tok = loaded
    options = SamplingOptions(k=2, max_new_tokens=5, think_end="</think>")
    answers = generate_answers(model, tok, PROMPTS[:1], options=options)
    assert all(s.flagged and s.raw is not None for s in answers[0])
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:1])
    out = tmp_path / "a.jsonl"
    run_generate(TransformersBackend(str(llama_dir)), prompts, out, options=options, progress=False)
    summary = run_judge(out, tmp_path / "s.jsonl", PatternJudge(), cache_path=None, progress=False)
    assert (tmp_path / "s.jsonl").read_text() == "", "an unscored prompt has no SCORES line"
    assert summary.unscored == 1 and summary.flagged == 2 and summary.stats.judged == 0


def test_generate_cli_resumes_and_tolerates_a_partial_last_line(
    llama_dir: Path, tmp_path: Path
) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:2])
    out = tmp_path / "answers.jsonl"
    proc = run_cli(
        "generate",
        str(llama_dir),
        str(prompts),
        "-o",
        str(out),
        "-k",
        "2",
        "--max-new-tokens",
        "4",
        check=True,
    )
    assert "2 prompts answered, 0 already done" in proc.stdout
    first = out.read_bytes()
    records = read_answers(out)
    assert [r.id for r in records] == ["p0", "p1"]
    assert all(len(r.samples) == 2 and r.backend == "transformers" for r in records)
    logprobs = [s.mean_logprob for r in records for s in r.samples]
    assert all(lp is not None and math.isfinite(lp) and lp < 0 for lp in logprobs)
    # the run is interrupted while writing a third prompt; the prompt file grows by one
    write_prompts(prompts, PROMPTS)
    out.write_bytes(first + b'{"id": "p2", "prompt": "What is the cap')
    backend = TransformersBackend(str(llama_dir), batch_size=4)
    summary = run_generate(
        backend, prompts, out, options=SamplingOptions(k=2, max_new_tokens=4), progress=False
    )
    assert (summary.written, summary.skipped) == (1, 2)
    data = out.read_bytes()
    assert data.startswith(first), "finished prompts were rewritten"
    assert [r.id for r in read_answers(out)] == ["p0", "p1", "p2"]
    again = run_generate(
        backend, prompts, out, options=SamplingOptions(k=2, max_new_tokens=4), progress=False
    )
    assert (again.written, again.skipped) == (0, 3) and out.read_bytes() == data


def test_resume_refuses_a_file_from_another_run(llama_dir: Path, tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:1])
    out = tmp_path / "a.jsonl"
    out.write_text(
        json.dumps(
            {
                "id": "p0",
                "prompt": PROMPTS[0],
                "model": "other",
                "samples": [{"text": "x", "mean_logprob": -1.0}],
            }
        )
        + "\n"
    )
    backend = TransformersBackend(str(llama_dir))
    with pytest.raises(InputError, match="holds answers from 'other'"):
        run_generate(backend, prompts, out, options=SamplingOptions(k=1), progress=False)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b'{"id": "a", "prompt": "hi"}\n{"id": "b", "prompt": \n', "malformed JSON"),
        (b'{"id": "a", "text": "hi"}\n', "missing or empty 'prompt' field"),
        (b'{"id": "a", "prompt": "hi"}\n{"id": "a", "prompt": "ho"}\n', "duplicate prompt id 'a'"),
        (b'{"id": "a", "prompt": "caf\xe9"}\n', "not UTF-8"),
    ],
)
def test_generate_bad_prompt_files_fail_with_one_line(
    tmp_path: Path, content: bytes, message: str
) -> None:
    bad = tmp_path / "prompts.jsonl"
    bad.write_bytes(content)
    proc = run_cli("generate", "no-such-model-needed", str(bad), "-o", str(tmp_path / "o.jsonl"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("steerbake: error:"), proc.stderr
    assert message in lines[0]
    assert not (tmp_path / "o.jsonl").exists()
