"""Fold a plan's vectors into a checkpoint, streaming: the model is never loaded.

Bias route (llama, granite): block l's down_proj gets bias b_l = v_l / r (r = the
family's residual multiplier, 1 for llama), so  block_l(x) = hooked block_l(x)  exactly.
Unchanged shards are carried over byte for byte; the new biases go into one new shard.
The adapter route lives in bake/adapter.py.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bake.arch import ArchSpec
from bake.checkpoint import SAFE_INDEX, SAFE_SINGLE, Checkpoint, open_checkpoint
from bake.errors import InputError, UnsupportedError
from bake.fileio import (
    atomic_output_dir,
    check_free_space,
    check_output_dir,
    copy_hashed,
    fast_copy,
    write_sha256sums,
)
from bake.models import resolve_model
from bake.plan import Plan, format_layers
from bake.tensor_bytes import encode, write_safetensors
from bake.vectors import Fingerprint

BIAS_SHARD = "model-steering-bias.safetensors"
STEERING_DIR = "steering"
# Files of the source that are not carried into a baked checkpoint.
_SKIP = {SAFE_SINGLE, SAFE_INDEX, "config.json", "README.md", "SHA256SUMS", ".gitattributes"}


@dataclass
class BakeResult:
    output: Path
    route: str
    layers: list[int]
    files: dict[str, int] = field(default_factory=dict)  # relative path -> size in bytes
    seconds: float = 0.0

    def summary(self) -> str:
        total = sum(self.files.values())
        return (
            f"baked {self.route} route into {self.output}: layers "
            f"{format_layers(self.layers)}, {len(self.files)} files, "
            f"{total / 1e6:.1f} MB, {self.seconds:.2f} s"
        )


def fingerprint_of(ckpt: Checkpoint) -> Fingerprint:
    return Fingerprint(ckpt.model_type, ckpt.hidden_size, ckpt.num_layers)


def choose_route(spec: ArchSpec, requested: str) -> str:
    """auto -> the table's route; refuse a route the family does not have."""
    if spec.hf_route == "none":
        raise UnsupportedError(
            f"{spec.model_type} cannot be baked ({spec.note}); steer it with hooks "
            "(bake.hooks.steering) or, in llama.cpp, with a control vector (steerbake cvec)"
        )
    if requested == "auto":
        return spec.hf_route
    if requested == "bias" and spec.hf_route != "bias":
        raise UnsupportedError(
            f"{spec.model_type} has no bias slot in Hugging Face format "
            f"({spec.note}); use --route adapter"
        )
    return requested


def bake_model(
    model: str | Path | None,
    plan_file: Path,
    output: Path,
    *,
    route: str = "auto",
    overwrite: bool = False,
    link: bool = False,
) -> BakeResult:
    """Check everything, then write the baked checkpoint (or adapter) to `output`."""
    start = time.perf_counter()
    src = resolve_model(model)
    ckpt = open_checkpoint(src)
    plan = Plan.load(plan_file)
    plan.check_model(fingerprint_of(ckpt))
    route = choose_route(ckpt.spec, route)
    output = Path(output)
    check_output_dir(output, overwrite=overwrite, sources=(src,))
    if route == "adapter":
        from bake.adapter import write_adapter

        files = write_adapter(ckpt, plan, output, overwrite=overwrite)
    else:
        files = write_bias_checkpoint(ckpt, plan, output, overwrite=overwrite, link=link)
    return BakeResult(output, route, plan.layers, files, time.perf_counter() - start)


def bias_tensors(
    ckpt: Checkpoint, vectors: dict[int, np.ndarray]
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


def _shard_names(ckpt: Checkpoint) -> dict[str, str]:
    """Source shard -> output name. A single model.safetensors is renamed, because
    transformers reads model.safetensors before the index and would miss the biases."""
    if ckpt.indexed:
        return {s: s for s in ckpt.shards}
    return {SAFE_SINGLE: "model-00001-of-00002.safetensors"}


def write_bias_checkpoint(
    ckpt: Checkpoint, plan: Plan, output: Path, *, overwrite: bool, link: bool
) -> dict[str, int]:
    spec = ckpt.spec
    assert spec.bias_flag is not None
    if ckpt.config.get(spec.bias_flag):
        raise UnsupportedError(
            f"{ckpt.path} already has MLP biases ({spec.bias_flag}=true); "
            "baking into existing biases is not supported: bake the "
            "unsteered source model instead"
        )
    biases = bias_tensors(ckpt, plan.steering_vectors())
    names = _shard_names(ckpt)
    bias_shard = BIAS_SHARD if ckpt.indexed else "model-00002-of-00002.safetensors"
    new_bytes = sum(len(raw) for _, _, raw in biases.values())
    check_free_space(output.parent, (0 if link else ckpt.shard_bytes()) + new_bytes + (1 << 20))
    with atomic_output_dir(output, overwrite=overwrite) as tmp:
        known = _carry_shards(ckpt, names, tmp, link)
        write_safetensors(tmp / bias_shard, biases)
        _write_index(ckpt, names, biases, bias_shard, tmp)
        config = dict(ckpt.config, **{spec.bias_flag: True})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        _copy_other_files(ckpt.path, tmp)
        _write_steering_dir(
            plan,
            tmp,
            {"route": "bias", "bias_shard": bias_shard, "source_shards": names, "linked": link},
        )
        write_sha256sums(tmp, known=known, skip_links=link)
        return _file_sizes(tmp)


def _carry_shards(
    ckpt: Checkpoint, names: dict[str, str], dest: Path, link: bool
) -> dict[str, str]:
    """Copy (or symlink) every shard; returns sha256 per copied output name.

    Each source byte is read once: copy_hashed hashes and writes it from the same memory
    (the source's mapped pages, or one buffer), the hash and the write each in a thread of
    their own, while the next chunk is taken."""
    from tqdm import tqdm

    total = ckpt.shard_bytes()
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


def _copy_other_files(src: Path, dest: Path) -> None:
    """Tokenizer, generation config, chat template...: everything that is not weights."""
    for path in sorted(src.iterdir()):
        if path.name in _SKIP or path.name.startswith(".") or path.suffix == ".safetensors":
            continue
        if path.is_file():
            fast_copy(path, dest / path.name)


def _write_steering_dir(plan: Plan, dest: Path, bake_info: dict[str, Any]) -> None:
    """steering/: the plan, its vector file and what the bake did (provenance)."""
    from bake import __version__

    folder = dest / STEERING_DIR
    folder.mkdir()
    vectors_copy = folder / "vectors.safetensors"
    fast_copy(plan.vectors_file, vectors_copy)
    local = Plan(**{**plan.__dict__, "vectors_path": str(vectors_copy), "base_dir": Path("/")})
    local.save(folder / "plan.json")
    info = {
        "steerbake_version": __version__,
        "layers": plan.layers,
        "alpha": plan.alpha,
        **bake_info,
    }
    (folder / "bake.json").write_text(json.dumps(info, indent=2) + "\n")


def _file_sizes(folder: Path) -> dict[str, int]:
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def open_baked_plan(baked: Path) -> Plan:
    """The plan a baked folder carries in steering/plan.json."""
    return Plan.load(Path(baked) / STEERING_DIR / "plan.json")


def load_source(model: str | Path | None) -> Checkpoint:
    return open_checkpoint(resolve_model(model))
