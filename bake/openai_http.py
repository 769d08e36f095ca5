"""A small client for OpenAI-compatible chat servers (vLLM, llama.cpp's server, Ollama,
TGI, hosted endpoints), over the standard library's urllib.

Why not huggingface_hub's InferenceClient: its `response_format` follows TGI's grammar shape
and cannot send llama.cpp's `{"type": "json_object", "schema": ...}` (FACTS.md), and its
retries do not distinguish "server down" from "bad request". Plain HTTP sends exactly the
body we build, for every server.

Timeouts on every request; retries with exponential backoff on connection errors, timeouts,
429 and 5xx; a 4xx other than 429 is returned at once (it will not get better by retrying).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from bake.errors import InputError

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class ServerUnavailable(InputError):
    """The server did not answer after every retry (down, wrong URL, overloaded)."""


class BadRequest(InputError):
    """The server rejected the request (4xx): retrying would not help."""

    def __init__(self, message: str, status: int, body: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


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
    api_key: str | None = None

    def __post_init__(self) -> None:
        url = self.base_url.rstrip("/")
        self.base_url = url if url.endswith("/v1") else url + "/v1"
        if self.api_key is None:
            self.api_key = os.environ.get("OPENAI_API_KEY") or os.environ.get("HF_TOKEN")

    def chat(self, messages: list[dict[str, str]], **params: Any) -> dict[str, Any]:
        """POST /chat/completions; returns the decoded JSON response."""
        body: dict[str, Any] = {"messages": messages, **params}
        if self.model:
            body.setdefault("model", self.model)
        return self._post("/chat/completions", body)

    def first_model(self) -> str:
        """The id of the first model the server lists (GET /models)."""
        listing = self._request("/models", None)
        try:
            return str(listing["data"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise InputError(f"{self.base_url}/models lists no model; pass --judge-model") from None

    def _post(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._request(route, body)

    def _request(self, route: str, body: dict[str, Any] | None) -> dict[str, Any]:
        """POST body (GET when None) with retries; the decoded JSON reply."""
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
                    return dict(json.loads(response.read().decode("utf-8")))
            except urllib.error.HTTPError as e:
                text = e.read().decode("utf-8", "replace")[:500]
                if _is_request_error(e.code, text):
                    raise BadRequest(
                        f"{url} rejected the request (HTTP {e.code}): {text}", e.code, text
                    ) from None
                last = f"HTTP {e.code}: {text}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = str(getattr(e, "reason", e))
            except json.JSONDecodeError:
                last = "the reply was not JSON"
        raise ServerUnavailable(
            f"{url} did not answer after {self.retries + 1} tries ({last}); start the server "
            "or fix --url, then rerun (finished work is kept)"
        )
