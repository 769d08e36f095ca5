"""Judges: each turns one (prompt, answer) pair into (verdict, raw reply).

- OpenAIJudge: any OpenAI-compatible chat endpoint, structured output where the server
  takes it. FACTS.md: llama.cpp's server wants {"type": "json_object", "schema": S},
  OpenAI-style servers (vLLM, OpenAI) {"type": "json_schema", "json_schema": {...}}.
  `structured="auto"` tries json_schema, then json_object, then plain text, moving on when
  the server rejects the request (4xx), and remembers what worked.
- LlamaCppJudge: a local GGUF through llama-cpp-python, JSON-schema constrained.
- TransformersJudge: a local transformers model, greedy, verdict parsed from its text.
- PatternJudge: the keyword baseline (bake.judge_pattern); no model, no cache.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from bake.errors import InputError
from bake.files.http import API_KEY_HELP, BadRequest, ChatServer
from bake.judges.pattern import pattern_judgement
from bake.judges.rubric import (
    ANALYSIS_CHARS,
    RUBRIC,
    USER_TEMPLATE,
    judge_messages,
    kind_reply,
    parse_verdict,
    verdict_schema,
)
from bake.options import opt
from bake.runtime.threads import threads

JUDGE_BACKENDS = ("openai", "llama", "transformers", "pattern")
STRUCTURED_MODES = ("auto", "json_schema", "json_object", "none")
PATTERN_VERSION = "pattern-3"  # part of every cache key: bump when the judge's verdicts change


def response_format(mode: str, analysis_chars: int = ANALYSIS_CHARS) -> dict[str, Any] | None:
    """The response_format body for a structured-output mode (None: plain text)."""
    if mode == "json_schema":  # OpenAI, vLLM; OpenAI's strict mode rejects maxLength
        return {
            "type": "json_schema",
            "json_schema": {"name": "verdict", "schema": verdict_schema(None), "strict": True},
        }
    if mode == "json_object":  # llama.cpp / llama-cpp-python server
        return {"type": "json_object", "schema": verdict_schema(analysis_chars)}
    return None


def _identity(kind: str, name: str, analysis_chars: int) -> str:
    """The judge's part of the cache key; a non-default analysis cap is part of it."""
    suffix = "" if analysis_chars == ANALYSIS_CHARS else f"|analysis<={analysis_chars}"
    return f"{kind}:{name}{suffix}"


class OpenAIJudge:
    """A judge behind an OpenAI-compatible endpoint."""

    cached = True

    def __init__(
        self,
        server: ChatServer,
        *,
        structured: str = "auto",
        max_tokens: int = 512,
        concurrency: int = 4,
        analysis_chars: int = ANALYSIS_CHARS,
    ) -> None:
        if structured not in STRUCTURED_MODES:
            raise InputError(f"--structured must be one of {', '.join(STRUCTURED_MODES)}")
        self.server = server
        self.modes = (
            ["json_schema", "json_object", "none"] if structured == "auto" else [structured]
        )
        self.max_tokens = max_tokens
        self.concurrency = max(1, concurrency)
        self._lock = threading.Lock()
        self.analysis_chars = analysis_chars
        self.model_id = _identity("openai", server.model or server.first_model(), analysis_chars)

    def judge(self, prompt: str, answer: str) -> tuple[int, str]:
        while True:
            mode = self.modes[0]
            params: dict[str, Any] = {"temperature": 0.0, "max_tokens": self.max_tokens}
            fmt = response_format(mode, self.analysis_chars)
            if fmt is not None:
                params["response_format"] = fmt
            try:
                reply = self.server.chat(judge_messages(prompt, answer), **params)
            except BadRequest as e:
                with self._lock:
                    if len(self.modes) == 1 or not _about_format(e.body):
                        raise
                    if self.modes[0] == mode:  # another thread may have moved on already
                        self.modes.pop(0)
                continue
            text = _reply_text(reply)
            return parse_verdict(text), text


def _about_format(error_body: str) -> bool:
    """Whether a rejection is about response_format (then a simpler format may pass)."""
    body = error_body.lower()
    return "response_format" in body or "json_schema" in body or "schema" in body


def _reply_text(reply: dict[str, Any]) -> str:
    try:
        message = reply["choices"][0]["message"]
        return str(message.get("content") or "")
    except (KeyError, IndexError, TypeError, AttributeError):
        return ""  # a reply that is not a chat completion: no verdict, counted as an error


class LlamaCppJudge:
    """A local GGUF judge (llama-cpp-python), output constrained to verdict_schema()."""

    cached = True
    concurrency = 1

    def __init__(
        self,
        gguf: Path,
        *,
        max_tokens: int = 512,
        n_ctx: int = 4096,
        analysis_chars: int = ANALYSIS_CHARS,
    ) -> None:
        try:
            from llama_cpp import Llama
        except ImportError:
            raise InputError(
                "the llama judge needs llama-cpp-python: pip install 'steerbake[llama]'"
            ) from None
        if not Path(gguf).is_file():
            raise InputError(f"judge GGUF {gguf} not found")
        n = threads()
        self.llm = Llama(
            model_path=str(gguf), n_ctx=n_ctx, verbose=False, n_threads=n, n_threads_batch=n
        )
        self.max_tokens = max_tokens
        self.analysis_chars = analysis_chars
        name = f"{Path(gguf).name}:{Path(gguf).stat().st_size}"
        self.model_id = _identity("llama", name, analysis_chars)

    def judge(self, prompt: str, answer: str) -> tuple[int, str]:
        reply = self.llm.create_chat_completion(
            judge_messages(prompt, answer),  # type: ignore[arg-type]
            response_format={"type": "json_object", "schema": verdict_schema(self.analysis_chars)},
            temperature=0.0,
            max_tokens=self.max_tokens,
        )
        text = _reply_text(cast(dict[str, Any], reply))
        return parse_verdict(text), text


class TransformersJudge:
    """A local transformers judge: greedy decoding, the verdict parsed from the text."""

    cached = True
    concurrency = 1

    def __init__(
        self, model: str, *, device: str = "cpu", dtype: str = "auto", max_tokens: int = 512
    ) -> None:
        from bake.runtime.sampling import TransformersBackend

        self.backend = TransformersBackend(model, device, dtype, batch_size=1)
        self.max_tokens = max_tokens
        self.model_id = f"transformers:{model}"

    def judge(self, prompt: str, answer: str) -> tuple[int, str]:
        from bake.runtime.sampling import SamplingOptions, generate_answers

        options = SamplingOptions(k=1, max_new_tokens=self.max_tokens, greedy=True, system=RUBRIC)
        user = USER_TEMPLATE.format(prompt=prompt, answer=answer)
        [[sample]] = generate_answers(
            self.backend.model, self.backend.tokenizer, [user], options=options
        )
        return parse_verdict(sample.text), sample.text


class PatternJudge:
    """The keyword baseline: instant, weaker than an LLM judge (see the README). With a
    lexicon (a word list, one per line: every word the judged model can say), answers whose
    words mostly fall outside it count as corrupted, hence refusal."""

    cached = False
    concurrency = 1

    def __init__(self, lexicon: Path | None = None) -> None:
        self.lexicon = read_lexicon(lexicon) if lexicon else None
        self.model_id = PATTERN_VERSION
        if lexicon and self.lexicon:  # the words' digest keys caches to the lexicon's content
            digest = hashlib.sha256("\n".join(sorted(self.lexicon)).encode()).hexdigest()
            self.model_id += f"+lexicon:{lexicon.name}:{digest[:8]}"

    def judge(self, prompt: str, answer: str) -> tuple[int, str]:
        """(verdict, the rule's kind as a rubric-form reply)."""
        verdict, kind = pattern_judgement(prompt, answer, self.lexicon)
        return verdict, kind_reply(verdict, kind)


def read_lexicon(path: Path) -> frozenset[str]:
    """A word list: one lower-case word per line."""
    try:
        words = frozenset(w.strip().lower() for w in Path(path).read_text().splitlines())
    except OSError as e:
        raise InputError(f"cannot read the lexicon {path}: {e.strerror}") from None
    words -= {""}
    if not words:
        raise InputError(f"the lexicon {path} is empty; give one word per line")
    return words


LEXICON_HELP = (
    "Pattern judge: the judged model's word list (one per line; `toy` for the toy "
    "refuser's); answers mostly outside it count as corrupted, hence refusal."
)


def parse_lexicon(value: str) -> Path:
    """--lexicon: a word-list file, or `toy` for the toy refuser's."""
    if value == "toy":
        from bake.toy_refuser import lexicon_path

        return lexicon_path()
    return Path(value)


@dataclass(frozen=True)
class JudgeOptions:
    """Which judge and how it is reached (`lexicon`: pattern only; `api_key_env`: openai
    only, the variable holding the server's key)."""

    backend: str = opt(
        "openai", "pattern is a keyword baseline, weaker than an LLM judge.", choices=JUDGE_BACKENDS
    )
    url: str | None = opt(None, "Judge server base URL (openai backend).")
    api_key_env: str | None = opt(None, API_KEY_HELP, metavar="NAME")
    model: str | None = opt(
        None,
        "openai: model name (default: the server's first); llama: .gguf file; "
        "transformers: model folder.",
        flags=("--judge-model",),
    )
    structured: str = opt(
        "auto",
        "Structured output: json_schema (OpenAI, vLLM), json_object (llama.cpp); "
        "auto tries them in that order.",
        choices=STRUCTURED_MODES,
    )
    concurrency: int = opt(4, "Judge calls in flight.")
    timeout: float = opt(120.0, "Seconds per judge call.")
    retries: int = opt(3)
    backoff: float = opt(1.0, "Seconds before the first retry; doubles each time.")
    max_tokens: int = opt(512, "Judge reply length.")
    analysis_chars: int = opt(
        ANALYSIS_CHARS, "Cap on the judge's analysis where the schema is enforced (llama.cpp)."
    )
    device: str = opt("cpu")
    dtype: str = opt("auto")
    lexicon: Path | None = opt(None, LEXICON_HELP, parse=parse_lexicon)


def make_judge(options: JudgeOptions) -> Any:
    """The judge named `options.backend`, one of JUDGE_BACKENDS."""
    o = options
    if o.backend == "openai":
        if not o.url:
            raise InputError("the openai judge needs --url (e.g. http://127.0.0.1:8080)")
        server = ChatServer(
            o.url,
            o.model,
            timeout=o.timeout,
            retries=o.retries,
            backoff=o.backoff,
            api_key_env=o.api_key_env,
        )
        return OpenAIJudge(
            server,
            structured=o.structured,
            max_tokens=o.max_tokens,
            concurrency=o.concurrency,
            analysis_chars=o.analysis_chars,
        )
    if o.backend == "llama":
        if not o.model:
            raise InputError("the llama judge needs --judge-model: a .gguf file")
        return LlamaCppJudge(
            Path(o.model), max_tokens=o.max_tokens, analysis_chars=o.analysis_chars
        )
    if o.backend == "transformers":
        if not o.model:
            raise InputError("the transformers judge needs --judge-model: a model folder")
        return TransformersJudge(o.model, device=o.device, dtype=o.dtype, max_tokens=o.max_tokens)
    if o.backend == "pattern":
        return PatternJudge(o.lexicon)
    raise InputError(
        f"unknown judge backend {o.backend!r}; choose one of {', '.join(JUDGE_BACKENDS)}"
    )
