"""Hugging Face checkpoint -> GGUF, on the `gguf` package, streaming.

Families: llama, mistral (written as arch llama), qwen2, qwen3 (bake.arch: `gguf_writer`).
Weights F32, F16 or BF16 (1-D tensors, norms and biases, stay F32 as llama.cpp expects);
tensor names from gguf's name map. The whole plan of the file (keys, tensor names, shapes,
types) is fixed first; then tensors are read from the safetensors shards in row chunks, in
file order, converted and written, so memory stays flat in model size. Casts are numpy
only (exact arithmetic or a lookup table), bit for bit torch's; torch is not imported.

For arch llama the q/k projections are regrouped from HF's rotate-half layout to llama.cpp's
interleaved one: per head, rows (2, d/2) -> (d/2, 2) (FACTS.md).

With a plan, for families whose llama.cpp loader has the bias slot (arch llama), block N gets
`blk.N.ffn_down.bias` = v_N rounded to the checkpoint dtype (what a baked bias holds, and
what the hook reference adds), stored F32. Other families get one line pointing to the
unsteered GGUF plus a control vector.

A plan that ablates is baked for every family the writer supports (no bias slot needed):
the residual writers of the plan's blocks (attn_output, ffn_down) and, when the plan says
so, token_embd hold the orthogonalised values, computed by the bake's own streaming code
(bake.artifacts.orthogonalise: float64 -> float32 -> the checkpoint dtype, the values a
baked checkpoint holds) and then cast to the GGUF type. A tied head is untied: llama.cpp
uses token_embd as the head when output.weight is absent, so output.weight is written with
the original embedding. For `both` without a bias slot (qwen2, qwen3) the file carries the
ablation only, and its additive part ships as a control vector (`steerbake cvec`); the key
`steerbake.baked` records which parts the weights carry, so nothing is applied twice.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import mmap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bake.artifacts.ablated_checkpoint import LM_HEAD, Rewrite, rewrites
from bake.artifacts.orthogonalise import rewritten_chunks
from bake.artifacts.plan import format_layers
from bake.artifacts.steering import Steering
from bake.errors import InputError, OutputError, UnsupportedError
from bake.files.fileio import StreamWriter, atomic_write_path, check_free_space, check_output_file
from bake.files.gguf_file import (
    STEERBAKE_BAKED_KEY,
    STEERBAKE_PLAN_KEY,
    STEERBAKE_VERSION_KEY,
    ffn_down_name,
)
from bake.files.tensor_bytes import bf16_bits_to_f32, f32_to_bf16_bits
from bake.model.arch import ARCHITECTURES, ArchSpec
from bake.model.checkpoint import Checkpoint, TensorInfo, open_checkpoint
from bake.model.resolve import TOY_NAME, resolve_model
from bake.options import OVERWRITE_HELP, opt
from bake.runtime.threads import threads
from export.llamacpp.cvec import steering_inputs

OUT_TYPES = ("F32", "F16", "BF16")
CHUNK_BYTES = 1024 * 1024  # source bytes read, cast and written at a time (cache-sized)
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some checkpoints carry; not weights
_SAFE_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def supported_families() -> list[str]:
    return sorted(t for t, s in ARCHITECTURES.items() if s.gguf_writer)


@dataclass(frozen=True)
class GgufOptions:
    """`run_gguf`'s choices besides MODEL and the output."""

    plan: Path | None = opt(
        None,
        "Bake PLAN: vectors into blk.N.ffn_down.bias (llama-arch GGUFs only), an ablation "
        "into the weights (every family).",
    )
    out_type: str = opt(
        "F32",
        "Weight type; norms and biases stay F32.",
        flags=("--type",),
        choices=("F32", "F16", "BF16"),
        case_sensitive=False,
    )
    base_gguf: Path | None = opt(
        None,
        "Instead of converting MODEL, copy this existing GGUF (any quantization) and add "
        "PLAN's vectors to it; needs --plan.",
    )
    overwrite: bool = opt(False, OVERWRITE_HELP)


@dataclass
class TensorJob:
    """One GGUF tensor: where its data comes from and how it is transformed."""

    name: str  # GGUF name, e.g. blk.3.attn_q.weight
    shape: tuple[int, ...]  # row-major (HF) shape; GGUF stores it reversed
    ggml_type: Any  # gguf.GGMLQuantizationType
    source: TensorInfo | None = None
    head_groups: int = 0  # q/k of arch llama: rows regrouped per head (0 = no permutation)
    data: np.ndarray | None = None  # generated tensors (bias, rope_freqs), final dtype
    rewrite: Rewrite | None = None  # orthogonalised (the ablation) before the cast

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * _ITEMSIZE[self.ggml_type.name]


_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2}


@dataclass
class GgufResult:
    output: Path
    arch: str
    out_type: str
    tokenizer: str
    tensors: int
    bytes: int
    baked_layers: list[int] = field(default_factory=list)
    seconds: float = 0.0
    sha256: str | None = None  # of the whole file, when asked for (hashed as written)
    ablated_layers: list[int] = field(default_factory=list)  # orthogonalised writers
    ablated_embedding: bool = False
    untied: bool = False  # output.weight written from the original embedding
    control_vector_layers: list[int] = field(default_factory=list)  # additive part left out

    def summary(self) -> str:
        steer = (
            f", steering baked into ffn_down bias of blocks {format_layers(self.baked_layers)}"
            if self.baked_layers
            else ""
        )
        if self.ablated_layers:
            steer += (
                f", writers of blocks {format_layers(self.ablated_layers)} orthogonalised"
                + (" and token_embd (head untied: output.weight)" if self.untied else "")
                + (" and token_embd" if self.ablated_embedding and not self.untied else "")
            )
        if self.control_vector_layers:
            steer += (
                f"; the additive part (blocks {format_layers(self.control_vector_layers)}) is "
                "not in this file: ship it as a control vector (steerbake cvec PLAN --model "
                "MODEL -o FILE.gguf)"
            )
        return (
            f"wrote {self.output}: arch {self.arch}, {self.out_type}, {self.tensors} "
            f"tensors, {self.bytes / 1e6:.1f} MB, tokenizer {self.tokenizer}{steer}, "
            f"{self.seconds:.1f} s"
        )


# --------------------------------------------------------------------------- entry point
def convert_to_gguf(
    model_dir: str | Path | None,
    out_path: str | Path,
    out_type: str = "F32",
    steering: Steering | None = None,
    *,
    overwrite: bool = False,
    name: str | None = None,
    sha256: bool = False,
    cancel: threading.Event | None = None,
) -> GgufResult:
    """Write MODEL as a GGUF at `out_path` (atomically); with `steering` (bound to MODEL),
    bake its rounded vectors into blk.N.ffn_down.bias (arch llama only). With `sha256`, the
    result carries the file's digest, computed from the bytes as they are written (no second
    read of the file).
    Setting `cancel` (from another thread) stops the writing at the next tensor."""
    start = time.perf_counter()
    src = resolve_model(model_dir)
    ckpt = steering.checkpoint if steering is not None else open_checkpoint(src)
    if ckpt.path.resolve() != src.resolve():
        raise InputError(f"the steering is bound to {ckpt.path}, not to {src}")
    spec = check_family(ckpt)
    out_type = out_type.upper()
    if out_type not in OUT_TYPES:
        raise InputError(f"unknown GGUF type {out_type!r}: choose one of {', '.join(OUT_TYPES)}")
    out = Path(out_path)
    inputs = steering_inputs(steering) if steering else [p for p in src.iterdir() if p.is_file()]
    check_output_file(out, inputs, overwrite=overwrite)
    bias = plan_biases(steering) if steering is not None else {}
    changed = rewrites(ckpt, steering) if steering is not None and steering.plan.ablates else {}
    import gguf

    arch = spec.gguf_arch
    writer = gguf.GGUFWriter(path=None, arch=arch)
    jobs = tensor_jobs(ckpt, spec, out_type, bias, changed)
    add_model_keys(writer, ckpt, spec, out_type)
    from export.llamacpp.vocab import add_vocab

    tokenizer = add_vocab(writer, src, spec.model_type, int(ckpt.config["vocab_size"]))
    add_metadata(writer, ckpt, jobs, name or _display_name(model_dir), steering, bias, changed)
    total = sum(j.nbytes for j in jobs)
    check_free_space(out.parent, total + (1 << 20))
    with atomic_write_path(out) as tmp:
        digest = write_gguf(writer, jobs, tmp, ckpt, sha256=sha256, cancel=cancel)
    return GgufResult(
        out,
        arch,
        out_type,
        tokenizer,
        len(jobs),
        out.stat().st_size,
        sorted(bias),
        time.perf_counter() - start,
        digest,
        ablated_layers=sorted(steering.projections) if changed and steering else [],
        ablated_embedding=spec.embed_tensor in changed,
        untied=LM_HEAD in changed,
        control_vector_layers=sorted(steering.added) if steering and not bias else [],
    )


def check_family(ckpt: Checkpoint) -> ArchSpec:
    spec = ckpt.spec
    if not spec.gguf_writer:
        raise UnsupportedError(
            f"the GGUF writer does not support {spec.model_type}; it "
            f"supports {', '.join(supported_families())}"
        )
    act = ckpt.config.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedError(
            f"hidden_act {act!r}: llama.cpp's {spec.gguf_arch} graph uses "
            "silu, so the GGUF would compute something else"
        )
    return spec


def _display_name(model_dir: str | Path | None) -> str | None:
    """A Hub id or 'toy-refuser' names the model; a folder leaves it to the model card."""
    text = str(model_dir) if model_dir is not None else "toy-refuser"
    return None if Path(text).expanduser().exists() else text


# --------------------------------------------------------------------------- steering
def plan_biases(steering: Steering) -> dict[int, np.ndarray]:
    """block -> ffn_down bias (float32) = steering.rounded[N] (what a hook adds); none for a
    plan that only ablates, nor for the additive part of `both` on a family without the slot
    (it ships as a control vector)."""
    ckpt, spec = steering.checkpoint, steering.spec
    if not steering.plan.adds or (steering.kind == "both" and not spec.gguf_bias_slot):
        return {}
    if not spec.gguf_bias_slot:
        raise UnsupportedError(
            f"llama.cpp's {spec.gguf_arch} loader has no ffn_down bias slot (it refuses extra "
            "tensors), so the plan cannot be baked into the GGUF; write the unsteered GGUF "
            "(steerbake gguf MODEL -o model.gguf) plus a control vector (steerbake cvec PLAN "
            "-o steering.gguf --model MODEL)"
        )
    baked = [n for n in ckpt.tensors if n.endswith(f"{spec.down_proj}.bias")]
    if baked:
        raise InputError(
            f"{ckpt.path} already has down_proj biases ({baked[0]}, ...): it looks "
            "baked already; convert it without --plan, or bake the original model"
        )
    biases = {layer: np.asarray(v, np.float32) for layer, v in steering.rounded.items()}
    steering.check_written({ffn_down_name(n): b for n, b in biases.items()}, "F32")
    return biases


# --------------------------------------------------------------------------- hyperparameters
def rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """transformers 5 keeps rope settings in rope_parameters, 4.x in rope_scaling/rope_theta."""
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    params.setdefault("rope_type", params.get("type", "default"))
    return params


def add_model_keys(writer: Any, ckpt: Checkpoint, spec: ArchSpec, out_type: str) -> None:
    """Architecture hyperparameters, as llama.cpp's loader reads them."""
    import gguf

    c = ckpt.config
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_block_count(ckpt.num_layers)
    writer.add_context_length(int(c.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(ckpt.hidden_size)
    writer.add_feed_forward_length(int(c["intermediate_size"]))
    writer.add_head_count(int(c["num_attention_heads"]))
    writer.add_head_count_kv(int(c.get("num_key_value_heads") or c["num_attention_heads"]))
    writer.add_layer_norm_rms_eps(float(c.get("rms_norm_eps", 1e-6)))
    if isinstance(c.get("head_dim"), int):
        writer.add_key_length(c["head_dim"])
        writer.add_value_length(c["head_dim"])
    rope = rope_parameters(c)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    _add_rope_scaling(writer, rope, spec)
    if spec.gguf_arch == "llama":
        writer.add_vocab_size(int(c["vocab_size"]))
        writer.add_rope_dimension_count(head_dim(c))
    writer.add_file_type(_FILE_TYPES[out_type]())
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


_FILE_TYPES = {
    "F32": lambda: __import__("gguf").LlamaFileType.ALL_F32,
    "F16": lambda: __import__("gguf").LlamaFileType.MOSTLY_F16,
    "BF16": lambda: __import__("gguf").LlamaFileType.MOSTLY_BF16,
}


def head_dim(config: dict[str, Any]) -> int:
    hd = config.get("head_dim")
    return (
        int(hd) if isinstance(hd, int) else config["hidden_size"] // config["num_attention_heads"]
    )


def _add_rope_scaling(writer: Any, rope: dict[str, Any], spec: ArchSpec) -> None:
    import gguf

    kind = rope["rope_type"]
    if kind == "default":
        return
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    elif kind == "llama3" and spec.gguf_arch == "llama":
        pass  # carried by the rope_freqs tensor (llama3_rope_factors)
    else:
        raise UnsupportedError(
            f"rope type {kind!r} is not supported by the GGUF writer for "
            f"{spec.model_type}; supported: default, linear, yarn"
            + (", llama3" if spec.gguf_arch == "llama" else "")
        )


def llama3_rope_factors(config: dict[str, Any]) -> np.ndarray:
    """Per-frequency divisors of Llama 3's rope scaling, (head_dim/2,) float32.

    wavelength w_i = 2 pi / theta^(-2i/d); factor 1 for w < L/high, `factor` for w > L/low,
    and a smooth blend between (L = original context length)."""
    rope = rope_parameters(config)
    dim = head_dim(config)
    freqs = 1.0 / (float(rope["rope_theta"]) ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(
        rope.get(
            "original_max_position_embeddings", config.get("original_max_position_embeddings", 8192)
        )
    )
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / float(f)
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


# --------------------------------------------------------------------------- tensors
def _allowed_bias(hf_name: str, config: dict[str, Any], model_type: str) -> bool:
    """Whether transformers would load this bias: a bias it silently drops would be applied
    by llama.cpp (FACTS.md), so the GGUF would compute a different model."""
    if ".mlp." in hf_name:
        return bool(config.get("mlp_bias", False))
    if model_type == "qwen2" and any(f"self_attn.{p}_proj" in hf_name for p in "qkv"):
        return True
    return bool(config.get("attention_bias", False))


def tensor_jobs(
    ckpt: Checkpoint,
    spec: ArchSpec,
    out_type: str,
    biases: dict[int, np.ndarray],
    changed: dict[str, Rewrite] | None = None,
) -> list[TensorJob]:
    """Every GGUF tensor, in source file order (sequential reads), then generated ones;
    `changed` (from the ablation) marks the tensors written orthogonalised, and an untied
    head (LM_HEAD) adds output.weight from the original embedding."""
    changed = changed or {}
    import gguf

    arch_enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[spec.gguf_arch]
    tmap = gguf.get_tensor_name_map(arch_enum, ckpt.num_layers)
    c = ckpt.config
    tied = bool(c.get("tie_word_embeddings", False))
    order = {s: i for i, s in enumerate(ckpt.shards)}
    infos = sorted(ckpt.tensors.values(), key=lambda t: (order[t.shard], _offset(ckpt, t)))
    jobs: list[TensorJob] = []
    for info in infos:
        if info.name.endswith(_IGNORED_SUFFIXES) or (tied and info.name == "lm_head.weight"):
            continue
        gname = tmap.get_name(info.name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise UnsupportedError(
                f"{ckpt.path}: tensor {info.name} has no llama.cpp "
                f"counterpart in arch {spec.gguf_arch}; the checkpoint is "
                f"not a plain {spec.model_type} model"
            )
        if info.name.endswith(".bias") and not _allowed_bias(info.name, c, spec.model_type):
            raise InputError(
                f"{ckpt.path}: {info.name} is on disk but the config does not "
                "enable it, so transformers ignores it while llama.cpp would add "
                "it; fix config.json (mlp_bias/attention_bias) or drop the tensor"
            )
        if info.dtype not in _SAFE_DTYPES:
            raise UnsupportedError(
                f"{info.name} is {info.dtype}; the GGUF writer reads F32, F16 and BF16 checkpoints"
            )
        rewrite = changed.get(info.name)
        jobs.append(
            TensorJob(
                gname,
                info.shape,
                _gguf_type(info.shape, out_type),
                info,
                _head_groups(info.name, spec, c),
                rewrite=rewrite if rewrite is not None and rewrite.projection is not None else None,
            )
        )
        if info.name == spec.embed_tensor and LM_HEAD in changed:  # untied: the original head
            head = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.OUTPUT] + ".weight"
            jobs.append(TensorJob(head, info.shape, _gguf_type(info.shape, out_type), info))
    if spec.gguf_arch == "llama" and rope_parameters(c)["rope_type"] == "llama3":
        factors = llama3_rope_factors(c)
        rope_name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        jobs.append(
            TensorJob(rope_name, factors.shape, gguf.GGMLQuantizationType.F32, data=factors)
        )
    for layer, b in sorted(biases.items()):
        # llama.cpp's optional down-projection bias, blk.N.ffn_down.bias
        bias_name = ffn_down_name(layer, "bias")
        jobs.append(TensorJob(bias_name, b.shape, gguf.GGMLQuantizationType.F32, data=b))
    return jobs


def _offset(ckpt: Checkpoint, info: TensorInfo) -> int:
    return int(ckpt.headers[info.shard].tensors[info.name]["data_offsets"][0])


def _gguf_type(shape: tuple[int, ...], out_type: str) -> Any:
    import gguf

    if len(shape) < 2:
        return gguf.GGMLQuantizationType.F32  # norms and biases: llama.cpp computes them in F32
    return getattr(gguf.GGMLQuantizationType, out_type)


def _head_groups(hf_name: str, spec: ArchSpec, config: dict[str, Any]) -> int:
    """Heads of a q/k projection that needs the rotate-half -> interleaved permutation."""
    if spec.gguf_arch != "llama":
        return 0  # qwen2/qwen3 use NEOX rope: HF layout as is
    if ".self_attn.q_proj." in hf_name:
        return int(config["num_attention_heads"])
    if ".self_attn.k_proj." in hf_name:
        return int(config.get("num_key_value_heads") or config["num_attention_heads"])
    return 0


def permute_rows(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """HF rotate-half -> llama.cpp interleaved rope layout, per head:
    (n_heads, 2, d/2, ...) -> (n_heads, d/2, 2, ...)."""
    shape = rows.shape
    return (
        rows.reshape(n_heads, 2, shape[0] // n_heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
    )


# --------------------------------------------------------------------------- metadata
def add_metadata(
    writer: Any,
    ckpt: Checkpoint,
    jobs: list[TensorJob],
    name: str | None,
    steering: Steering | None,
    biases: dict[int, np.ndarray] | None = None,
    changed: dict[str, Rewrite] | None = None,
) -> None:
    """general.* keys from the model card (README.md) and config via gguf's Metadata: name,
    base model, tags, license where known; plus steerbake's version, the baked plan and which
    of its parts the weights carry."""
    import gguf

    from bake import __version__

    total = sum(j.numel for j in jobs)
    meta = gguf.Metadata.load(None, ckpt.path, name, total)
    meta.name = meta.name or ckpt.path.resolve().name
    if meta.size_label is None:
        meta.size_label = gguf.size_label(total, total, 0, 0)
    if steering is not None:
        meta.tags = [*(meta.tags or []), "steerbake", "steered"]
    meta.set_gguf_meta_model(writer)
    writer.add_string(STEERBAKE_VERSION_KEY, __version__)
    if steering is not None:
        plan_json = json.dumps(steering.plan.to_json(), sort_keys=True)
        writer.add_string(STEERBAKE_PLAN_KEY, plan_json)
        parts = ["ablate"] * bool(changed) + ["add"] * bool(biases)
        writer.add_string(STEERBAKE_BAKED_KEY, ",".join(sorted(parts)))


# --------------------------------------------------------------------------- writing
def write_gguf(
    writer: Any,
    jobs: list[TensorJob],
    path: Path,
    ckpt: Checkpoint,
    *,
    sha256: bool = False,
    cancel: threading.Event | None = None,
) -> str | None:
    """Header, keys and tensor table through GGUFWriter; then the whole file again through a
    StreamWriter (header bytes read back, then the tensor data): each tensor is taken from
    the mapped shard in chunks of rows, permuted and cast into the StreamWriter's buffer,
    which hashes and writes it in its own threads (O_DIRECT where possible), so memory stays
    flat in model size. Returns the file's SHA-256 (hex) with `sha256`."""
    for job in jobs:
        writer.add_tensor_info(
            job.name, job.shape, _np_dtype(job.ggml_type), job.nbytes, raw_dtype=job.ggml_type
        )
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    header = path.read_bytes()
    align = writer.data_alignment
    with StreamWriter(path, sha256=sha256) as sink, _ShardReader(ckpt, sink) as reader:
        sink.write(header + b"\0" * (-len(header) % align))
        for job in jobs:
            if cancel is not None and cancel.is_set():
                raise OutputError(f"{path}: cancelled")
            if job.data is not None:
                sink.write(job.data.reshape(-1).view(np.uint8))
            else:
                reader.write_tensor(job)
            sink.write(b"\0" * (-job.nbytes % align))
        return sink.close()


def _np_dtype(ggml_type: Any) -> Any:
    return {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}[ggml_type.name]


_SOURCE_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2}
_BITS = {"F32": np.uint32, "F16": np.uint16, "BF16": np.uint16}


class _ShardReader:
    """Streams checkpoint tensors into the GGUF's StreamWriter. Shards are mapped, so a
    chunk is cast from the page cache straight into the StreamWriter's buffer (no copies on
    either side); once cast, its pages leave this process's mapping again (MADV_DONTNEED;
    the page cache keeps them), so memory stays flat in model size."""

    def __init__(self, ckpt: Checkpoint, sink: StreamWriter) -> None:
        self.ckpt = ckpt
        self.sink = sink
        self.maps: dict[str, mmap.mmap] = {}

    def __enter__(self) -> _ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        for shard in self.maps.values():
            with contextlib.suppress(BufferError):  # a view kept by a traceback: GC unmaps
                shard.close()

    def _map(self, shard: str) -> mmap.mmap:
        if shard not in self.maps:
            with open(self.ckpt.path / shard, "rb") as f:
                self.maps[shard] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            _madvise(self.maps[shard], "MADV_SEQUENTIAL", 0, 0)
        return self.maps[shard]

    def write_tensor(self, job: TensorJob) -> None:
        info = job.source
        assert info is not None
        header = self.ckpt.headers[info.shard]
        start = header.data_start + int(header.tensors[info.name]["data_offsets"][0])
        shard = self._map(info.shard)
        itemsize = _SOURCE_ITEMSIZE[info.dtype]
        row_bytes = math.prod(info.shape[1:]) * itemsize
        if start + math.prod(info.shape) * itemsize > len(shard):
            raise self._truncated(info)
        out_size = _ITEMSIZE[job.ggml_type.name]
        if job.rewrite is not None:
            self._write_rewritten(job, shard, start, out_size)
            return
        for r0, r1 in _row_chunks(job, row_bytes):
            n = (r1 - r0) * row_bytes
            begin = start + r0 * row_bytes
            elems = np.frombuffer(shard, np.uint8, n, begin).view(_BITS[info.dtype])
            if job.head_groups:
                heads = job.head_groups * (r1 - r0) // info.shape[0]
                elems = permute_rows(elems.reshape(r1 - r0, -1), heads).reshape(-1)
            if info.dtype == job.ggml_type.name:
                self.sink.write(elems)
            else:  # cast straight into the sink's buffer
                cast = functools.partial(_cast_into, elems, info.dtype, job.ggml_type.name)
                self.sink.write_into(n // itemsize * out_size, cast)
            _madvise(shard, "MADV_DONTNEED", begin, n)

    def _write_rewritten(self, job: TensorJob, shard: mmap.mmap, start: int, out_size: int) -> None:
        """An orthogonalised tensor: the bake's chunks (element bits in the checkpoint dtype),
        each cast to the GGUF type. Writers and the embedding are never q/k: no permutation."""
        info, rewrite = job.source, job.rewrite
        assert info is not None and rewrite is not None and rewrite.projection is not None
        assert not job.head_groups
        size = math.prod(info.shape) * _SOURCE_ITEMSIZE[info.dtype]
        raw = memoryview(shard)[start : start + size]

        def release(a: int, b: int) -> None:
            _madvise(shard, "MADV_DONTNEED", start + a, b - a)

        p = rewrite.projection
        chunks = rewritten_chunks(
            raw, info.dtype, info.shape, p, rewrite.embedding, workers=threads(), release=release
        )
        for bits in chunks:
            if info.dtype == job.ggml_type.name:
                self.sink.write(bits)
            else:
                cast = functools.partial(_cast_into, bits, info.dtype, job.ggml_type.name)
                self.sink.write_into(bits.size * out_size, cast)
        _madvise(shard, "MADV_DONTNEED", start, size)

    def _truncated(self, info: TensorInfo) -> InputError:
        return InputError(
            f"{self.ckpt.path / info.shard}: truncated while reading {info.name}; copy or "
            "download the shard again"
        )


def _cast_into(elems: np.ndarray, src: str, dst: str, view: memoryview) -> None:
    convert_elements(elems, src, dst, np.frombuffer(view, np.uint8))


def _row_chunks(job: TensorJob, row_bytes: int) -> list[tuple[int, int]]:
    """[(r0, r1)] row ranges of about CHUNK_BYTES source bytes (small enough to stay in the
    CPU cache between read, cast and write); whole heads for q/k, so the permutation stays
    inside a chunk."""
    info = job.source
    assert info is not None
    rows = info.shape[0] if info.shape else 1
    step = max(1, CHUNK_BYTES // max(1, row_bytes))
    if job.head_groups:
        per_head = rows // job.head_groups
        step = max(per_head, step // per_head * per_head)
    return [(r0, min(rows, r0 + step)) for r0 in range(0, rows, step)]


def _madvise(mapping: mmap.mmap, advice: str, start: int, length: int) -> None:
    """madvise from the page holding `start` up to the page holding start + length, that
    one excluded (the next chunk still reads it; length 0: to the end). A hint: never an
    error, and a no-op where the platform lacks it."""
    option = getattr(mmap, advice, None)
    if option is None or not hasattr(mapping, "madvise"):
        return
    first = start // mmap.PAGESIZE * mmap.PAGESIZE
    end = len(mapping) if length == 0 else (start + length) // mmap.PAGESIZE * mmap.PAGESIZE
    if end > first:
        with contextlib.suppress(OSError, ValueError):
            mapping.madvise(option, first, end - first)


# --------------------------------------------------------------------------- casts
_F16_QUIET = np.uint16(0x0200)  # quiet-NaN bit of float16
_F32_QUIET = np.uint32(0x0040_0000)  # quiet-NaN bit of float32


def convert_elements(elems: np.ndarray, src: str, dst: str, out: np.ndarray) -> None:
    """Raw elements (bit patterns of dtype `src`) -> dtype `dst` bytes written into `out`.

    Rounds to nearest even, bit for bit as torch's `.to()` (and gguf's converters) do: a
    16-bit source is looked up in a table of its 65536 patterns (128 or 256 KB, stays in
    cache; the tests compare every pattern with torch), BF16 -> F16 mostly by arithmetic;
    float32 is cast by numpy."""
    if src == dst:
        out[:] = np.ascontiguousarray(elems).view(np.uint8).reshape(-1)
        return
    target = out.view(_BITS[dst])
    if (src, dst) == ("BF16", "F16"):
        _bf16_to_f16(elems, target)
        return
    if src == "F32":
        target[:] = _from_f32(elems.view(np.float32), dst)
        return
    # mode="clip": 16-bit indices are always in range, and the default mode buffers `out`
    np.take(cast_table(src, dst), elems, out=target, mode="clip")


def _bf16_to_f16(bits: np.ndarray, out: np.ndarray) -> None:
    """BF16 -> F16 patterns: the common case by arithmetic (~30% faster than the table).

    With e the BF16 exponent (bias 127) and m its 7-bit mantissa, a value that is an F16
    normal number (113 <= e <= 142: 2^-14 <= |x| < 2^16) converts exactly, no rounding:
    F16 = sign | (e - 112) << 10 | m << 3 = sign | ((bits & 0x7FFF) - 0x3800) << 3.
    Zero, F16 subnormals, overflow, inf and NaN (|bits| outside [0x3880, 0x4780), ~0.2% of
    typical weights) come from the table. uint16 arithmetic wraps mod 2^16."""
    magnitude = bits & 0x7FFF
    np.left_shift(magnitude, 3, out=out)
    out -= 0xC000  # (0x3800 << 3) mod 2^16
    out |= bits & 0x8000
    magnitude -= 0x3880  # values below the range wrap to large ones
    odd = np.flatnonzero(magnitude >= 0x4780 - 0x3880)
    out[odd] = cast_table("BF16", "F16")[bits[odd]]


@functools.cache
def cast_table(src: str, dst: str) -> np.ndarray:
    """(65536,) dtype-`dst` bit patterns of every 16-bit `src` pattern, cast."""
    return _from_f32(_to_f32(np.arange(1 << 16, dtype=np.uint16), src), dst)


def _to_f32(bits: np.ndarray, src: str) -> np.ndarray:
    """16-bit patterns -> float32, exact. F16 signalling NaNs come out quiet (as the x86
    widening instruction torch uses leaves them); BF16 widening is a shift that keeps them."""
    if src == "BF16":
        return bf16_bits_to_f32(bits)
    wide = bits.view(np.float16).astype(np.float32)
    wide.view(np.uint32)[np.isnan(wide)] |= _F32_QUIET
    return wide


def _from_f32(values: np.ndarray, dst: str) -> np.ndarray:
    """float32 -> dtype `dst` bit patterns, round to nearest even; overflow gives inf.
    NaNs: F16 keeps the top of the payload and sets the quiet bit (torch's vectorised cast);
    BF16 gives 0x7FC0 (torch's scalar cast and bake.tensor_bytes; torch's vectorised float32
    -> bfloat16 cast writes 0xFFFF instead: both are NaN)."""
    if dst == "F32":
        return values.view(np.uint32)
    if dst == "BF16":
        return f32_to_bf16_bits(values)
    with np.errstate(over="ignore", invalid="ignore"):
        half = values.astype(np.float16).view(np.uint16)
    half[np.isnan(values)] |= _F16_QUIET
    return half


def run_gguf(
    model: str | None,
    output: Path,
    out_type: str = "F32",
    plan: Path | None = None,
    *,
    base_gguf: Path | None = None,
    explicit_type: bool = False,
    overwrite: bool = False,
) -> str:
    """`steerbake gguf`: MODEL (with PLAN baked in: vectors where the family has a bias slot,
    an ablation everywhere) as a GGUF, or --base-gguf BASE patched with PLAN. Returns the
    summary line."""
    if base_gguf is not None:
        from export.llamacpp.patch import patch_gguf_command

        return patch_gguf_command(
            base_gguf, plan, output, model=model, explicit_type=explicit_type, overwrite=overwrite
        )
    from bake.artifacts.steering import open_steering

    steering = open_steering(model, plan) if plan is not None else None
    summary = convert_to_gguf(model, output, out_type, steering, overwrite=overwrite).summary()
    return summary + (f" (no MODEL given: the default, {TOY_NAME})" if model is None else "")
