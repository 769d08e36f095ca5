"""Steer an existing GGUF without reconverting it: `steerbake gguf --base-gguf BASE --plan PLAN`.

The output holds every key and tensor of BASE unchanged, plus the plan's vectors as F32
`blk.N.ffn_down.bias` tensors (added to a bias BASE already has), for architectures whose
llama.cpp loader has that slot (bake.arch: `gguf_bias_slot`). Other architectures get one
line pointing to `steerbake cvec` with the unsteered file.

How it streams. Only the header (keys and tensor table) is parsed; tensor data is never
decoded, whatever its type (quantized, or a type id gguf-py does not know). The output is a
list of pieces, each either new bytes (header, tensor table, the new biases) or a byte range
of BASE; ranges are copied by the kernel (`copy_file_range`, or pread/write in 16 MiB chunks
where that is unavailable), so memory stays flat in file size.

Layout. llama.cpp requires tensor data to be contiguous in tensor-table order, each tensor
padded to `general.alignment` (gguf.cpp: "tensor X has offset N, expected M"). BASE's tensors
keep their order and relative offsets, so their data is one byte range; the new biases follow
at the end of the table and of the data (a bias BASE has is rewritten in place when its F32
bytes take the same room, else moved to the end). A tensor's padded size comes from its type
(GGML_QUANT_SIZES) or, for unknown types, from the distance to the next tensor in BASE. The
key `steerbake.patch.padding` (spaces) makes the data start at BASE's offset modulo 64 KiB,
which lets the kernel copy whole large pages.

A plan that ablates is refused in one line: it rewrites weight matrices, which a patch never
decodes (and a quantized file holds only rounded); the GGUF is rebuilt from the checkpoint.

Values. The bias of block N is v_N = alpha * m_N * s_N * u_N from the plan, float64 rounded
once to float32 (old bias + v_N when BASE has one). A GGUF does not say which dtype the HF
checkpoint had, so v_N is not rounded to it, unlike `steerbake gguf MODEL --plan`, which rounds
to the checkpoint dtype as a baked safetensors bias would; for a BF16 checkpoint the two files
differ by that rounding (~1e-3 in logits, FACTS.md). Granite's loader multiplies the MLP output
by `{arch}.residual_scale`, so its bias is v_N / residual_scale.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import gguf
import numpy as np

from bake.artifacts.plan import Plan, format_layers
from bake.artifacts.steering import Steering
from bake.errors import InputError, OutputError, PlanMismatchError, UnsupportedError
from bake.files.fileio import atomic_write_path, check_free_space, check_output_file
from bake.files.gguf_file import (
    STEERBAKE_PATCH_BASE_KEY,
    STEERBAKE_PLAN_KEY,
    STEERBAKE_VERSION_KEY,
    GgufLayout,
    TensorEntry,
    ffn_down_name,
    padded,
    read_layout,
)
from bake.model.arch import ArchSpec, arch_spec
from bake.model.fingerprint import Fingerprint

COPY_CHUNK = 16 * 1024 * 1024  # bytes per pread/write when copy_file_range is unavailable


# The kernel copies BASE's data fastest when source and output offsets agree modulo 64 KiB
# (measured on ext4: a 1.6 GB copy shifted by 8 KiB took ~1.5x as long as unshifted, by
# 64 KiB ~1.15x), so a key of spaces pads the header to that phase.
PHASE = 64 * 1024
PADDING_KEY = "steerbake.patch.padding"


# --------------------------------------------------------------------------- checks
def check_plan_against(layout: GgufLayout, plan: Plan) -> ArchSpec:
    """The plan's architecture, hidden size and layer count must be BASE's; BASE must be a
    whole model whose loader has the ffn_down bias slot."""
    path, arch = layout.path, layout.arch
    if plan.ablates:
        types = sorted({t.type_name for t in layout.tensors if len(t.dims) >= 2})
        raise InputError(
            f"the plan ablates (kind {plan.kind}): that rewrites weight matrices, which "
            f"{path.name} holds as {'/'.join(types) or 'unknown types'} and a patch never "
            "decodes; rebuild from the checkpoint: steerbake gguf MODEL --plan PLAN -o OUT.gguf "
            "(then steerbake quantize)"
        )
    if not arch or arch == "controlvector":
        raise InputError(
            f"{path} is {'a control vector' if arch else 'not a model GGUF'}, "
            "not a model; pass the model's .gguf as --base-gguf"
        )
    split_count = layout.values.get(gguf.Keys.Split.LLM_KV_SPLIT_COUNT, 1)
    if int(split_count) > 1:
        raise UnsupportedError(
            f"{path} is one part of a {split_count}-part split GGUF; merge it "
            "first (llama-gguf-split --merge) and patch the merged file"
        )
    spec = arch_spec(plan.model.architecture)
    if spec.gguf_arch != arch:
        raise PlanMismatchError(
            f"the plan was made for a {spec.model_type} model (llama.cpp arch "
            f"{spec.gguf_arch}) but {path} is arch {arch}; use a plan for this model"
        )
    hidden = layout.arch_value(gguf.Keys.LLM.EMBEDDING_LENGTH)
    blocks = layout.arch_value(gguf.Keys.LLM.BLOCK_COUNT)
    if hidden is None or blocks is None:
        raise InputError(
            f"{path} has no {arch}.embedding_length or {arch}.block_count key; "
            "it is not a complete model GGUF"
        )
    diffs = [
        f"{what} {mine} vs file's {theirs}"
        for what, mine, theirs in (
            ("hidden size", plan.model.hidden_size, int(hidden)),
            ("layer count", plan.model.num_layers, int(blocks)),
        )
        if mine != theirs
    ]
    if diffs:
        raise PlanMismatchError(
            f"the plan was made for another model than {path} "
            f"({'; '.join(diffs)}); use vectors fitted for this model"
        )
    moe = int(layout.arch_value(gguf.Keys.LLM.EXPERT_COUNT) or 0) > 0
    if not spec.gguf_bias_slot or moe:
        raise UnsupportedError(
            f"llama.cpp's {arch} loader has no ffn_down bias slot"
            f"{' (mixture of experts)' if moe else ''}, so {path.name} cannot be patched; "
            f"keep it unsteered and write a control vector: steerbake cvec PLAN -o "
            f"steering.gguf, then steerbake chat {path.name} --control-vector steering.gguf"
        )
    if STEERBAKE_PLAN_KEY in layout.values:
        raise InputError(
            f"{path} is already steered (it has {STEERBAKE_PLAN_KEY}); patch the "
            "unsteered GGUF, or the steering would apply twice"
        )
    return spec


@dataclass(frozen=True)
class GgufBase:
    """A model GGUF as the model a Steering is bound to: the plan's fingerprint once
    check_plan_against has passed; llama.cpp adds biases in F32, so values round to F32."""

    path: Path
    spec: ArchSpec
    fingerprint: Fingerprint
    layout: GgufLayout
    dtype: str = "F32"


def gguf_base(base: Path, plan: Plan) -> GgufBase:
    """BASE as a model for PLAN, after checking that BASE can take its steering."""
    layout = read_layout(Path(base))
    return GgufBase(Path(base), check_plan_against(layout, plan), plan.model, layout)


def open_gguf_steering(base: Path, plan: Path | Plan) -> Steering:
    """PLAN bound to the GGUF BASE (see gguf_base)."""
    plan_obj = plan if isinstance(plan, Plan) else Plan.load(Path(plan))
    steering = Steering.open(gguf_base(base, plan_obj), plan_obj)
    return replace(steering, plan_file=None if isinstance(plan, Plan) else Path(plan))


def bias_vectors(layout: GgufLayout, steering: Steering) -> dict[int, np.ndarray]:
    """block -> (hidden,) float32 bias to write: v_N (/ residual_scale), plus any old bias."""
    spec = steering.spec
    divisor = 1.0
    if spec.bias_divisor_key:  # granite: the MLP output is scaled by residual_scale
        divisor = float(layout.arch_value(gguf.Keys.LLM.RESIDUAL_SCALE) or 1.0)
    hidden = steering.model.fingerprint.hidden_size
    out: dict[int, np.ndarray] = {}
    for layer, v in steering.rounded.items():  # rounded to the plan's dtype, as every route
        weight = layout.tensor(ffn_down_name(layer, "weight"))
        if weight is None or len(weight.dims) != 2 or weight.dims[1] != hidden:
            raise UnsupportedError(
                f"{layout.path} has no {ffn_down_name(layer, 'weight')} of output size {hidden}, "
                "so there is no ffn_down bias slot to steer; write a control vector instead "
                "(steerbake cvec PLAN -o steering.gguf)"
            )
        total = np.asarray(v, dtype=np.float64) / divisor  # (hidden,)
        old = layout.tensor(ffn_down_name(layer, "bias"))
        if old is not None:
            if old.dims != (hidden,):
                raise UnsupportedError(
                    f"{layout.path}: existing {old.name} has dims {list(old.dims)}; steerbake "
                    f"adds to F32/F16/BF16 biases of length {hidden} only"
                )
            total = total + layout.read_floats(old)
        with np.errstate(over="ignore", invalid="ignore"):
            out[layer] = total.astype(np.float32)
    steering.check_written({ffn_down_name(n): b for n, b in out.items()}, "F32")
    return out


# --------------------------------------------------------------------------- the new file
@dataclass
class Copy:
    """`length` bytes of BASE from absolute offset `start`."""

    start: int
    length: int


Piece = bytes | Copy


def _kv_bytes(key: str, value: str) -> bytes:
    k, v = key.encode(), value.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<IQ", gguf.GGUFValueType.STRING, len(v)) + v


def _tensor_info_bytes(name: str, dims: tuple[int, ...], type_id: int, offset: int) -> bytes:
    n = name.encode()
    return (
        struct.pack("<Q", len(n))
        + n
        + struct.pack("<I", len(dims))
        + struct.pack(f"<{len(dims)}Q", *dims)
        + struct.pack("<IQ", type_id, offset)
    )


def patch_pieces(
    layout: GgufLayout, biases: dict[int, np.ndarray], new_keys: dict[str, str]
) -> list[Piece]:
    """The output file as pieces: header, BASE's keys (raw) + new keys + padding key, tensor
    table, data (BASE's tensors as one byte range, then the new biases)."""
    align = layout.alignment
    new_tensors = {ffn_down_name(layer, "bias"): b for layer, b in sorted(biases.items())}
    # table order = data order: BASE's tensors, so their bytes stay one contiguous range;
    # a bias BASE already has is replaced where it is when the F32 bytes take the same room,
    # every other bias goes at the end
    order: list[tuple[str, TensorEntry | None]] = []
    for t in layout.tensors:
        if t.name not in new_tensors:
            order.append((t.name, t))
        elif layout.sizes[t.name] == padded(new_tensors[t.name].nbytes, align):
            order.append((t.name, None))
    placed = {name for name, _ in order}
    order += [(name, None) for name in new_tensors if name not in placed]
    table: list[bytes] = []
    data: list[Piece] = []
    offset = 0
    f32 = int(gguf.GGMLQuantizationType.F32)
    for name, entry in order:
        if entry is None:  # an F32 bias of the plan
            payload = new_tensors[name].tobytes()
            table.append(_tensor_info_bytes(name, (len(new_tensors[name]),), f32, offset))
            data += [payload, b"\0" * (-len(payload) % align)]
            offset += padded(len(payload), align)
        else:
            table.append(_tensor_info_bytes(name, entry.dims, entry.type_id, offset))
            data += _copy_pieces(layout, entry)
            offset += layout.sizes[name]
    kept = [(s, e) for key, s, e in layout.kv_ranges if key not in {*new_keys, PADDING_KEY}]
    head = struct.pack(
        "<IIQQ", gguf.GGUF_MAGIC, layout.version, len(order), len(kept) + len(new_keys) + 1
    )
    pieces: list[Piece] = [head, *(Copy(s, e - s) for s, e in kept)]
    keys = [_kv_bytes(k, v) for k, v in new_keys.items()]
    header_len = sum(map(_piece_len, pieces)) + sum(map(len, keys)) + sum(map(len, table))
    # the padding key's spaces make the data section start at BASE's offset modulo PHASE
    spaces = (layout.data_start - header_len - len(_kv_bytes(PADDING_KEY, ""))) % PHASE
    keys.append(_kv_bytes(PADDING_KEY, " " * (spaces if align <= PHASE else 0)))
    header_len = sum(map(_piece_len, pieces)) + sum(map(len, keys)) + sum(map(len, table))
    pieces += [*keys, b"".join(table), b"\0" * (-header_len % align)]
    return _merge(pieces + data)


def _copy_pieces(layout: GgufLayout, t: TensorEntry) -> list[Piece]:
    """BASE's padded bytes of t; zeros where BASE ends before the padding does."""
    start = layout.data_start + t.offset
    length = min(layout.sizes[t.name], layout.file_size - start)
    return [Copy(start, length), b"\0" * (layout.sizes[t.name] - length)]


def _piece_len(p: Piece) -> int:
    return p.length if isinstance(p, Copy) else len(p)


def _merge(pieces: list[Piece]) -> list[Piece]:
    """Join adjacent byte ranges and adjacent literals; drop empty pieces."""
    out: list[Piece] = []
    for p in pieces:
        if not _piece_len(p):
            continue
        last = out[-1] if out else None
        if isinstance(p, Copy) and isinstance(last, Copy) and last.start + last.length == p.start:
            out[-1] = Copy(last.start, last.length + p.length)
        elif isinstance(p, bytes) and isinstance(last, bytes):
            out[-1] = last + p
        else:
            out.append(p)
    return out


def write_pieces(pieces: list[Piece], src: Path, dst: Path) -> None:
    """Write the pieces to dst; byte ranges of src are copied by the kernel where it can.

    dst is opened without O_TRUNC and cut to size at the end: ext4 (auto_da_alloc) flushes a
    file truncated to zero and rewritten when it is closed, which made the patch wait for
    the whole file to reach the disk (~2x the time of `cp`, measured)."""
    fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT, 0o666)
    try:
        with open(src, "rb") as fin:
            for p in pieces:
                if isinstance(p, Copy):
                    _copy_range(fin.fileno(), fd_out, p.start, p.length)
                else:
                    _write_all(fd_out, p)
        os.ftruncate(fd_out, os.lseek(fd_out, 0, os.SEEK_CUR))
    finally:
        os.close(fd_out)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_range(fd_in: int, fd_out: int, start: int, length: int) -> None:
    """length bytes of fd_in from `start` to fd_out's current position."""
    done = 0
    copy_file_range = getattr(os, "copy_file_range", None)
    while copy_file_range is not None and done < length:
        try:
            n = copy_file_range(fd_in, fd_out, min(length - done, 1 << 30), start + done)
        except OSError as e:
            if e.errno not in (
                errno.EXDEV,
                errno.ENOSYS,
                errno.EINVAL,
                errno.EOPNOTSUPP,
                errno.EPERM,
            ):
                raise
            break
        if n == 0:
            break
        done += n
    for chunk in _pread_chunks(fd_in, start + done, length - done):
        _write_all(fd_out, chunk)


def _pread_chunks(fd: int, start: int, length: int) -> Iterator[bytes]:
    while length > 0:
        chunk = os.pread(fd, min(COPY_CHUNK, length), start)
        if not chunk:
            raise OutputError("the base GGUF shrank while it was being copied; rerun the patch")
        yield chunk
        start, length = start + len(chunk), length - len(chunk)


# --------------------------------------------------------------------------- entry point
@dataclass
class PatchResult:
    output: Path
    arch: str
    layers: list[int]
    updated: list[int]  # blocks whose existing bias received the vector
    tensors: int
    bytes: int
    unknown_types: list[str]  # tensors copied untouched whose type gguf-py does not know
    seconds: float

    def summary(self) -> str:
        added = sorted(set(self.layers) - set(self.updated))
        parts = [f"added blk.N.ffn_down.bias for blocks {format_layers(added)}"] if added else []
        if self.updated:
            parts.append(
                f"added the vector to the existing bias of blocks {format_layers(self.updated)}"
            )
        unknown = (
            f"; {len(self.unknown_types)} tensors of types gguf-py does not know copied untouched"
            if self.unknown_types
            else ""
        )
        return (
            f"wrote {self.output}: arch {self.arch}, {self.tensors} tensors, "
            f"{self.bytes / 1e6:.1f} MB; {', '.join(parts)} (F32){unknown}; "
            f"{self.seconds:.1f} s"
        )


def patch_gguf(steering: Steering, out_path: str | Path, *, overwrite: bool = False) -> PatchResult:
    """Write the GGUF the steering is bound to (see open_gguf_steering) plus its steering as
    `out_path` (atomically), streaming the base's bytes."""
    from bake import __version__

    start = time.perf_counter()
    assert isinstance(steering.model, GgufBase)
    base, layout, out = steering.model.path, steering.model.layout, Path(out_path)
    inputs = [base, steering.vectors_file] + ([steering.plan_file] if steering.plan_file else [])
    check_output_file(out, inputs, overwrite=overwrite)
    biases = bias_vectors(layout, steering)
    keys = {
        STEERBAKE_VERSION_KEY: __version__,
        STEERBAKE_PLAN_KEY: json.dumps(steering.plan.to_json(), sort_keys=True),
        STEERBAKE_PATCH_BASE_KEY: base.name,
    }
    pieces = patch_pieces(layout, biases, keys)
    total = sum(_piece_len(p) for p in pieces)
    check_free_space(out.parent if str(out.parent) else Path("."), total + (1 << 20))
    with atomic_write_path(out) as tmp:
        write_pieces(pieces, base, tmp)
    return PatchResult(
        output=out,
        arch=layout.arch,
        layers=sorted(biases),
        updated=sorted(k for k in biases if layout.tensor(ffn_down_name(k, "bias")) is not None),
        tensors=len(layout.tensors)
        + sum(layout.tensor(ffn_down_name(k, "bias")) is None for k in biases),
        bytes=total,
        unknown_types=[t.name for t in layout.tensors if not t.known],
        seconds=time.perf_counter() - start,
    )


def patch_gguf_command(
    base: Path,
    plan: Path | None,
    out: Path,
    *,
    model: str | None,
    explicit_type: bool,
    overwrite: bool,
) -> str:
    """`steerbake gguf --base-gguf`: the argument checks, the patch, its summary line."""
    if plan is None:
        raise InputError("--base-gguf needs --plan PLAN: the plan's vectors are what is added")
    if model is not None:
        raise InputError(
            f"pass MODEL ({model}) or --base-gguf, not both: --base-gguf steers that file "
            "without reading the checkpoint"
        )
    if explicit_type:
        raise InputError(
            "--type does not apply to --base-gguf: every tensor keeps its type; quantize "
            "afterwards with `steerbake quantize`"
        )
    return patch_gguf(open_gguf_steering(base, plan), out, overwrite=overwrite).summary()
