"""Quantized GGUF builds through llama.cpp's own quantizer (llama-cpp-python's low-level
`llama_model_quantize`): `steerbake quantize IN.gguf OUT.gguf --type Q8_0|Q4_K_M`.

llama.cpp quantizes only 2-D (and 3-D expert) tensors whose names end in `weight`, so norms
and every bias, the steering `blk.N.ffn_down.bias` included, keep their type: a steered F32
GGUF keeps its steering exactly. The output is read back and each steering bias checked to
be F32. Q4_K_M needs rows that are multiples of 256 (the k-quant super-block); smaller rows
fall back to other types silently in llama.cpp, so the summary lists such fallbacks.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bake.errors import InputError, VerificationError
from bake.files.fileio import atomic_write_path, check_free_space, check_output_file
from bake.files.gguf_file import GgufLayout, TensorEntry, read_layout
from bake.options import OVERWRITE_HELP, opt
from bake.runtime.threads import threads as configured_threads

QUANT_TYPES = ("Q8_0", "Q4_K_M")
_FTYPE_NAMES = {"Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
_EXPECTED = {"Q8_0": {"Q8_0"}, "Q4_K_M": {"Q4_K", "Q5_K", "Q6_K"}}  # weight types, no fallback
_FLOAT_TYPES = {"F32", "F16", "BF16"}
_MAX_BITS_PER_WEIGHT = 8.5  # Q8_0, the largest type either ftype can pick (for space checks)
_LOG_ERROR = 4  # GGML_LOG_LEVEL_ERROR


@dataclass(frozen=True)
class QuantizeOptions:
    qtype: str = opt(
        help="llama.cpp quantization; steering biases stay F32.",
        flags=("--type",),
        metavar="|".join(QUANT_TYPES),
    )
    threads: int = opt(
        0,
        "Quantizer threads [default: --threads, $STEERBAKE_THREADS or all cores].",
        show_default=False,
    )
    overwrite: bool = opt(False, OVERWRITE_HELP)


@dataclass
class QuantizeResult:
    output: Path
    qtype: str
    types: dict[str, int]  # tensor type name -> count, read back from the output
    steering_biases: list[str]  # blk.N.ffn_down.bias tensors, checked F32
    fallbacks: dict[str, str] = field(default_factory=dict)  # weight -> type (not a k-quant)
    bytes: int = 0
    input_bytes: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        types = ", ".join(f"{n} {t}" for t, n in sorted(self.types.items()))
        steer = (
            f"; {len(self.steering_biases)} steering biases kept F32"
            if self.steering_biases
            else ""
        )
        fall = (
            f"; note: {len(self.fallbacks)} weights fell back to other types (rows not a "
            f"multiple of 256): {', '.join(sorted(set(self.fallbacks.values())))}"
            if self.fallbacks
            else ""
        )
        return (
            f"wrote {self.output}: {self.qtype}, {self.bytes / 1e6:.1f} MB "
            f"(from {self.input_bytes / 1e6:.1f} MB); tensors: {types}{steer}{fall}; "
            f"{self.seconds:.1f} s"
        )


def run_quantize(
    inp: str | Path, out_path: str | Path, qtype: str, *, overwrite: bool = False, threads: int = 0
) -> QuantizeResult:
    """Quantize IN to `qtype` with llama.cpp, atomically; steering biases stay F32."""
    start = time.perf_counter()
    inp, out = Path(inp), Path(out_path)
    qtype = qtype.upper()
    if qtype not in QUANT_TYPES:
        raise InputError(f"unknown quantization type {qtype!r}: choose {' or '.join(QUANT_TYPES)}")
    check_output_file(out, [inp], overwrite=overwrite)
    layout = read_layout(inp)
    _check_unquantized(layout)
    check_free_space(out.parent if str(out.parent) else Path("."), estimate_bytes(layout))
    with atomic_write_path(out) as tmp:
        _run_quantizer(inp, tmp, qtype, threads)
        result = check_output(read_layout(tmp), layout, qtype)
    result.output, result.bytes = out, out.stat().st_size
    result.input_bytes, result.seconds = layout.file_size, time.perf_counter() - start
    return result


def _check_unquantized(layout: GgufLayout) -> None:
    quantized = [t for t in layout.tensors if t.type_name not in _FLOAT_TYPES]
    if quantized:
        t = quantized[0]
        raise InputError(
            f"{layout.path} is already quantized ({t.name} is {t.type_name}); "
            "quantize the F32, F16 or BF16 GGUF instead (requantizing loses "
            "accuracy)"
        )
    if not layout.arch or layout.arch == "controlvector":
        raise InputError(f"{layout.path} is not a model GGUF; pass the model's .gguf")


def _quantizable(t: TensorEntry) -> bool:
    """llama.cpp's rule, in short: 2-D+ tensors named *weight, except norms."""
    return len(t.dims) >= 2 and t.name.endswith("weight") and "_norm.weight" not in t.name


def estimate_bytes(layout: GgufLayout) -> int:
    """Upper bound of the output size: quantizable weights at 8.5 bits, the rest as is."""
    total = layout.data_start + (1 << 20)
    for t in layout.tensors:
        size = layout.sizes[t.name]
        if _quantizable(t):
            elements = int(np.prod(t.dims, dtype=np.int64))
            size = min(size, math.ceil(elements * _MAX_BITS_PER_WEIGHT / 8) + layout.alignment)
        total += size
    return total


def _run_quantizer(inp: Path, out: Path, qtype: str, threads: int) -> None:
    from bake.runtime.llama import llama_cpp_module

    llama_cpp = llama_cpp_module()
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, _FTYPE_NAMES[qtype])
    params.nthread = threads if threads > 0 else configured_threads()
    with _collect_llama_errors() as errors:
        rc = llama_cpp.llama_model_quantize(
            str(inp).encode(), str(out).encode(), ctypes.byref(params)
        )
    if rc != 0:
        detail = errors[-1].strip() if errors else f"code {rc}"
        raise InputError(
            f"llama.cpp could not quantize {inp} ({detail}); check that it is a "
            "complete model GGUF that llama.cpp loads"
        )


_ERROR_LINES: list[str] | None = None  # collecting while not None
_LOG_CALLBACK: Any = None  # kept alive for as long as llama.cpp may call it


def _on_llama_log(level: int, text: bytes, user_data: Any) -> None:
    if _ERROR_LINES is not None and level == _LOG_ERROR:
        _ERROR_LINES.append(text.decode("utf-8", errors="replace"))


@contextlib.contextmanager
def _collect_llama_errors() -> Iterator[list[str]]:
    """llama.cpp's error log lines while the block runs; every other line is dropped."""
    global _ERROR_LINES, _LOG_CALLBACK
    from bake.runtime.llama import llama_cpp_module

    llama_cpp = llama_cpp_module()
    if _LOG_CALLBACK is None:
        _LOG_CALLBACK = llama_cpp.llama_log_callback(_on_llama_log)
    llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p())
    lines: list[str] = []
    _ERROR_LINES = lines
    try:
        yield lines
    finally:
        _ERROR_LINES = None


def check_output(out: GgufLayout, src: GgufLayout, qtype: str) -> QuantizeResult:
    """Every steering bias is F32 in the output as in the input; list k-quant fallbacks."""
    types = Counter(t.type_name for t in out.tensors)
    steering = [t for t in out.tensors if t.name.endswith("ffn_down.bias")]
    src_types = {t.name: t.type_name for t in src.tensors}
    changed = [t.name for t in steering if t.type_name != src_types.get(t.name)]
    if changed or any(t.type_name != "F32" for t in steering):
        raise VerificationError(
            f"llama.cpp changed the type of steering biases {changed}; "
            "they must stay F32 for the steering to be exact"
        )
    if len(out.tensors) != len(src.tensors):
        raise VerificationError(
            f"the quantized file has {len(out.tensors)} tensors, the input "
            f"{len(src.tensors)}; report this with the llama-cpp-python "
            "version"
        )
    fallbacks = {
        t.name: t.type_name
        for t in out.tensors
        if _quantizable(t) and t.type_name not in _EXPECTED[qtype]
    }
    return QuantizeResult(out.path, qtype, dict(types), [t.name for t in steering], fallbacks)
