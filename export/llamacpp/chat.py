"""`steerbake chat`: talk to a GGUF in llama.cpp with its own chat template, optionally
with a control vector applied to every token; or (`--backend transformers`) to MODEL in
transformers with hook steering from a plan, gated per prompt by a probe (probe-gated
steering runs only there: llama.cpp exposes no intermediate activations to read a probe
from, and no weight file can hold a per-prompt choice)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bake.artifacts.probe import MODE_HELP, MODES
from bake.errors import InputError
from bake.options import opt
from bake.runtime.llama import LlamaRuntime

BACKENDS = ("llama", "transformers")


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
    backend: str = opt(
        "llama",
        "llama: llama.cpp on the GGUF; transformers: MODEL (folder or .gguf) with --plan "
        "hooks, gated per prompt by --probe.",
        choices=BACKENDS,
    )
    plan: Path | None = opt(None, "Steer with hooks from this plan (--backend transformers).")
    probe: Path | None = opt(
        None, "Gate --plan per prompt with this probe (--backend transformers only)."
    )
    probe_mode: str = opt("sign", MODE_HELP, choices=MODES)


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
    backend: str = "llama",
    plan: Path | None = None,
    probe: Path | None = None,
    probe_mode: str = "sign",
    write: Any = None,
    read: Any = input,
) -> None:
    """`steerbake chat`: one reply to `prompt`, or a loop reading user turns from stdin.
    write(text, newline) prints; read(prompt) returns the next user turn (EOFError ends)."""
    write = write or _print
    if backend == "transformers":
        from bake.runtime.transformers_chat import TransformersChat

        if control_vector is not None:
            raise InputError("--control-vector is llama.cpp's; with transformers, use --plan")
        session = TransformersChat.open(gguf_path, plan, probe, probe_mode)
        _loop(session.reply, prompt, write, read, max_tokens, temperature, seed)
        return
    if plan is not None or probe is not None:
        raise InputError(
            "--plan and --probe need --backend transformers: llama.cpp exposes no "
            "intermediate activations to read a probe from (for constant steering in "
            "llama.cpp, use --control-vector or a baked GGUF)"
        )
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
        _loop(rt.stream_chat, prompt, write, read, max_tokens, temperature, seed)


def _loop(
    stream: Any,
    prompt: str | None,
    write: Any,
    read: Any,
    max_tokens: int,
    temperature: float,
    seed: int,
) -> None:
    """One reply to `prompt`, or turns read until EOF or /exit; stream(messages, ...)
    yields the reply's pieces."""
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
        for piece in stream(messages, max_tokens=max_tokens, temperature=temperature, seed=seed):
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
