"""`steerbake chat`: talk to a GGUF in llama.cpp with its own chat template, optionally
with a control vector applied to every token."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bake.options import opt
from bake.runtime.llama import LlamaRuntime


@dataclass(frozen=True)
class ChatOptions:
    """`run_chat`'s settings besides the GGUF and the input/output callbacks."""

    control_vector: Path | None = opt(None, "Control-vector GGUF applied to every token.")
    scale: float = opt(1.0, "Multiplier on the control vector.")
    prompt: str | None = opt(None, "Answer this one message and exit.")
    max_tokens: int = opt(256)
    temperature: float = opt(0.7, "0 = greedy.")
    n_ctx: int = opt(2048, "Context length.", flags=("--ctx",))
    seed: int = opt(0)


def run_chat(
    gguf_path: Path,
    *,
    control_vector: Path | None = None,
    scale: float = 1.0,
    prompt: str | None = None,
    max_tokens: int = 256,
    temperature: float = 0.7,
    n_ctx: int = 2048,
    seed: int = 0,
    write: Any = None,
    read: Any = input,
) -> None:
    """`steerbake chat`: one reply to `prompt`, or a loop reading user turns from stdin.
    write(text, newline) prints; read(prompt) returns the next user turn (EOFError ends)."""
    write = write or _print
    warn_without_chat_template(gguf_path)
    with LlamaRuntime(
        gguf_path, n_ctx=n_ctx, control_vector=control_vector, scale=scale, seed=seed
    ) as rt:
        if rt.ignored_blocks:
            write(
                f"note: llama.cpp ignores direction.{rt.ignored_blocks} (past the last "
                "block that takes a control vector)",
                True,
            )
        messages: list[dict[str, str]] = []
        turns = [prompt] if prompt is not None else None
        while True:
            if turns is not None:
                if not turns:
                    return
                text = turns.pop()
            else:
                try:
                    text = read("> ")
                except EOFError:
                    return
                if text.strip() in ("/exit", "/quit"):
                    return
            messages.append({"role": "user", "content": text})
            reply = ""
            for piece in rt.stream_chat(
                messages, max_tokens=max_tokens, temperature=temperature, seed=seed
            ):
                reply += piece
                write(piece, False)
            write("", True)
            messages.append({"role": "assistant", "content": reply})


def warn_without_chat_template(gguf_path: Path) -> None:
    """A GGUF without tokenizer.chat_template gets llama-cpp-python's fallback format, which
    is not the one the model was trained on: its answers may be empty or off."""
    import gguf

    from bake.errors import warn
    from bake.files.gguf_file import read_layout

    if read_layout(Path(gguf_path)).string(gguf.Keys.Tokenizer.CHAT_TEMPLATE) is None:
        warn(
            f"{Path(gguf_path).name} has no chat template (tokenizer.chat_template): "
            "llama-cpp-python formats the chat its own way, which the model may not know, "
            "and the answer may be empty; use a GGUF written with its template"
        )


def _print(text: str, newline: bool) -> None:
    print(text, end="\n" if newline else "", flush=True)
