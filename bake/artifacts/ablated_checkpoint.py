"""The ablation's output: a checkpoint whose residual writers (and token embedding, when the
plan says so) are orthogonalised, streamed shard by shard without loading the model.

Block l's writers (attention output and MLP down projections; in a mixture of experts every
expert's down projection and the shared expert's) become W <- (I - a r_l r_l^T) W and their
biases b <- (I - a r_l r_l^T) b; the embedding E <- E (I - a r r^T)
(bake.artifacts.orthogonalise). Only the shards holding a changed tensor are rewritten, under
their own names with the same tensor order and offsets, unchanged tensors copied byte for byte
inside them; every other shard is carried as the bias bake carries it (copied and hashed
once, or symlinked). When the embedding changes and the head is tied to it, the head is
untied (`tie_word_embeddings: false`, `lm_head.weight` = the original embedding's bytes, in
the embedding's shard), or the head would change too. In `both`, the down_proj biases
v_l / r are added as the bias route adds them (one new shard, `mlp_bias: true`).

Memory stays flat in model size: tensors stream through chunks of rows, shards are mapped
and each range read is released again (MADV_DONTNEED), unchanged bytes are read into the
output's buffers, and the output is written through a StreamWriter that hashes it for
SHA256SUMS as it goes. Shards are written side by side (up to `threads` at once: the
carried shards as one job, each rewritten shard as one), so the hashing of one file, which
no thread can share, overlaps the projection and hashing of another.
"""

from __future__ import annotations

import json
import struct
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bake.artifacts.bias_checkpoint import (
    bias_shard_name,
    bias_tensors,
    carry_shards,
    copy_other_files,
    other_files,
    shard_names,
)
from bake.artifacts.orthogonalise import Projection, rewritten_chunks
from bake.artifacts.steering_dir import file_sizes, steering_dir_files, write_steering_dir
from bake.errors import InputError, UnsupportedError
from bake.files.fileio import (
    StreamWriter,
    atomic_output_dir,
    check_free_space,
    write_sha256sums,
)
from bake.files.shards import DTYPE_SIZES, MappedShards, release_pages
from bake.files.tensor_bytes import decode, write_safetensors
from bake.model.checkpoint import SAFE_INDEX, Checkpoint

if TYPE_CHECKING:
    from bake.artifacts.steering import Steering

LM_HEAD = "lm_head.weight"
COPY_BYTES = 16 * 1024 * 1024  # unchanged bytes copied (and released) at a time


@dataclass(frozen=True)
class Rewrite:
    """How one output tensor is made: projected (a writer, or the embedding when
    `embedding`), or the bytes of another source tensor (`copy_of`: the untied head)."""

    projection: Projection | None = None
    embedding: bool = False
    copy_of: str | None = None


def is_tied(ckpt: Checkpoint) -> bool:
    """The head reads the embedding: tied in config, or no lm_head.weight on disk."""
    return bool(ckpt.config.get("tie_word_embeddings", False)) or LM_HEAD not in ckpt.tensors


def check_ablation_exact(ckpt: Checkpoint) -> None:
    spec = ckpt.spec
    if not spec.ablation_exact:
        raise UnsupportedError(
            f"{spec.model_type} cannot be orthogonalised exactly ({spec.ablation_note}); "
            "steer it with hooks (bake.runtime.hooks.hooked)"
        )


def rewrites(ckpt: Checkpoint, steering: Steering) -> dict[str, Rewrite]:
    """Output tensor name -> how it is made, for every tensor the ablation changes or adds."""
    check_ablation_exact(ckpt)
    spec = ckpt.spec
    pattern = spec.writer_pattern()
    by_layer: dict[int, list[str]] = {layer: [] for layer in steering.projections}
    for name in ckpt.tensors:
        m = pattern.match(name)
        if m and int(m.group(1)) in by_layer:
            by_layer[int(m.group(1))].append(name)
    out: dict[str, Rewrite] = {}
    for layer, names in sorted(by_layer.items()):
        check_writers(ckpt, layer, names)
        out.update({n: Rewrite(steering.projections[layer]) for n in sorted(names)})
    embed = steering.embed_projection
    if embed is not None:
        if spec.embed_tensor not in ckpt.tensors:
            raise InputError(f"{ckpt.path}: no {spec.embed_tensor} to orthogonalise")
        out[spec.embed_tensor] = Rewrite(embed, embedding=True)
        if is_tied(ckpt):
            out[LM_HEAD] = Rewrite(copy_of=spec.embed_tensor)
    return out


def check_writers(ckpt: Checkpoint, layer: int, names: list[str]) -> None:
    """Block `layer` holds one attention writer and its MLP's: one down projection, or every
    expert's (the config's count) plus the shared expert's when the config has one; anything
    else would make the bake differ from the hooks."""
    weights = [n for n in names if n.endswith(".weight")]
    experts = {n.split(".experts.")[1].split(".")[0] for n in weights if ".experts." in n}
    shared = any(".shared_expert." in n for n in weights)
    keys = [k for k in ckpt.spec.expert_count_keys if ckpt.config.get(k)]
    want_experts = int(ckpt.config[keys[0]]) if keys and experts else 0
    want_shared = bool(experts) and bool(ckpt.config.get("shared_expert_intermediate_size"))
    expected = 1 + (want_experts + want_shared if experts else 1)
    if len(weights) != expected or len(experts) != want_experts or shared != want_shared:
        raise InputError(
            f"{ckpt.path}: block {layer} has the residual writers {weights or 'none'}; expected "
            "the attention output projection and the MLP's down projection (every expert's, "
            "and the shared expert's, in a mixture of experts): the checkpoint does not follow "
            f"the {ckpt.spec.model_type} layout, so its ablation would not be exact"
        )


def _both_biases(
    ckpt: Checkpoint, steering: Steering
) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """`both`: the bias route's tensors (v_l / r on down_proj, zeros elsewhere), checked."""
    if not steering.plan.adds:
        return {}
    spec = ckpt.spec
    if spec.hf_route != "bias" or spec.bias_flag is None:
        raise UnsupportedError(
            f"{spec.model_type} has no bias slot in Hugging Face format ({spec.note}), so the "
            "additive part of a `both` plan cannot be baked beside the orthogonalised weights"
        )
    if ckpt.config.get(spec.bias_flag):
        raise UnsupportedError(
            f"{ckpt.path} already has MLP biases ({spec.bias_flag}=true); bake the unsteered "
            "source model instead"
        )
    biases = bias_tensors(ckpt, steering.added)
    steering.check_written({n: decode(raw, tag) for n, (tag, _, raw) in biases.items()}, ckpt.dtype)
    return biases


@dataclass
class AblationLayout:
    """What the output holds: rewritten tensors, the shards they live in, added tensors."""

    rewrites: dict[str, Rewrite]
    names: dict[str, str]  # source shard -> output name
    rewritten: list[str]  # source shards that are rewritten
    appended: dict[str, list[str]]  # source shard -> new tensors appended to it (the head)
    biases: dict[str, tuple[str, tuple[int, ...], bytes]]
    bias_shard: str | None

    @property
    def untied(self) -> bool:
        return LM_HEAD in self.rewrites


def plan_layout(ckpt: Checkpoint, steering: Steering) -> AblationLayout:
    out = rewrites(ckpt, steering)
    biases = _both_biases(ckpt, steering)
    appended: dict[str, list[str]] = {}
    if LM_HEAD in out and LM_HEAD not in ckpt.tensors:
        appended[ckpt.tensors[ckpt.spec.embed_tensor].shard] = [LM_HEAD]
    shards = {ckpt.tensors[n].shard for n in out if n in ckpt.tensors} | set(appended)
    names = shard_names(ckpt) if biases else {s: s for s in ckpt.shards}
    bias_shard = bias_shard_name(ckpt) if biases else None
    rewritten = [s for s in ckpt.shards if s in shards]
    return AblationLayout(out, names, rewritten, appended, biases, bias_shard)


def write_ablated_checkpoint(
    ckpt: Checkpoint,
    steering: Steering,
    output: Path,
    *,
    overwrite: bool,
    link: bool,
    workers: int = 1,
) -> dict[str, int]:
    """The orthogonalised checkpoint at `output` (built aside, renamed into place): rewritten
    shards, carried shards, the bias shard for `both`, index, config, the other files,
    steering/ and SHA256SUMS. `workers` threads compute the projections. Returns relative
    path -> size."""
    lay = plan_layout(ckpt, steering)
    sizes = {s: (ckpt.path / s).stat().st_size for s in ckpt.shards}
    needed = sum(sizes[s] for s in ckpt.shards if not link or s in lay.rewritten)
    needed += sum(_appended_bytes(ckpt, lay, s) for s in lay.appended)
    needed += sum(len(raw) for _, _, raw in lay.biases.values())
    check_free_space(output.parent, needed + (1 << 20))
    with atomic_output_dir(output, overwrite=overwrite) as tmp, ExitStack() as stack:
        source = MappedShards(ckpt.headers, stack)
        known = write_shards(ckpt, source, lay, tmp, link, workers)
        if lay.bias_shard:
            write_safetensors(tmp / lay.bias_shard, lay.biases)
        if ckpt.indexed or lay.biases:
            _write_index(ckpt, lay, tmp)
        (tmp / "config.json").write_text(json.dumps(baked_config(ckpt, lay), indent=2) + "\n")
        copy_other_files(ckpt.path, tmp)
        info = {
            "route": "ablate+bias" if lay.biases else "ablate",
            "rewritten_shards": [lay.names[s] for s in lay.rewritten],
            "rewritten_tensors": len(lay.rewrites),
            "untied_head": lay.untied,
            "source_shards": lay.names,
            "linked": link,
        }
        write_steering_dir(
            steering, tmp, info | ({"bias_shard": lay.bias_shard} if lay.biases else {})
        )
        write_sha256sums(tmp, known=known, skip_links=link)
        return file_sizes(tmp)


def write_shards(
    ckpt: Checkpoint,
    source: MappedShards,
    lay: AblationLayout,
    dest: Path,
    link: bool,
    threads: int,
) -> dict[str, str]:
    """Every shard into `dest`: the carried ones copied (or linked) as one job, each rewritten
    one as a job of its own, up to `threads` jobs at once, the threads left over computing
    projections inside each. Returns output name -> SHA-256 (hex) of the files written."""
    carried = {s: n for s, n in lay.names.items() if s not in lay.rewritten}
    copies = bool(carried) and not link  # links take no time: no thread of their own
    side_by_side = max(1, min(threads, len(lay.rewritten) + copies))
    workers = max(1, threads // side_by_side)

    def rewrite(shard: str) -> dict[str, str]:
        name = lay.names[shard]
        return {name: write_rewritten_shard(ckpt, source, shard, lay, dest / name, workers)}

    pool = ThreadPoolExecutor(side_by_side, thread_name_prefix="steerbake-shard")
    try:
        jobs = [pool.submit(carry_shards, ckpt, carried, dest, link)]
        jobs += [pool.submit(rewrite, shard) for shard in lay.rewritten]
        return {name: digest for job in jobs for name, digest in job.result().items()}
    finally:
        pool.shutdown(cancel_futures=True)  # after an error: no shard started in vain


def baked_config(ckpt: Checkpoint, lay: AblationLayout) -> dict[str, Any]:
    """The source's config with `tie_word_embeddings: false` when the head was untied and
    the bias flag set when biases were added; every other key unchanged."""
    config = dict(ckpt.config)
    if lay.untied:
        config["tie_word_embeddings"] = False
    if lay.biases:
        assert ckpt.spec.bias_flag is not None
        config[ckpt.spec.bias_flag] = True
    return config


def _appended_bytes(ckpt: Checkpoint, lay: AblationLayout, shard: str) -> int:
    return sum(_nbytes(ckpt, lay.rewrites[n].copy_of or n) for n in lay.appended.get(shard, []))


def _nbytes(ckpt: Checkpoint, name: str) -> int:
    t = ckpt.tensors[name]
    n = 1
    for x in t.shape:
        n *= x
    return n * DTYPE_SIZES[t.dtype]


def shard_header(ckpt: Checkpoint, shard: str, lay: AblationLayout) -> tuple[bytes, list[str]]:
    """(header bytes, tensor names in data order) of a rewritten shard: the source's tensors
    at their own offsets, then the appended ones."""
    header = ckpt.headers[shard]
    order = sorted(header.tensors, key=lambda n: header.tensors[n]["data_offsets"][0])
    meta: dict[str, Any] = {"__metadata__": header.metadata} if header.metadata else {}
    body = {n: header.tensors[n] for n in order}
    offset = max((t["data_offsets"][1] for t in header.tensors.values()), default=0)
    for name in lay.appended.get(shard, []):
        src = ckpt.tensors[lay.rewrites[name].copy_of or name]
        size = _nbytes(ckpt, src.name)
        body[name] = {
            "dtype": src.dtype,
            "shape": list(src.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
        order.append(name)
    blob = json.dumps(meta | body, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob, order


def write_rewritten_shard(
    ckpt: Checkpoint,
    source: MappedShards,
    shard: str,
    lay: AblationLayout,
    dest: Path,
    workers: int = 1,
) -> str:
    """Write one rewritten shard to `dest`: the source's bytes with its rewritten tensors
    replaced, then the appended ones; returns its SHA-256 (hex)."""
    header = ckpt.headers[shard]
    blob, order = shard_header(ckpt, shard, lay)
    with StreamWriter(dest, sha256=True) as sink:
        sink.write(blob)
        cursor = header.data_start
        for name in (n for n in order if n in header.tensors and n in lay.rewrites):
            begin, end = (header.data_start + x for x in header.tensors[name]["data_offsets"])
            _copy_range(source, shard, sink, cursor, begin)
            write_tensor(ckpt, source, name, lay.rewrites[name], sink.write, workers)
            cursor = end
        data_end = header.data_start + max(
            (t["data_offsets"][1] for t in header.tensors.values()), default=0
        )
        _copy_range(source, shard, sink, cursor, data_end)
        for name in lay.appended.get(shard, []):
            write_tensor(ckpt, source, name, lay.rewrites[name], sink.write)
        return str(sink.close())


def write_tensor(
    ckpt: Checkpoint,
    source: MappedShards,
    name: str,
    rewrite: Rewrite,
    write: Any,
    workers: int = 1,
) -> None:
    """Pass the bytes of output tensor `name` to write(), chunk by chunk (`workers` threads
    compute the chunks of a projection; the bytes do not depend on their number)."""
    src_name = rewrite.copy_of or name
    info = ckpt.tensors[src_name]
    raw = source.raw(src_name)
    shard, begin, _ = source.where[src_name]
    mapping = source.maps[shard]

    def release(a: int, b: int) -> None:
        release_pages(mapping, begin + a, b - a)

    if rewrite.projection is None:
        for start in range(0, len(raw), COPY_BYTES):
            write(raw[start : start + COPY_BYTES])
            release(start, min(len(raw), start + COPY_BYTES))
        return
    p = rewrite.projection
    chunks = rewritten_chunks(
        raw, info.dtype, info.shape, p, rewrite.embedding, workers=workers, release=release
    )
    for bits in chunks:
        write(bits)


def _copy_range(source: MappedShards, shard: str, sink: StreamWriter, start: int, end: int) -> None:
    """Bytes start:end of a source shard into the sink: read() into its buffers (the kernel
    copies from the page cache, no Python lock held, nothing mapped to release)."""
    with open(source.paths[shard], "rb", buffering=0) as f:
        f.seek(start)
        try:
            sink.copy_from(f, end - start)
        except EOFError as e:
            raise InputError(f"{source.paths[shard]} changed while it was read ({e})") from None


def _write_index(ckpt: Checkpoint, lay: AblationLayout, dest: Path) -> None:
    weight_map = {t.name: lay.names[t.shard] for t in ckpt.tensors.values()}
    for shard, added in lay.appended.items():
        weight_map.update(dict.fromkeys(added, lay.names[shard]))
    if lay.bias_shard:
        weight_map.update(dict.fromkeys(lay.biases, lay.bias_shard))
    sizes = [h.path.stat().st_size - h.data_start for h in ckpt.headers.values()]
    total = sum(sizes) + sum(_appended_bytes(ckpt, lay, s) for s in lay.appended)
    total += sum(len(raw) for _, _, raw in lay.biases.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (dest / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")


def planned_files(ckpt: Checkpoint, steering: Steering) -> list[str]:
    """The files write_ablated_checkpoint writes, relative to the output, sorted."""
    lay = plan_layout(ckpt, steering)
    weights = [*lay.names.values(), *([lay.bias_shard] if lay.bias_shard else [])]
    index = [SAFE_INDEX] if ckpt.indexed or lay.biases else []
    extra = [*other_files(ckpt.path), *steering_dir_files(), "SHA256SUMS", "config.json"]
    return sorted([*weights, *index, *extra])
