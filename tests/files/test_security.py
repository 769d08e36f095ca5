"""A model folder can never make steerbake write outside its output, and the Hub token never
reaches a judge or answer server."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from bake.errors import InputError
from bake.files.http import ChatServer
from tests.conftest import run_cli, tree_digest
from tests.stages.test_bake import make_plan_for

INDEX = "model.safetensors.index.json"


# --------------------------------------------------------------------------- hostile indexes
def _hostile_copy(src: Path, tmp_path: Path, rename: object) -> Path:
    """A copy of the sharded test model whose index names its shards through `rename`."""
    folder = tmp_path / "src"
    shutil.copytree(src, folder)
    index = json.loads((folder / INDEX).read_text())
    index["weight_map"] = {k: rename(folder, v) for k, v in index["weight_map"].items()}
    (folder / INDEX).write_text(json.dumps(index))
    return folder


ESCAPES = {
    "relative": lambda folder, shard: f"../{folder.name}/{shard}",
    "absolute": lambda folder, shard: str(folder / shard),
    "dotdot": lambda folder, shard: "..",
}


@pytest.mark.parametrize("kind", sorted(ESCAPES))
@pytest.mark.parametrize("command", ["bake", "export"])
def test_escaping_index_is_refused_and_source_untouched(
    llama_tied_bf16_sharded_dir: Path, tmp_path: Path, kind: str, command: str
) -> None:
    plan = make_plan_for(llama_tied_bf16_sharded_dir, tmp_path / "plan", [1])
    src = _hostile_copy(llama_tied_bf16_sharded_dir, tmp_path, ESCAPES[kind])
    before = tree_digest(src)
    sizes = {p.name: p.stat().st_size for p in src.iterdir()}
    extra = ["--no-gguf", "--skip-verify"] if command == "export" else []
    proc = run_cli(command, str(src), str(plan), "-o", str(tmp_path / "out"), *extra)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a plain file name" in lines[0], proc.stderr
    assert tree_digest(src) == before, "the hostile index changed the source folder"
    assert {p.name: p.stat().st_size for p in src.iterdir()} == sizes
    assert not (tmp_path / "out").exists()


def _alias_cases(src: Path, tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "link-to-src").symlink_to(src)
    (tmp_path / "link-to-parent").symlink_to(src, target_is_directory=True)
    return {
        "the source itself": src,
        "a symlink to the source": tmp_path / "link-to-src",
        "inside the source": src / "out",
        "inside the source through a symlink": tmp_path / "link-to-parent" / "new",
        # OUT resolves outside the source, but the temporary build folder is made beside
        # OUT, inside the source
        "a symlink in the source pointing out": src / "escape",
    }


def test_output_aliasing_the_source_is_refused(llama_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "model"
    shutil.copytree(llama_dir, src)
    (src / "escape").symlink_to(tmp_path / "elsewhere" / "out")
    plan = make_plan_for(src, tmp_path / "plan", [1])
    before = tree_digest(src)
    for what, out in _alias_cases(src, tmp_path).items():
        proc = run_cli("bake", str(src), str(plan), "-o", str(out), "--overwrite")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (what, proc.stderr)
        assert "source" in lines[0], (what, lines[0])
        assert tree_digest(src) == before, f"output {what}: the source changed"


def test_gguf_output_that_is_the_input_is_refused(llama_dir: Path, tmp_path: Path) -> None:
    base = tmp_path / "base.gguf"
    run_cli("gguf", str(llama_dir), "-o", str(base), check=True)
    plan = make_plan_for(llama_dir, tmp_path / "plan", [1])
    alias = tmp_path / "alias.gguf"
    alias.symlink_to(base)
    digest = tree_digest(tmp_path / "plan"), base.read_bytes()
    for out in (base, alias):
        proc = run_cli("gguf", "--base-gguf", str(base), "--plan", str(plan), "-o", str(out))
        assert proc.returncode == 2 and "one of the inputs" in proc.stderr, proc.stderr
    assert (tree_digest(tmp_path / "plan"), base.read_bytes()) == digest


# --------------------------------------------------------------------------- tokens
class _Recorder(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat server that records every request's Authorization."""

    seen: ClassVar[list[str | None]] = []

    def log_message(self, *args: object) -> None:  # keep test output clean
        return

    def _reply(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        type(self).seen.append(self.headers.get("Authorization"))
        self._reply({"data": [{"id": "recorder"}]})

    def do_POST(self) -> None:
        type(self).seen.append(self.headers.get("Authorization"))
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        verdict = json.dumps({"analysis": "It declines.", "verdict": "refusal"})
        tokens = [{"token": t, "logprob": -0.5} for t in ("I ", "cannot.")]
        self._reply(
            {
                "choices": [
                    {
                        "message": {"role": "assistant", "content": verdict},
                        "logprobs": {"content": tokens},
                    }
                ]
            }
        )


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[str | None]]]:
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.seen
    finally:
        server.shutdown()
        server.server_close()


HUB_TOKEN = "hf_this_token_must_never_leave_for_a_judge_0123456789"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    return {**env, "HF_TOKEN": HUB_TOKEN, **extra}


def test_hub_token_never_reaches_judge_or_answer_servers(
    recorder: tuple[str, list[str | None]], tmp_path: Path
) -> None:
    url, seen = recorder
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "a", "prompt": "Say hi."}) + "\n")
    answers, scores = tmp_path / "answers.jsonl", tmp_path / "scores.jsonl"
    env = _env()
    run_cli(
        "generate", "m", str(prompts), "-o", str(answers), "--backend", "openai",
        "--url", url, "-k", "2", env=env, check=True,
    )  # fmt: skip
    run_cli("judge", str(answers), "-o", str(scores), "--url", url, env=env, check=True)
    assert len(seen) >= 3, seen  # 2 answers, the model listing and 1 judge call
    assert all(h is None or HUB_TOKEN not in h for h in seen), seen
    assert all(h is None for h in seen), "no key was configured, so none may be sent"


def test_api_key_comes_from_openai_api_key_or_the_named_variable(
    recorder: tuple[str, list[str | None]], tmp_path: Path
) -> None:
    url, seen = recorder
    answers = tmp_path / "answers.jsonl"
    answers.write_text(
        json.dumps(
            {
                "id": "a",
                "prompt": "Say hi.",
                "samples": [{"text": "No.", "mean_logprob": -0.1, "n_tokens": 1}],
            }
        )
        + "\n"
    )
    args = ("judge", str(answers), "--url", url, "--cache", str(tmp_path / "c.sqlite"))
    env = _env(OPENAI_API_KEY="k-openai")
    run_cli(*args, "-o", str(tmp_path / "s1.jsonl"), env=env, check=True)
    assert seen and set(seen) == {"Bearer k-openai"}, seen
    seen.clear()
    run_cli(
        *args, "-o", str(tmp_path / "s2.jsonl"), "--api-key-env", "MY_JUDGE_KEY",
        "--cache", str(tmp_path / "c2.sqlite"), env=_env(MY_JUDGE_KEY="k-mine"), check=True,
    )  # fmt: skip
    assert seen and set(seen) == {"Bearer k-mine"}, seen
    proc = run_cli(*args, "-o", str(tmp_path / "s3.jsonl"), "--api-key-env", "HF_TOKEN", env=_env())
    assert proc.returncode == 2 and "never sent" in proc.stderr, proc.stderr


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/", "127.0.0.1:8080"])
def test_only_http_urls(url: str) -> None:
    with pytest.raises(InputError, match="http:// or https://"):
        ChatServer(url)


def test_key_over_plain_http_to_a_remote_host_warns(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    ChatServer("http://127.0.0.1:9")
    ChatServer("https://judge.example.org")
    assert "warning" not in capsys.readouterr().err
    ChatServer("http://judge.example.org")
    err = capsys.readouterr().err
    assert "warning" in err and "plain http" in err
