"""The bias route's output: a checkpoint whose down_proj carries the steering as a bias.

Block l's down_proj gets bias b_l = v_l / r (r = the family's residual multiplier, 1 for
llama), so  block_l(x) = hooked block_l(x)  exactly. Unchanged shards are carried over byte
for byte (copied and hashed once, or symlinked in link mode); the new biases go into one new
shard; index and config are rewritten (`mlp_bias: true`, companion biases as zeros)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bake.artifacts.steering_dir import file_sizes, steering_dir_files, write_steering_dir
from bake.errors import InputError, UnsupportedError, warn
from bake.files.fileio import (
    atomic_output_dir,
    check_free_space,
    copy_hashed,
    fast_copy,
    write_sha256sums,
)
from bake.files.tensor_bytes import decode, encode, write_safetensors
from bake.model.checkpoint import PICKLED_SUFFIXES, SAFE_INDEX, SAFE_SINGLE, Checkpoint

if TYPE_CHECKING:
    from bake.artifacts.steering import Steering

BIAS_SHARD = "model-steering-bias.safetensors"


# Files of the source that are not carried into a baked checkpoint.
_SKIP = {SAFE_SINGLE, SAFE_INDEX, "config.json", "README.md", "SHA256SUMS", ".gitattributes"}
# Weights in other formats beside the safetensors: pickles (loading one can run code) and
# other frameworks' copies. Either would ship the unsteered model, so neither is carried.
OTHER_WEIGHTS = (
    *PICKLED_SUFFIXES, ".pkl", ".pickle", ".joblib", ".h5", ".msgpack", ".ot", ".onnx", ".gguf"
)  # fmt: skip


def bias_tensors(
    ckpt: Checkpoint, vectors: Mapping[int, np.ndarray]
) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """Every bias that the family's flag creates: down_proj = v_l / r on plan layers, zeros
    elsewhere; companions (gate/up) zero. Each in its weight's dtype."""
    spec = ckpt.spec
    divisor = float(ckpt.config.get(spec.bias_divisor_key, 1.0)) if spec.bias_divisor_key else 1.0
    out: dict[str, tuple[str, tuple[int, ...], bytes]] = {}
    for layer in range(ckpt.num_layers):
        prefix = ckpt.spec.tensor_prefix(layer)
        for module in (*spec.zero_biases, spec.down_proj):
            weight = ckpt.tensors.get(f"{prefix}.{module}.weight")
            if weight is None:
                raise InputError(f"{ckpt.path}: missing {prefix}.{module}.weight")
            rows = weight.shape[0]  # (out_features, in_features)
            value = (
                vectors[layer] / divisor
                if module == spec.down_proj and layer in vectors
                else np.zeros(rows)
            )
            out[f"{prefix}.{module}.bias"] = (weight.dtype, (rows,), encode(value, weight.dtype))
    return out


def shard_names(ckpt: Checkpoint) -> dict[str, str]:
    """Source shard -> output name. A single model.safetensors is renamed, because
    transformers reads model.safetensors before the index and would miss the biases."""
    if ckpt.indexed:
        return {s: s for s in ckpt.shards}
    return {SAFE_SINGLE: "model-00001-of-00002.safetensors"}


def write_bias_checkpoint(
    ckpt: Checkpoint, steering: Steering, output: Path, *, overwrite: bool, link: bool
) -> dict[str, int]:
    """The baked checkpoint at `output` (built aside, renamed into place): carried shards,
    the bias shard (steering.added / r in the checkpoint dtype), index, config, the other
    files, steering/ and SHA256SUMS. Returns relative path -> size."""
    spec = ckpt.spec
    assert spec.bias_flag is not None
    if ckpt.config.get(spec.bias_flag):
        raise UnsupportedError(
            f"{ckpt.path} already has MLP biases ({spec.bias_flag}=true); "
            "baking into existing biases is not supported: bake the "
            "unsteered source model instead"
        )
    biases = bias_tensors(ckpt, steering.added)
    steering.check_written({n: decode(raw, tag) for n, (tag, _, raw) in biases.items()}, ckpt.dtype)
    names = shard_names(ckpt)
    bias_shard = bias_shard_name(ckpt)
    new_bytes = sum(len(raw) for _, _, raw in biases.values())
    check_free_space(output.parent, (0 if link else ckpt.shard_bytes()) + new_bytes + (1 << 20))
    with atomic_output_dir(output, overwrite=overwrite) as tmp:
        known = carry_shards(ckpt, names, tmp, link)
        write_safetensors(tmp / bias_shard, biases)
        _write_index(ckpt, names, biases, bias_shard, tmp)
        config = dict(ckpt.config, **{spec.bias_flag: True})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        copy_other_files(ckpt.path, tmp)
        write_steering_dir(
            steering,
            tmp,
            {"route": "bias", "bias_shard": bias_shard, "source_shards": names, "linked": link},
        )
        write_sha256sums(tmp, known=known, skip_links=link)
        return file_sizes(tmp)


def carry_shards(ckpt: Checkpoint, names: dict[str, str], dest: Path, link: bool) -> dict[str, str]:
    """Copy (or symlink) the shards `names` lists (source -> output name); returns sha256
    per copied output name.

    Each source byte is read once: copy_hashed hashes and writes it from the same memory
    (the source's mapped pages, or one buffer), the hash and the write each in a thread of
    their own, while the next chunk is taken."""
    from tqdm import tqdm

    total = sum((ckpt.path / s).stat().st_size for s in names)
    hashes = {}
    with tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        desc="shards",
        leave=False,
        disable=total < (64 << 20),
    ) as bar:
        for src_name, dst_name in names.items():
            src = ckpt.path / src_name
            if (dest / dst_name).parent != dest or src.parent != ckpt.path:
                raise InputError(f"shard name {src_name!r} leaves its folder; refusing to copy")
            if link:
                (dest / dst_name).symlink_to(src.resolve())
            else:
                hashes[dst_name] = copy_hashed(src, dest / dst_name)
            bar.update(src.stat().st_size)
    return hashes


def _write_index(
    ckpt: Checkpoint, names: dict[str, str], biases: dict[str, Any], bias_shard: str, dest: Path
) -> None:
    weight_map = {t.name: names[t.shard] for t in ckpt.tensors.values()}
    weight_map.update(dict.fromkeys(biases, bias_shard))
    sizes = [h.path.stat().st_size - h.data_start for h in ckpt.headers.values()]
    total = sum(sizes) + sum(len(raw) for _, _, raw in biases.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (dest / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")


def other_files(src: Path) -> list[str]:
    """Tokenizer, generation config, chat template...: every file that is not weights."""
    return [
        path.name
        for path in sorted(src.iterdir())
        if path.name not in _SKIP
        and not path.name.startswith(".")
        and path.suffix != ".safetensors"
        and not is_other_weights(path.name)
        and path.is_file()
    ]


def is_other_weights(name: str) -> bool:
    """Weights that are not safetensors (pytorch_model.bin, model.ckpt, tf_model.h5, ...),
    or the index of such shards (pytorch_model.bin.index.json)."""
    base = name.removesuffix(".index.json")
    return base.lower().endswith(OTHER_WEIGHTS)


def skipped_weights(src: Path) -> list[str]:
    """The files of `src` that other_files leaves out as weights of another format."""
    return [p.name for p in sorted(src.iterdir()) if p.is_file() and is_other_weights(p.name)]


def copy_other_files(src: Path, dest: Path) -> None:
    skipped = skipped_weights(src)
    if skipped:
        warn(
            f"not carried into the output: {', '.join(skipped)} (weights that are not "
            "safetensors: pickled or for another framework, they would hold the unsteered model)"
        )
    for name in other_files(src):
        fast_copy(src / name, dest / name)


def bias_shard_name(ckpt: Checkpoint) -> str:
    return BIAS_SHARD if ckpt.indexed else "model-00002-of-00002.safetensors"


def planned_files(ckpt: Checkpoint) -> list[str]:
    """The files write_bias_checkpoint writes, relative to the output, sorted."""
    weights = [*shard_names(ckpt).values(), bias_shard_name(ckpt), SAFE_INDEX, "config.json"]
    extra = [*other_files(ckpt.path), *steering_dir_files(), "SHA256SUMS"]
    return sorted([*weights, *extra])
