"""llama-cpp-python helpers: load a GGUF for exact comparison, apply a control vector, get
logits and greedy continuations, and chat.

Exactness needs float32 everywhere: the KV cache is f32 (`type_k = type_v = GGML_TYPE_F32`;
llama.cpp's default f16 cache alone moves logits by ~1e-2, FACTS.md) and every position's
logits are kept (`logits_all`).

llama-cpp-python has no control-vector file loader, so `control_vector_buffer` reads the
file the way llama.cpp's common loader does and hands the buffer to the low-level
`llama_set_adapter_cvec`:
- every tensor is `direction.N` (N >= 1), F32, 1-D, all of length n_embd;
- the buffer holds n_embd floats per block starting at block 1: slot N-1 = scale * direction.N
  (directions for the same block add up); its length is n_embd * max(N);
- the layer range is il_start = 1, il_end = n_layer (the loader's defaults); llama.cpp keeps
  a tensor for blocks 1..n_layer-1 only, so direction.{n_layer} and above are ignored.
The control vector is set before the first evaluation and never changed on a context.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bake.errors import InputError, UnsupportedError
from bake.runtime.threads import threads as configured_threads

INSTALL_HINT = "install llama-cpp-python (pip install 'steerbake[llama]')"
_SILENT_LOG: Any = None  # keeps the ctypes log callback alive


def llama_cpp_module() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise UnsupportedError(f"running a GGUF needs llama-cpp-python: {INSTALL_HINT}") from None
    return llama_cpp


def silence_llama_logs() -> None:
    """Route llama.cpp's own log lines to nowhere (errors still surface as exceptions)."""
    global _SILENT_LOG
    llama_cpp = llama_cpp_module()
    if _SILENT_LOG is None:
        _SILENT_LOG = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
        llama_cpp.llama_log_set(_SILENT_LOG, ctypes.c_void_p())


def control_vector_buffer(
    directions: Mapping[int, np.ndarray], n_embd: int, scale: float = 1.0
) -> np.ndarray:
    """(n_embd * max N,) float32: slot N-1 = scale * direction.N, as llama.cpp's loader."""
    if not directions:
        raise InputError("the control vector has no directions")
    if 0 in directions or min(directions) < 0:
        raise InputError("control vectors start at block 1 (direction.0 is refused by llama.cpp)")
    buf = np.zeros(n_embd * max(directions), dtype=np.float32)
    for block, v in directions.items():
        v = np.asarray(v, dtype=np.float32).reshape(-1)
        if v.shape[0] != n_embd:
            raise InputError(
                f"direction.{block} has length {v.shape[0]}, the model's hidden "
                f"size is {n_embd}: the control vector is for another model"
            )
        buf[(block - 1) * n_embd : block * n_embd] += np.float32(scale) * v
    return buf


class LlamaRuntime:
    """One GGUF in llama.cpp with f32 KV cache, all logits kept, optional control vector."""

    def __init__(
        self,
        gguf_path: Path,
        *,
        n_ctx: int = 512,
        control_vector: Any = None,
        scale: float = 1.0,
        seed: int = 0,
        n_threads: int | None = None,
        verbose: bool = False,
    ) -> None:
        llama_cpp = llama_cpp_module()
        path = Path(gguf_path)
        _check_gguf_file(path)
        if n_ctx < 0:
            raise InputError(
                f"context length {n_ctx}: give a number of tokens, or 0 for the model's own"
            )
        self.n_ctx = n_ctx
        if not verbose:
            silence_llama_logs()
        # one thread count for prompt and generation: llama-cpp-python's default batch
        # threads (all cores) spin against each other on a busy machine
        threads = n_threads or configured_threads()
        try:
            self.llm = llama_cpp.Llama(
                str(path),
                n_ctx=n_ctx,
                n_batch=n_ctx,
                n_ubatch=n_ctx,
                logits_all=True,
                type_k=llama_cpp.GGML_TYPE_F32,
                type_v=llama_cpp.GGML_TYPE_F32,
                seed=seed,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=verbose,
            )
        except (ValueError, RuntimeError) as e:
            raise InputError(
                f"llama.cpp cannot load {path} ({e}); the file is truncated, "
                "corrupted or not a model GGUF"
            ) from None
        self.path = path
        self.ignored_blocks: list[int] = []
        if control_vector is not None:
            self.apply_control_vector(control_vector, scale)

    @property
    def n_embd(self) -> int:
        return int(self.llm.n_embd())

    @property
    def n_layer(self) -> int:
        return int(llama_cpp_module().llama_model_n_layer(self.llm.model))

    def apply_control_vector(self, control_vector: Any, scale: float = 1.0) -> None:
        """Set a control vector (a path, or block -> vector) for every later evaluation."""
        if self.llm.n_tokens:
            raise InputError("set the control vector before the first evaluation")
        if isinstance(control_vector, (str, Path)):
            from bake.artifacts.control_vector import read_control_vector

            control_vector = read_control_vector(Path(control_vector))
        buf = control_vector_buffer(control_vector, self.n_embd, scale)
        self.ignored_blocks = sorted(b for b in control_vector if b >= self.n_layer)
        rc = llama_cpp_module().llama_set_adapter_cvec(
            self.llm.ctx,
            buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
            buf.size,
            self.n_embd,
            1,
            self.n_layer,
        )
        if rc != 0:
            raise InputError(
                f"llama.cpp refused the control vector (code {rc}); its hidden "
                f"size must be {self.n_embd}"
            )

    def tokenize(self, text: str, *, special: bool = True, add_bos: bool = False) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))

    def detokenize(self, ids: list[int]) -> str:
        return bytes(self.llm.detokenize(ids)).decode("utf-8", errors="replace")

    def logits(self, ids: list[int]) -> np.ndarray:
        """(len(ids), n_vocab) float32 logits of every position, from an empty cache."""
        self._check_length(len(ids))
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def greedy(
        self, ids: list[int], max_new_tokens: int, stop_ids: tuple[int, ...] = ()
    ) -> list[int]:
        """Greedy continuation (argmax each step), stopping after a stop token."""
        self._check_length(len(ids) + max_new_tokens)
        self.llm.reset()
        self.llm.eval(ids)
        out: list[int] = []
        for _ in range(max_new_tokens):
            token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            out.append(token)
            if token in stop_ids:
                break
            self.llm.eval([token])
        return out

    def stream_chat(
        self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float, seed: int = 0
    ) -> Iterator[str]:
        """Chat reply pieces, formatted with the GGUF's own chat template. A conversation
        that does not fit the context (llama-cpp-python raises ValueError) is an InputError."""
        try:
            chunks = self.llm.create_chat_completion(
                messages=messages,
                max_tokens=max_tokens,
                temperature=temperature,
                seed=seed,
                stream=True,
            )
            for chunk in chunks:
                piece = chunk["choices"][0]["delta"].get("content")
                if piece:
                    yield piece
        except ValueError:
            raise InputError(
                f"llama.cpp could not answer within a context of {self.n_ctx} tokens (the "
                "conversation is longer, or the context too small to batch it); raise --ctx "
                "or start a new chat"
            ) from None

    def _check_length(self, n: int) -> None:
        if n > self.llm.n_ctx():
            raise InputError(
                f"{n} tokens do not fit the context of {self.llm.n_ctx()}; use "
                "shorter prompts or fewer new tokens"
            )

    def close(self) -> None:
        self.llm.close()

    def __enter__(self) -> LlamaRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_gguf_file(path: Path) -> None:
    """Refuse what llama.cpp would crash on rather than report: a file that is not a GGUF,
    a damaged header or tensor table (bake.files.gguf_file reads it first), a vocabulary
    llama.cpp asserts on."""
    from bake.files.gguf_file import check_for_llama, read_layout

    if not path.is_file():
        raise InputError(f"{path} does not exist")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise InputError(
            f"{path} is not a GGUF file (no GGUF magic); pass a .gguf written by "
            "steerbake gguf or llama.cpp's converter"
        )
    check_for_llama(read_layout(path))
