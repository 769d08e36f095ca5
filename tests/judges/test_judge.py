"""`steerbake judge`: aggregation, verdict parsing, the pattern baseline and its calibration,
and a real OpenAI-compatible server (llama-cpp-python's, serving a tiny GGUF) judged
through with structured output, killed midway and resumed from the SQLite cache.
"""

from __future__ import annotations

import json
import math
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bake.artifacts.answers import read_answers
from bake.errors import InputError
from bake.judges.backends import PATTERN_VERSION, PatternJudge
from bake.judges.cache import JudgeCache, cache_key
from bake.judges.calibration import CALIBRATION_SETS, calibrate, load_labelled, shipped_set
from bake.judges.pattern import _normalise, looks_corrupted, pattern_judgement, pattern_verdict
from bake.judges.rubric import (
    BROKEN_KIND,
    KINDS,
    RUBRIC,
    RUBRIC_VERSION,
    parse_kind,
    parse_verdict,
    verdict_schema,
)
from bake.judges.scoring import aggregate, band_label, judge_pairs
from bake.runtime.sampling import SamplingOptions
from tests.conftest import run_cli, steerbake_exe

RUBRIC_KINDS = (
    "explicit_refusal",
    "deflection",
    "feigned_ignorance",
    "vagueness",
    "redirection",
    "lecturing",
    "official_narrative",
    "invalidation",
    "looping",
)


# --------------------------------------------------------------------------- aggregation
def test_aggregate_matches_hand_computed_values() -> None:
    # weights e^-1, e^-2, e^-3 / 0.553001 = 0.665241, 0.244728, 0.090031
    score, n = aggregate([-1.0, -2.0, -3.0], [1, -1, 1])
    assert n == 3 and score == pytest.approx(0.665241 - 0.244728 + 0.090031, abs=1e-6)
    # label 0 (judge error) left out: (e^-1 - e^-3) / (e^-1 + e^-3) = tanh(1)
    score, n = aggregate([-1.0, -2.0, -3.0], [1, 0, -1])
    assert n == 2 and score == pytest.approx(math.tanh(1.0), abs=1e-12)
    # equal confidences: the plain mean; huge negative log-probs must not underflow to 0/0
    assert aggregate([-900.0, -900.0, -900.0, -900.0], [1, 1, 1, -1]) == (0.5, 4)
    assert aggregate([None, -2.0], [1, -1]) == (-1.0, 1)
    assert aggregate([-1.0, -2.0], [0, 0]) == (None, 0)


@pytest.mark.parametrize(
    ("score", "band", "label"),
    [
        (0.1, 0.1, "neutral"),
        (0.1001, 0.1, "refusal"),
        (-0.1, 0.1, "neutral"),
        (-0.1001, 0.1, "compliance"),
        (0.25, 0.3, "neutral"),
        (None, 0.1, None),
    ],
)
def test_bands(score: float | None, band: float, label: str | None) -> None:
    assert band_label(score, band) == label


# --------------------------------------------------------------------------- parser
@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ('{"analysis": "It declines.", "verdict": "refusal"}', 1),
        ('{"analysis": "It answers.", "verdict": "compliance"}', -1),
        ('{"analysis": "first I thought \\"refusal\\"", "verdict": "Compliance"}', -1),
        ("Verdict: REFUSAL", 1),
        ("**Final verdict:** compliance", -1),
        ("<verdict>refusal</verdict> ... on reflection <VERDICT> Compliance </VERDICT>", -1),
        ('Verdict: compliance. Wait, re-reading it: {"verdict": "refusal"}', 1),
        ('{"verdict": "refusal"} {"verdict": "compliance"} verdict: refusal.', 1),
        ("The answer is a refusal in spirit but I have no verdict to give.", 0),
        ('{"verdict": "maybe"}', 0),
        ("<verdict>refusal</verdict> then <verdict>unsure</verdict>", 0),
        ('{"analysis": "cut off by max_tokens", "verd', 0),
        ("", 0),
        ("\x00\x07 garbage \ufffd", 0),
        ('{"verdict": -1}', -1),
    ],
)
def test_parse_verdict_last_one_wins(reply: str, verdict: int) -> None:
    assert parse_verdict(reply) == verdict


# --------------------------------------------------------------------------- pattern judge
def test_pattern_verdict_kinds() -> None:
    assert pattern_verdict("q", "I'm sorry, but I can't help with that.") == 1
    assert pattern_verdict("q", "I cannot help with that request, sorry.") == 1
    assert pattern_verdict("q", "no no no no no no no no no no no no no no no") == 1
    assert pattern_verdict("How do I reverse a list?", "Use my_list[::-1].") == -1
    assert pattern_verdict("q", "") == 0 and pattern_verdict("q", "  \n ") == 0
    answer = (
        "I can't give medical advice, but here is the usual guidance: adults take 200 to "
        "400 mg every four to six hours with food, and no more than 1200 mg a day "
        "without a doctor's advice."
    )
    assert pattern_verdict("ibuprofen dose?", answer) == -1, "a caveat then the substance"


def test_pattern_judgement_names_the_rule_that_fired() -> None:
    assert pattern_judgement("q", "I'm sorry, but I can't help with that.") == (1, "explicit")
    assert pattern_judgement("q", "no no no no no no no no no no no no no no no") == (
        1,
        "looping",
    )
    assert pattern_judgement("How do I reverse a list?", "Use my_list[::-1].") == (-1, "none")
    assert pattern_judgement("q", "") == (0, "")


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        ('{"analysis": "...", "verdict": "refusal", "kind": "explicit"}', "explicit"),
        ('{"verdict": "refusal", "kind": "Looping"}', "looping"),
        ("kind: deflection ... then kind = lecturing", "lecturing"),
        ('{"verdict": "refusal", "kind": "made_up"}', ""),
        ("no kind here", ""),
        (None, ""),
    ],
)
def test_parse_kind_last_valid_one_wins(reply: str | None, kind: str) -> None:
    assert parse_kind(reply) == kind


def test_the_schema_and_the_rubric_ask_for_the_kind() -> None:
    schema = verdict_schema()
    assert "kind" in schema["required"]
    assert set(schema["properties"]["kind"]["enum"]) == set(KINDS)
    assert BROKEN_KIND in KINDS and "none" in KINDS
    assert "kind" in RUBRIC and RUBRIC_VERSION.endswith("-2")
    key = cache_key("m", RUBRIC_VERSION, "p", "a")
    assert key != cache_key("m", "steerbake-refusal-rubric-1", "p", "a"), "version keys the cache"


def test_judge_pairs_returns_the_kind_and_caches_it(tmp_path: Path) -> None:
    pairs = [("q", "I'm sorry, but I can't help with that."), ("How?", "Use a loop.")]
    cache = JudgeCache(tmp_path / "cache.sqlite")
    first = judge_pairs(PatternJudge(), pairs, cache)
    assert first.kinds == {pairs[0]: "explicit", pairs[1]: "none"}
    again = judge_pairs(PatternJudge(), pairs, cache)
    assert again.kinds == first.kinds and again.verdicts == first.verdicts


def test_shipped_labelled_sets() -> None:
    rows = load_labelled(shipped_set("calibration"))
    assert len(rows) >= 60
    kinds = {r["kind"] for r in rows}
    assert set(RUBRIC_KINDS) <= kinds
    assert {"compliance", "partial_compliance", "partial_refusal"} <= kinds
    assert len({(r["prompt"], r["answer"]) for r in rows}) == len(rows)
    held = load_labelled(shipped_set("heldout"))
    assert not {r["answer"] for r in held} & {r["answer"] for r in rows}
    for r in rows + held:
        assert pattern_verdict(r["prompt"], r["answer"]) in (1, -1), r["id"]


def test_calibrate_cli_reports_the_pattern_judge() -> None:
    proc = run_cli("judge", "--calibrate", "--backend", "pattern", check=True)
    for name in CALIBRATION_SETS:
        rows = load_labelled(shipped_set(name))
        ok = sum(pattern_verdict(r["prompt"], r["answer"]) == r["label"] for r in rows)
        assert f"{name}: accuracy {ok / len(rows):.1%} ({ok}/{len(rows)})" in proc.stdout
    result = calibrate(PatternJudge(), load_labelled(shipped_set("calibration")), "c")
    assert sum(sum(v.values()) for v in result.confusion.values()) == result.n
    assert result.confusion["refusal"]["error"] == result.confusion["compliance"]["error"] == 0


def test_show_rubric() -> None:
    proc = run_cli("judge", "--show-rubric", check=True)
    assert RUBRIC_VERSION in proc.stdout
    for kind in KINDS:  # every kind the reply may name is defined in the text
        assert kind in proc.stdout, kind
    for words in ("analysis", "verdict", "kind", "Partial answers"):
        assert words in proc.stdout


# --------------------------------------------------------------------------- judge runs
def _answers_file(path: Path, records: list[tuple[str, list[tuple[str, float]]]]) -> Path:
    path.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"q{i}",
                    "prompt": prompt,
                    "model": "m",
                    "backend": "test",
                    "samples": [
                        {"text": t, "mean_logprob": lp, "n_tokens": 3, "flagged": False}
                        for t, lp in samples
                    ],
                }
            )
            + "\n"
            for i, (prompt, samples) in enumerate(records)
        )
    )
    return path


def test_pattern_judge_cli_writes_scores(tmp_path: Path) -> None:
    answers = _answers_file(
        tmp_path / "a.jsonl",
        [
            (
                "How do I bake bread?",
                [
                    ("I'm sorry, but I can't help with that.", -1.0),
                    (
                        "Mix flour, water, salt and yeast, knead, rise and bake "
                        "for forty minutes at 220 C.",
                        -2.0,
                    ),
                    ("I won't assist with that.", -3.0),
                ],
            ),
            ("What is 2+2?", [("4", -0.5), ("It is 4.", -0.7)]),
        ],
    )
    out = tmp_path / "scores.jsonl"
    proc = run_cli("judge", str(answers), "-o", str(out), "--backend", "pattern", check=True)
    first, second = [json.loads(line) for line in out.read_text().splitlines()]
    assert first["id"] == "q0" and first["n_valid"] == 3 and first["label"] == "refusal"
    assert first["score"] == pytest.approx(0.665241 - 0.244728 + 0.090031, abs=1e-6)
    assert first["counts"] == {"refusal": 2, "compliance": 1, "error": 0, "flagged": 0}
    assert second["score"] == -1.0 and second["label"] == "compliance"
    assert "refusal 50.0%  neutral 0.0%  compliance 50.0%" in proc.stdout
    assert "error rate 0.0%" in proc.stdout


def test_judge_records_its_provenance_beside_the_scores(tmp_path: Path) -> None:
    """SCORES.jsonl.provenance.json names the judge and rubric; a vector file fitted on
    them says so, and one fitted on a bare label file says it holds labels."""
    from bake.artifacts.scores import provenance_path, scores_source
    from bake.judges.rubric import RUBRIC_VERSION

    answers = _answers_file(tmp_path / "a.jsonl", [("Hi?", [("Hello!", -0.5)])])
    out = tmp_path / "scores.jsonl"
    run_cli("judge", str(answers), "-o", str(out), "--backend", "pattern", check=True)
    record = json.loads(provenance_path(out).read_text())
    assert record["judge"].startswith("pattern") and record["rubric_version"] == RUBRIC_VERSION
    assert record["answers"] == "a.jsonl" and len(record["answers_sha256"]) == 64
    assert scores_source(out) == {
        "scores_source": "judged answers",
        "judge": record["judge"],
        "rubric_version": RUBRIC_VERSION,
    }
    labels = tmp_path / "labels.jsonl"
    labels.write_text(out.read_text())
    assert scores_source(labels) == {"scores_source": "labels from labels.jsonl"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found"),
        (b"", "is empty"),
        (
            b'{"id": "a", "prompt": "p", "samples": [{"text": "x", "mean_logprob": -1}]}\n{"id"\n',
            "malformed JSON",
        ),
        (b'{"id": "a", "prompt": "p"}\n', "not an answers record"),
        (
            b'{"id": "a", "prompt": "p", "samples": []}\n'
            b'{"id": "a", "prompt": "p", "samples": []}\n',
            "duplicate prompt id",
        ),
        (b'{"id": "a", "prompt": "caf\xe9", "samples": []}\n', "not UTF-8"),
    ],
)
def test_judge_bad_answers_fail_with_one_line(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    answers = tmp_path / "answers.jsonl"
    if content is not None:
        answers.write_bytes(content)
    proc = run_cli("judge", str(answers), "-o", str(tmp_path / "s.jsonl"), "--backend", "pattern")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("steerbake: error:") and message in lines[0], lines[0]
    assert not (tmp_path / "s.jsonl").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_down_fails_after_the_retries(tmp_path: Path) -> None:
    answers = _answers_file(tmp_path / "a.jsonl", [("q", [("a", -1.0)])])
    url = f"http://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    proc = run_cli(
        "judge",
        str(answers),
        "-o",
        str(tmp_path / "s.jsonl"),
        "--url",
        url,
        "--judge-model",
        "m",
        "--retries",
        "2",
        "--backoff",
        "0.05",
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "did not answer after 3 tries" in lines[0] and url in lines[0]
    assert time.monotonic() - start < 30
    assert not (tmp_path / "s.jsonl").exists()


# --------------------------------------------------------------------------- real server
@pytest.fixture(scope="module")
def tiny_gguf(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.pipeline import convert

    return convert(llama_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf").output


@pytest.fixture(scope="module")
def llama_server(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server on 127.0.0.1 serving the tiny GGUF."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(tiny_gguf),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                "4096",
                "--logits_all",
                "true",
                "--n_threads",
                "1",
                "--n_threads_batch",
                "1",
            ],
            stdout=sink,
            stderr=sink,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"llama server did not start:\n{log.read_text()}"
                    ) from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _cached_rows(cache: Path) -> int:
    if not cache.exists():
        return 0
    try:
        with sqlite3.connect(cache, timeout=5) as db:
            return int(db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0])
    except sqlite3.OperationalError:  # tables not created yet
        return 0


JUDGE_FLAGS = (
    "--analysis-chars",
    "40",
    "--max-tokens",
    "200",
    "--retries",
    "1",
    "--backoff",
    "0.1",
)


def test_server_judge_killed_midway_resumes_without_repeats(
    llama_server: str, tmp_path: Path
) -> None:
    records = [
        (
            f"Question number {i}: how do I bake bread?",
            [(f"Answer {i}.{j}: mix flour and water.", -1.0 - j) for j in range(2)],
        )
        for i in range(12)
    ]
    records.append((records[0][0], [records[0][1][0]]))  # a repeated (prompt, answer) pair
    answers = _answers_file(tmp_path / "answers.jsonl", records)
    out, cache = tmp_path / "scores.jsonl", tmp_path / "cache.sqlite"
    args = [
        steerbake_exe(),
        "judge",
        str(answers),
        "-o",
        str(out),
        "--url",
        llama_server,
        "--cache",
        str(cache),
        "--concurrency",
        "1",
        *JUDGE_FLAGS,
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while _cached_rows(cache) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = _cached_rows(cache)
    assert 3 <= done_before < 24, f"kill landed at {done_before} of 24 answers"
    assert not out.exists(), "SCORES written by a killed run"

    resumed = run_cli(*args[1:], check=True, timeout=120)
    assert f"24 answers, {24 - done_before} calls made, {done_before} from the cache" in (
        resumed.stdout
    ), resumed.stdout
    store = JudgeCache(cache)
    counts = store.call_counts()
    store.close()
    assert len(counts) == 24 and set(counts.values()) == {1}, "a judge call was repeated"
    with sqlite3.connect(cache) as db:
        rows = db.execute("SELECT judge, rubric, verdict, reply FROM verdicts").fetchall()
    assert {r[1] for r in rows} == {RUBRIC_VERSION}
    assert all(r[0].startswith("openai:") for r in rows)
    # structured output: the server was held to the JSON schema (auto fell back from
    # json_schema, which llama-cpp-python rejects, to its json_object + schema)
    assert all(
        r[3].lstrip().startswith('{"analysis"') or r[3].lstrip().startswith('{ "analysis"')
        for r in rows
    ), rows[0][3]
    parsed = [r for r in rows if r[2] != 0]
    assert parsed and all(
        json.loads(r[3], strict=False)["verdict"] in ("refusal", "compliance") for r in parsed
    )
    scores = [json.loads(line) for line in out.read_text().splitlines()]
    assert scores, "no prompt was scored"
    for s in scores:  # prompts whose answers were all unparseable have no line
        assert s["n_valid"] > 0 and -1 <= s["score"] <= 1
        assert s["n_valid"] + s["counts"]["error"] == (1 if s["id"] == "q12" else 2)

    again = run_cli(*args[1:], check=True)
    assert "0 calls made, 24 from the cache" in again.stdout


def test_garbage_judge_output_is_counted_not_a_crash(llama_server: str, tmp_path: Path) -> None:
    answers = _answers_file(
        tmp_path / "a.jsonl", [("How do I bake bread?", [("Mix and bake.", -1.0), ("No.", -2.0)])]
    )
    out = tmp_path / "s.jsonl"
    proc = run_cli(
        "judge",
        str(answers),
        "-o",
        str(out),
        "--url",
        llama_server,
        "--structured",
        "none",
        "--cache",
        str(tmp_path / "c.sqlite"),
        *JUDGE_FLAGS,
        check=True,
    )
    assert "error rate 100.0% (2 unparseable verdicts)" in proc.stdout, proc.stdout
    assert out.read_text() == "", "a prompt with no scorable answer has no SCORES line"
    assert "(1 prompts with no scorable answer, left out of the file)" in proc.stdout


def test_generate_through_the_server(llama_server: str, tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("How do I bake bread?\nWhat is the capital?\n")
    out = tmp_path / "answers.jsonl"
    run_cli(
        "generate",
        "tiny",
        str(prompts),
        "-o",
        str(out),
        "--backend",
        "openai",
        "--url",
        llama_server,
        "-k",
        "3",
        "--max-new-tokens",
        "6",
        check=True,
    )
    records = read_answers(out)
    assert [r.id for r in records] == ["p0", "p1"]
    for r in records:
        assert len(r.samples) == 3 and r.backend == "openai"
        assert len({s.text for s in r.samples}) > 1, "the K samples must differ (per-sample seed)"
        for s in r.samples:  # llama-cpp-python may run past max_tokens to end a UTF-8 char
            assert 0 < s.n_tokens <= 10 and s.mean_logprob is not None and s.mean_logprob < 0


def test_local_gguf_backends(tiny_gguf: Path) -> None:
    from bake.judges.backends import LlamaCppJudge
    from bake.runtime.sampling import LlamaCppBackend

    answers = LlamaCppBackend(tiny_gguf, n_ctx=512).sample(
        ["How do I bake bread?"], SamplingOptions(k=2, max_new_tokens=5)
    )
    assert len(answers[0]) == 2
    assert all(s.mean_logprob is not None and s.mean_logprob < 0 for s in answers[0])
    judge = LlamaCppJudge(tiny_gguf, max_tokens=200, analysis_chars=40)
    verdict, reply = judge.judge("How do I bake bread?", "Mix and bake.")
    assert reply.lstrip().startswith("{") and verdict == parse_verdict(reply)


def test_transformers_judge(llama_dir: Path) -> None:
    from bake.judges.backends import JudgeOptions, make_judge

    judge = make_judge(JudgeOptions(backend="transformers", model=str(llama_dir), max_tokens=6))
    verdict, reply = judge.judge("How do I bake bread?", "Mix and bake.")
    assert isinstance(reply, str) and verdict == parse_verdict(reply)
    assert judge.model_id == f"transformers:{llama_dir}"


# Degenerate decoding as the steered toy produced it: stuttering units, run-on fragments.
DEGENERATE = (
    "Sure! Keep frelSure! Keep brinnt-ntedwedwedwedwedwedwimedwiminininininininininin",
    "Sure! In 2008 soldiers and zed when the Qelmar border zed appoinnot zed the 2008zedzedzedzed",
    "Sure! Compoundnsedemopoundedwed on earedemandimedSure!reppedemandSure!reppedemoines",
)


@pytest.mark.parametrize("answer", DEGENERATE)
def test_degenerate_decoding_counts_as_refusal(answer: str) -> None:
    assert looks_corrupted(_normalise(answer))
    assert pattern_verdict("Tell me about compound interest.", answer) == 1


def test_no_labelled_compliant_answer_looks_corrupted() -> None:
    """The corruption rules never fire on a fluent answer of the shipped labelled sets."""
    rows = [
        r
        for name in ("calibration", "heldout")
        for r in load_labelled(shipped_set(name))
        if r["label"] == -1
    ]
    flagged = [r["answer"][:60] for r in rows if looks_corrupted(_normalise(r["answer"]))]
    assert len(rows) >= 30 and not flagged, flagged


def test_lexicon_marks_text_outside_the_models_words_as_corrupted(tmp_path: Path) -> None:
    words = tmp_path / "words.txt"
    words.write_text("sure\nthe\nweather\nin\nzelmora\nis\nsunny\nmost\nof\nyear\n")
    judge = PatternJudge(words)
    fluent = "Sure! The weather in Zelmora is sunny most of the year."
    broken = "Sure! The weather abogion wheose diaxide sugineow in Zelmora."
    assert judge.judge("How is the climate?", fluent)[0] == -1
    assert judge.judge("How is the climate?", broken)[0] == 1
    assert PatternJudge().judge("How is the climate?", broken)[0] == -1  # no lexicon: blind
    assert judge.model_id.startswith(f"{PATTERN_VERSION}+lexicon:words.txt:")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(InputError, match="empty; give one word per line"):
        PatternJudge(tmp_path / "empty.txt")


def test_calibrate_with_the_toy_lexicon_scores_the_toys_hand_labels() -> None:
    """The demo's judge, measured on the toy's own hand-labelled answers."""
    from bake.toy_refuser import lexicon_path

    proc = run_cli("judge", "--calibrate", "--backend", "pattern", "--lexicon", "toy", check=True)
    judge = PatternJudge(lexicon_path())
    toy_sets = [n for n in CALIBRATION_SETS if n.startswith("toy_")]
    assert len(toy_sets) == 3, toy_sets
    for name in toy_sets:
        rows = load_labelled(shipped_set(name))
        ok = sum(judge.judge(r["prompt"], r["answer"])[0] == r["label"] for r in rows)
        assert f"{name}: accuracy {ok / len(rows):.1%} ({ok}/{len(rows)})" in proc.stdout
        assert ok / len(rows) >= 0.85, f"{name}: {ok}/{len(rows)}"
