"""A small client for OpenAI-compatible chat servers (vLLM, llama.cpp's server, Ollama,
TGI, hosted endpoints), over the standard library's urllib.

Why not huggingface_hub's InferenceClient: its `response_format` follows TGI's grammar shape
and cannot send llama.cpp's `{"type": "json_object", "schema": ...}` (FACTS.md), and its
retries do not distinguish "server down" from "bad request". Plain HTTP sends exactly the
body we build, for every server.

The bearer key comes from OPENAI_API_KEY, or from an environment variable the user names
(`--api-key-env NAME`), never from HF_TOKEN: a Hub token must never reach a judge server.
Only http(s) URLs are accepted, and a key about to travel over plain http to a host that is
not loopback is warned about.

Timeouts on every request; retries with exponential backoff on connection errors, timeouts,
429 and 5xx, and on a 200 reply that is not what was asked for (`{"error": ...}` where a
chat completion belongs: a proxy or an overloaded server); a 4xx other than 429 is returned
at once (it will not get better by retrying).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bake.errors import InputError, warn

DEFAULT_KEY_ENV = "OPENAI_API_KEY"
API_KEY_HELP = (
    f"Environment variable holding the server's API key [default: {DEFAULT_KEY_ENV}]; "
    "HF_TOKEN is never sent to a server."
)
_LOOPBACK = ("localhost", "127.0.0.1", "::1")
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class ServerUnavailable(InputError):
    """The server did not answer after every retry (down, wrong URL, overloaded)."""


class BadRequest(InputError):
    """The server rejected the request (4xx): retrying would not help."""

    def __init__(self, message: str, status: int, body: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def is_chat_completion(reply: dict[str, Any]) -> bool:
    """Whether a reply is an OpenAI chat completion: choices[0].message is an object."""
    choices = reply.get("choices")
    return (
        bool(choices)
        and isinstance(choices, list)
        and isinstance(choices[0].get("message") if isinstance(choices[0], dict) else None, dict)
    )


def check_server_url(url: str) -> urllib.parse.ParseResult:
    """Only http:// and https:// URLs with a host name (no file:, ftp:, ...)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InputError(
            f"server URL {url!r} must start with http:// or https:// and name a host, "
            "e.g. http://127.0.0.1:8080"
        )
    return parsed


def api_key_from_env(variable: str | None) -> str | None:
    """The bearer key: from the variable the user named, else OPENAI_API_KEY. Never from
    HF_TOKEN (the Hub token must not reach a judge server)."""
    if variable is None:
        return os.environ.get(DEFAULT_KEY_ENV) or None
    if not variable or variable == "HF_TOKEN":
        raise InputError(
            f"--api-key-env {variable!r}: name the variable that holds the server's key "
            "(the Hub token HF_TOKEN is never sent to a server other than the Hub)"
        )
    key = os.environ.get(variable)
    if not key:
        raise InputError(f"--api-key-env {variable}: that environment variable is not set")
    return key


def _is_loopback(host: str | None) -> bool:
    return host is not None and (host in _LOOPBACK or host.startswith("127."))


def _is_request_error(status: int, body: str) -> bool:
    """A rejection of the request itself, which retrying cannot fix. llama-cpp-python's
    server reports request validation errors as HTTP 500."""
    if status not in RETRYABLE_STATUS:
        return True
    return status == 500 and "validation error" in body.lower()


@dataclass
class ChatServer:
    """An OpenAI-compatible endpoint. base_url: e.g. http://127.0.0.1:8080 or .../v1."""

    base_url: str
    model: str | None = None
    timeout: float = 60.0
    retries: int = 3
    backoff: float = 1.0  # seconds before the first retry; doubles each time
    api_key_env: str | None = None  # variable holding the key [default: OPENAI_API_KEY]
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        url = self.base_url.rstrip("/")
        parsed = check_server_url(url)
        self.base_url = url if url.endswith("/v1") else url + "/v1"
        if self.api_key is None:
            self.api_key = api_key_from_env(self.api_key_env)
        if self.api_key and parsed.scheme == "http" and not _is_loopback(parsed.hostname):
            warn(
                f"the API key goes to {parsed.hostname} over plain http, readable on the way; "
                "use https, or a server on this machine"
            )

    def chat(self, messages: list[dict[str, str]], **params: Any) -> dict[str, Any]:
        """POST /chat/completions; returns the decoded JSON response."""
        body: dict[str, Any] = {"messages": messages, **params}
        if self.model:
            body.setdefault("model", self.model)
        return self._request("/chat/completions", body, accept=is_chat_completion)

    def first_model(self) -> str:
        """The id of the first model the server lists (GET /models)."""
        listing = self._request("/models", None)
        try:
            return str(listing["data"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise InputError(f"{self.base_url}/models lists no model; pass --judge-model") from None

    def _request(
        self,
        route: str,
        body: dict[str, Any] | None,
        accept: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """POST body (GET when None) with retries; the decoded JSON reply (an object, and
        one `accept` takes: any other is retried like a failed transfer)."""
        url = self.base_url + route
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(
                url, data=data, headers=headers, method="GET" if data is None else "POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    reply = json.loads(response.read().decode("utf-8"))
                if isinstance(reply, dict) and (accept is None or accept(reply)):
                    return reply
                last = f"the reply was not {'a chat completion' if accept else 'an object'}: "
                last += json.dumps(reply)[:200]
            except urllib.error.HTTPError as e:
                text = e.read().decode("utf-8", "replace")[:500]
                if _is_request_error(e.code, text):
                    raise BadRequest(
                        f"{url} rejected the request (HTTP {e.code}): {text}", e.code, text
                    ) from None
                last = f"HTTP {e.code}: {text}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = str(getattr(e, "reason", e))
            except (json.JSONDecodeError, UnicodeDecodeError):
                last = "the reply was not JSON"
        raise ServerUnavailable(
            f"{url} did not answer after {self.retries + 1} tries ({last}); start the server "
            "or fix --url, then rerun (finished work is kept)"
        )
