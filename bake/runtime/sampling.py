"""K sampled answers per prompt, each with its mean token log-prob: the input of the judge.

    mean_logprob = (1/T) * sum_t log p(a_t | prompt, a_<t)   over the answer's tokens a_1..a_T

with p the model's raw distribution (temperature 1, no top-k/top-p: the log-prob of the
token that was sampled, before any sampling filter). The end-of-sequence token is not part
of the answer span. For reasoning models, the text after the end-of-thinking marker
(`think_end`, e.g. "</think>") is the answer and only its tokens are averaged; a sample
without the marker is flagged and left out of the score.

Backends: a transformers model (batched, left padding, attention mask), an OpenAI-compatible
server (one request per sample: llama.cpp's server ignores n > 1), a local GGUF through
llama-cpp-python. `generate_answers` is the transformers path as a library function on an
already-loaded model, so the tuner can call it with steering hooks active.

ANSWERS.jsonl holds one line per prompt, appended and fsynced as each prompt completes:
    {"id", "prompt", "model", "backend", "samples": [{"text", "mean_logprob", "n_tokens",
     "flagged", ["raw"]}]}
A rerun skips prompts already in the file; a partially written last line is dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from bake.artifacts.answers import Sample
from bake.errors import InputError
from bake.files.http import API_KEY_HELP
from bake.options import opt
from bake.runtime.chat import chat_text
from bake.runtime.threads import threads

BACKENDS = ("transformers", "openai", "llama")


@dataclass(frozen=True)
class SamplingOptions:
    k: int = opt(5, "Answers per prompt.", flags=("-k",))
    max_new_tokens: int = opt(256)
    greedy: bool = opt(False, "Argmax decoding (the K answers are identical).")
    seed: int = opt(0)
    think_end: str | None = opt(
        None,
        "End-of-thinking marker of a reasoning model (e.g. '</think>'): the text after it "
        "is the answer; answers without it are flagged.",
    )
    system: str | None = opt(None, "System message for every prompt.")

    def __post_init__(self) -> None:
        if self.k < 1:
            raise InputError(f"-k must be at least 1 (got {self.k})")
        if self.max_new_tokens < 1:
            raise InputError(f"--max-new-tokens must be at least 1 (got {self.max_new_tokens})")


# --------------------------------------------------------------------------- answer span
def answer_start(
    n_tokens: int, prefix_text: Callable[[int], str], full_text: str, marker: str | None
) -> tuple[int, bool]:
    """(index of the first answer token, whether the marker was found).

    prefix_text(i) is the text of the first i tokens. The answer starts at the first token
    after the one that completes the marker's first occurrence (binary search on i).
    """
    if not marker:
        return 0, True
    pos = full_text.find(marker)
    if pos < 0:
        return 0, False
    end = pos + len(marker)
    lo, hi = 0, n_tokens  # smallest i with len(prefix_text(i)) >= end
    while lo < hi:
        mid = (lo + hi) // 2
        if len(prefix_text(mid)) >= end:
            hi = mid
        else:
            lo = mid + 1
    return lo, True


def make_sample(
    logprobs: Sequence[float],
    prefix_text: Callable[[int], str],
    full_text: str,
    answer_text: Callable[[int], str],
    marker: str | None,
    token_ids: Sequence[int] = (),
) -> Sample:
    """A Sample from per-token log-probs; answer_text(i) decodes tokens i.. as the answer."""
    start, found = answer_start(len(logprobs), prefix_text, full_text, marker)
    span = list(logprobs[start:]) if found else list(logprobs)
    mean = float(sum(span) / len(span)) if span else None
    text = answer_text(start if found else 0).strip()
    return Sample(
        text=text,
        mean_logprob=mean,
        n_tokens=len(span),
        flagged=not found,
        raw=full_text if marker else None,
        token_ids=tuple(token_ids),
    )


# --------------------------------------------------------------------------- transformers
def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@contextlib.contextmanager
def _left_padding(tokenizer: Any, eos: set[int]) -> Iterator[None]:
    """Left padding (generation continues from the last column) and a pad token (the EOS
    token when the tokenizer has none) while open; the tokenizer is restored after."""
    saved_side, saved_pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.convert_ids_to_tokens(min(eos))
    try:
        yield
    finally:
        tokenizer.padding_side = saved_side
        if saved_pad is None:
            tokenizer.pad_token = None


def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    options: SamplingOptions | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> list[list[Sample]]:
    """options.k answers for each prompt from an already-loaded transformers model.

    Rows (prompt repeated k times; once when greedy) are generated batch_size at a time,
    left-padded with an attention mask, whatever the tokenizer's padding side was.
    Works under bake.hooks.steering(model, vectors).
    """
    import torch

    options = options or SamplingOptions()
    per_prompt = 1 if options.greedy else options.k
    rows = [p for p in prompts for _ in range(per_prompt)]
    device = next(model.parameters()).device
    eos = _eos_ids(model, tokenizer)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(options.seed)
    results: list[Sample] = []
    bar = _progress(len(rows), "generating", progress)
    try:
        with _left_padding(tokenizer, eos):
            for batch in _batches(rows, batch_size):
                results.extend(_generate_batch(model, tokenizer, batch, options, device, eos))
                bar.update(len(batch))
    finally:
        torch.random.set_rng_state(generator_state)
        bar.close()
    grouped = [results[i * per_prompt : (i + 1) * per_prompt] for i in range(len(prompts))]
    if options.greedy:
        grouped = [[s] * options.k for (s,) in grouped]
    return grouped


def _generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    options: SamplingOptions,
    device: Any,
    eos: set[int],
) -> list[Sample]:
    import torch
    from transformers import GenerationConfig

    texts = [chat_text(tokenizer, p, options.system) for p in prompts]
    has_template = bool(getattr(tokenizer, "chat_template", None))
    enc = tokenizer(
        texts, return_tensors="pt", padding=True, add_special_tokens=not has_template
    ).to(device)
    sampling = (
        {"do_sample": False}
        if options.greedy
        else {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
    )
    config = GenerationConfig(
        max_new_tokens=options.max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=sorted(eos) or None,
        output_logits=True,
        return_dict_in_generate=True,
        **sampling,
    )
    with torch.no_grad():
        out = model.generate(**enc, generation_config=config)
    new = out.sequences[:, enc["input_ids"].shape[1] :]  # (B, T)
    # logprob[b, t] = log softmax(raw logits at step t)[b, new[b, t]]
    logprobs = torch.stack(
        [
            torch.log_softmax(step.float(), dim=-1).gather(1, new[:, t : t + 1]).squeeze(1)
            for t, step in enumerate(out.logits)
        ],
        dim=1,
    )
    samples = []
    for row in range(new.shape[0]):
        ids = new[row].tolist()
        cut = next((t for t, tok in enumerate(ids) if tok in eos), len(ids))
        samples.append(
            _token_sample(tokenizer, ids[:cut], logprobs[row, :cut].tolist(), options.think_end)
        )
    return samples


def _token_sample(
    tokenizer: Any, ids: list[int], logprobs: list[float], marker: str | None
) -> Sample:
    """A Sample from generated token ids (EOS already cut off) and their log-probs."""

    def prefix_text(i: int) -> str:
        return str(tokenizer.decode(ids[:i], skip_special_tokens=False))

    def answer_text(i: int) -> str:
        return str(tokenizer.decode(ids[i:], skip_special_tokens=True))

    return make_sample(logprobs, prefix_text, prefix_text(len(ids)), answer_text, marker, ids)


def _progress(total: int, desc: str, enabled: bool, unit: str = "answer") -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, disable=None if enabled else True, dynamic_ncols=True
    )  # None: shown on a terminal only


# --------------------------------------------------------------------------- chat APIs
def sample_seed(seed: int, prompt: str, j: int) -> int:
    """A per-sample seed, stable across reruns, different for each of the K samples."""
    digest = hashlib.sha256(f"{seed}\0{j}\0{prompt}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def sample_from_chat_response(response: dict[str, Any], marker: str | None) -> Sample:
    """A Sample from an OpenAI-style chat completion with logprobs.content per token."""
    try:
        choice = response["choices"][0]
        content = choice["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError):
        raise InputError(
            f"the server's reply is not a chat completion: {str(response)[:200]}"
        ) from None
    entries = (choice.get("logprobs") or {}).get("content")
    if entries is None:
        raise InputError(
            "the server returned no log-probs; it must support logprobs=true "
            "(llama-cpp-python's server: start it with --logits_all true)"
        )
    pieces = [str(e.get("token", "")) for e in entries]
    lps = [float(e["logprob"]) for e in entries]
    text = "".join(pieces) if "".join(pieces) == content or not content else content
    return make_sample(
        lps,
        prefix_text=lambda i: "".join(pieces[:i]),
        full_text=text,
        answer_text=lambda i: "".join(pieces[i:]) if i else text,
        marker=marker,
    )


def _messages(prompt: str, system: str | None) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]


def _distinct_samples(options: SamplingOptions) -> int:
    """Requests per prompt: K, or one when greedy (the K answers would be identical)."""
    return 1 if options.greedy else options.k


def _fill(samples: list[Sample], options: SamplingOptions) -> list[Sample]:
    """The K answers of one prompt: the greedy one repeated K times."""
    return samples * options.k if options.greedy else samples


class OpenAIBackend:
    """An OpenAI-compatible server; one request per sample, `concurrency` in flight."""

    name = "openai"

    def __init__(
        self, server: Any, concurrency: int = 4, extra_body: dict[str, Any] | None = None
    ) -> None:
        self.server = server
        self.concurrency = max(1, concurrency)
        self.extra_body = extra_body or {}
        self.model_id = server.model or server.base_url

    def _one(self, prompt: str, j: int, options: SamplingOptions) -> Sample:
        params: dict[str, Any] = {
            "max_tokens": options.max_new_tokens,
            "n": 1,
            "logprobs": True,
            "top_logprobs": 1,
            "temperature": 0.0 if options.greedy else 1.0,
            "top_p": 1.0,
            "seed": sample_seed(options.seed, prompt, j),
            **self.extra_body,
        }
        response = self.server.chat(_messages(prompt, options.system), **params)
        return sample_from_chat_response(response, options.think_end)

    def sample(self, prompts: Sequence[str], options: SamplingOptions) -> list[list[Sample]]:
        n = _distinct_samples(options)
        jobs = [(p, j) for p in prompts for j in range(n)]
        with ThreadPoolExecutor(self.concurrency) as pool:
            flat = list(pool.map(lambda job: self._one(job[0], job[1], options), jobs))
        return [_fill(flat[i * n : (i + 1) * n], options) for i in range(len(prompts))]


class LlamaCppBackend:
    """A local GGUF through llama-cpp-python (sequential; logits_all for log-probs)."""

    name = "llama"

    def __init__(self, gguf: Path, n_ctx: int = 4096) -> None:
        try:
            from llama_cpp import Llama
        except ImportError:
            raise InputError(
                "the llama backend needs llama-cpp-python: pip install 'steerbake[llama]'"
            ) from None
        if not Path(gguf).is_file():
            raise InputError(f"GGUF file {gguf} not found")
        n = threads()
        self.llm = Llama(
            model_path=str(gguf),
            n_ctx=n_ctx,
            logits_all=True,
            verbose=False,
            n_threads=n,
            n_threads_batch=n,
        )
        self.model_id = Path(gguf).name

    def sample(self, prompts: Sequence[str], options: SamplingOptions) -> list[list[Sample]]:
        out = []
        for prompt in prompts:
            samples = []
            for j in range(_distinct_samples(options)):
                response = self.llm.create_chat_completion(
                    cast(Any, _messages(prompt, options.system)),
                    max_tokens=options.max_new_tokens,
                    temperature=0.0 if options.greedy else 1.0,
                    top_k=0,
                    top_p=1.0,
                    min_p=0.0,
                    logprobs=True,
                    top_logprobs=1,
                    seed=sample_seed(options.seed, prompt, j),
                )
                samples.append(
                    sample_from_chat_response(cast(dict[str, Any], response), options.think_end)
                )
            out.append(_fill(samples, options))
        return out


class TransformersBackend:
    """A local transformers model loaded once; batches through generate_answers."""

    name = "transformers"

    def __init__(
        self, model: str, device: str = "cpu", dtype: str = "auto", batch_size: int = 8
    ) -> None:
        from bake.model.gguf_model import is_gguf
        from bake.model.resolve import resolve_model
        from bake.runtime.loader import load_model, load_tokenizer

        path = resolve_model(model)
        if is_gguf(path) and dtype == "auto":
            dtype = "float32"  # a GGUF has no torch dtype of its own: dequantize to float32
        self.model = load_model(path, dtype=dtype, device=device)
        self.tokenizer = load_tokenizer(path)
        self.batch_size = batch_size
        self.model_id = str(model or "toy-refuser")
        # how the weights were run: the GGUF's quantized tensors are dequantized by transformers
        self.name = "transformers (dequantized GGUF)" if is_gguf(path) else "transformers"

    def sample(self, prompts: Sequence[str], options: SamplingOptions) -> list[list[Sample]]:
        return generate_answers(
            self.model, self.tokenizer, prompts, options=options, batch_size=self.batch_size
        )


def parse_json_object(text: str) -> dict[str, Any]:
    """--extra-body: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise InputError("--extra-body must be a JSON object, e.g. '{\"top_k\": 0}'")
    return value


@dataclass(frozen=True)
class EngineOptions:
    """Which answer backend, and how it is reached or loaded (make_backend)."""

    backend: str = opt(
        "transformers",
        "transformers: MODEL is a folder/Hub id/'toy-refuser'; openai: MODEL is the server's "
        "model name; llama: MODEL is a .gguf file.",
        choices=BACKENDS,
    )
    url: str | None = opt(None, "Server base URL (openai backend).")
    api_key_env: str | None = opt(None, API_KEY_HELP, metavar="NAME")
    extra_body: dict[str, Any] = opt(
        help='JSON merged into each server request, e.g. \'{"top_k": 0, "min_p": 0}\'.',
        factory=dict,
        parse=parse_json_object,
    )
    batch_size: int = opt(8)
    concurrency: int = opt(4, "Requests in flight.")
    timeout: float = opt(120.0, "Seconds per request.")
    retries: int = opt(3)
    device: str = opt("cpu")
    dtype: str = opt("auto")


def make_backend(model: str | None, options: EngineOptions) -> Any:
    """The answer backend named `options.backend` ("transformers", "openai" or "llama")."""
    o = options
    if o.backend == "transformers":
        return TransformersBackend(model or "toy-refuser", o.device, o.dtype, o.batch_size)
    if o.backend == "openai":
        from bake.files.http import ChatServer

        if not o.url:
            raise InputError("the openai backend needs --url (e.g. http://127.0.0.1:8080)")
        server = ChatServer(
            o.url, model, timeout=o.timeout, retries=o.retries, api_key_env=o.api_key_env
        )
        return OpenAIBackend(server, o.concurrency, o.extra_body)
    if o.backend == "llama":
        if not model:
            raise InputError("the llama backend needs MODEL: a .gguf file")
        return LlamaCppBackend(Path(model))
    raise InputError(f"unknown backend {o.backend!r}; choose one of {', '.join(BACKENDS)}")
