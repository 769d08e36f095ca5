"""`steerbake verify --static`: check a baked folder without running a model, for models
too large to run. Every baked tensor must equal the plan's vector in the checkpoint dtype,
every zero bias must be zero, and every other tensor must be byte-identical to the source.

For a plan that ablates, every orthogonalised tensor must be bitwise equal to its
recomputation from the source (the same streaming code the bake runs:
bake.artifacts.orthogonalise, float64 -> float32 -> the tensor's dtype), an untied head must
hold the original embedding's bytes, and every other tensor must be byte-identical. This is
the proof for 16-bit checkpoints, where rounding whole matrices has no hook-side equivalent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bake.artifacts.ablated_checkpoint import (
    LM_HEAD,
    AblationLayout,
    baked_config,
    plan_layout,
    write_tensor,
)
from bake.artifacts.bias_checkpoint import bias_tensors
from bake.artifacts.plan import format_layers
from bake.artifacts.reports import Check, StaticReport
from bake.artifacts.steering import Steering
from bake.errors import UnsupportedError
from bake.files.shards import MappedShards
from bake.files.tensor_bytes import decode
from bake.model.arch import choose_route
from bake.model.checkpoint import Checkpoint, open_checkpoint


def _check(name: str, ok: bool, detail: str = "") -> Check:
    return Check(name, bool(ok), detail)


def _checkpoint_checks(src: Checkpoint, baked: Checkpoint, steering: Steering) -> Iterator[Check]:
    expected = bias_tensors(src, steering.added)
    flag = src.spec.bias_flag or ""
    extra = set(baked.tensors) - set(src.tensors) - set(expected)
    missing = (set(src.tensors) | set(expected)) - set(baked.tensors)
    yield _check(
        "tensor set",
        not extra and not missing,
        f"unexpected {sorted(extra)[:3]} missing {sorted(missing)[:3]}"
        if extra or missing
        else f"{len(baked.tensors)} tensors",
    )
    cfg_rest = {k: v for k, v in baked.config.items() if k != flag}
    src_rest = {k: v for k, v in src.config.items() if k != flag}
    yield _check(
        "config",
        baked.config.get(flag) is True and cfg_rest == src_rest,
        f"{flag}=true, other keys unchanged",
    )
    if missing:
        return
    with ExitStack() as stack:
        a, b = MappedShards(src.headers, stack), MappedShards(baked.headers, stack)
        changed = [n for n in src.tensors if a.raw(n) != b.raw(n)]
        nbytes = sum(len(a.raw(n)) for n in src.tensors)
        yield _check(
            "unchanged tensors byte-identical",
            not changed,
            f"differ: {changed[:3]}"
            if changed
            else f"{len(src.tensors)} tensors, {nbytes / 1e6:.1f} MB",
        )
        steered = {src.spec.down_proj_name(layer, "bias") for layer in steering.layers}
        yield from _bias_checks(baked, b, expected, steered)


def _ablation_checks(src: Checkpoint, baked: Checkpoint, steering: Steering) -> Iterator[Check]:
    lay = plan_layout(src, steering)
    appended = {n for names in lay.appended.values() for n in names}
    expected = set(src.tensors) | appended | set(lay.biases)
    extra, missing = set(baked.tensors) - expected, expected - set(baked.tensors)
    yield _check(
        "tensor set",
        not extra and not missing,
        f"unexpected {sorted(extra)[:3]} missing {sorted(missing)[:3]}"
        if extra or missing
        else f"{len(baked.tensors)} tensors",
    )
    changes = ", ".join(
        ["tie_word_embeddings=false"] * lay.untied
        + [f"{src.spec.bias_flag}=true"] * bool(lay.biases)
    )
    yield _check(
        "config",
        baked.config == baked_config(src, lay),
        f"{changes or 'unchanged'}{', other keys unchanged' if changes else ''}",
    )
    if missing:
        return
    with ExitStack() as stack:
        a, b = MappedShards(src.headers, stack), MappedShards(baked.headers, stack)
        kept = [n for n in src.tensors if n not in lay.rewrites]
        changed = [n for n in kept if a.raw(n) != b.raw(n)]
        yield _check(
            "unchanged tensors byte-identical",
            not changed,
            f"differ: {changed[:3]}" if changed else f"{len(kept)} tensors",
        )
        projected = [n for n, rw in lay.rewrites.items() if rw.projection is not None]
        wrong = [n for n in projected if not _recomputed_equal(src, a, baked, b, n, lay)]
        mb = sum(len(b.raw(n)) for n in projected) / 1e6
        yield _check(
            f"orthogonalised tensors equal their recomputation (float64 -> float32 -> {src.dtype})",
            not wrong,
            f"differ: {wrong[:3]}" if wrong else f"{len(projected)} tensors, {mb:.1f} MB, bitwise",
        )
        if lay.untied:
            same = _recomputed_equal(src, a, baked, b, LM_HEAD, lay)
            yield _check(
                "lm_head equals the original embedding (head untied)",
                same,
                "bitwise" if same else "the head holds other bytes",
            )
    if lay.biases:
        yield from _ablation_bias_checks(baked, steering, lay)


def _recomputed_equal(
    src: Checkpoint,
    a: MappedShards,
    baked: Checkpoint,
    b: MappedShards,
    name: str,
    lay: AblationLayout,
) -> bool:
    """The baked tensor's bytes equal the bake's output for it, recomputed chunk by chunk
    from the source (memory flat in tensor size)."""
    rewrite = lay.rewrites[name]
    source = src.tensors[rewrite.copy_of or name]
    got = baked.tensors[name]
    if (got.dtype, got.shape) != (source.dtype, source.shape):
        return False
    stored, pos, same = b.raw(name), 0, True

    def compare(chunk: Any) -> None:
        nonlocal pos, same
        data = memoryview(chunk).cast("B")
        same = same and stored[pos : pos + len(data)] == data
        pos += len(data)

    from bake.runtime.threads import threads

    write_tensor(src, a, name, rewrite, compare, threads())
    return same and pos == len(stored)


def _bias_checks(
    baked: Checkpoint, b: MappedShards, expected: dict[str, Any], steered: set[str]
) -> Iterator[Check]:
    """Every expected bias (name -> (dtype tag, shape, bytes)) stored as expected: finite,
    the steered ones equal to the plan's rounded vectors, the others zero."""
    wrong = [
        n
        for n, (tag, _, raw) in expected.items()
        if baked.tensors[n].dtype != tag or bytes(b.raw(n)) != raw
    ]
    yield _finite_check({n: _values(b.raw(n), baked.tensors[n].dtype) for n in steered})
    yield _check(
        "steering biases equal the plan (checkpoint dtype)",
        not [n for n in wrong if n in steered],
        f"{len(steered)} tensors",
    )
    yield _check(
        "other biases zero",
        not [n for n in wrong if n not in steered],
        f"{len(expected) - len(steered)} tensors",
    )


def _ablation_bias_checks(
    baked: Checkpoint, steering: Steering, lay: AblationLayout
) -> Iterator[Check]:
    """`both`: the down_proj biases hold the plan's vectors, the companions zeros."""
    with ExitStack() as stack:
        b = MappedShards(baked.headers, stack)
        steered = {baked.spec.down_proj_name(layer, "bias") for layer in steering.added}
        yield from _bias_checks(baked, b, lay.biases, steered)


def _values(raw: memoryview, tag: str) -> Any:
    """A baked tensor's values, or None when its dtype is not a float steerbake writes."""
    try:
        return decode(bytes(raw), tag)
    except UnsupportedError:
        return None


def _finite_check(values: dict[str, Any]) -> Check:
    """Every baked steering value is finite (an overflowing alpha can bake Inf, which
    equals an Inf plan vector byte for byte but steers nothing)."""
    import numpy as np

    bad = sorted(n for n, v in values.items() if v is None or not np.all(np.isfinite(v)))
    return _check(
        "baked values finite",
        not bad,
        f"NaN or Inf in {bad[:3]}" if bad else f"{len(values)} tensors",
    )


def _adapter_checks(src: Checkpoint, baked: Path, steering: Steering) -> Iterator[Check]:
    import numpy as np
    from safetensors.numpy import load_file

    from bake.artifacts.adapter import (
        ADAPTER_CONFIG,
        ADAPTER_WEIGHTS,
        adapter_config,
        adapter_tensors,
    )

    config = json.loads((baked / ADAPTER_CONFIG).read_text())
    want_cfg = adapter_config(src, steering.layers, config.get("base_model_name_or_path", ""))
    keys = ("r", "lora_alpha", "lora_bias", "target_modules", "peft_type", "use_dora")
    yield _check(
        "adapter config",
        all(config.get(k) == want_cfg[k] for k in keys),
        "r=1, lora_alpha=1, lora_bias, targets = plan layers",
    )
    got = load_file(str(baked / ADAPTER_WEIGHTS))
    want = adapter_tensors(src, steering)
    same_set = set(got) == set(want)
    yield _check("adapter tensor set", same_set, f"{len(got)} tensors")
    yield _finite_check(got)
    if same_set:
        bad = [
            k for k in want if got[k].dtype != want[k].dtype or not np.array_equal(got[k], want[k])
        ]
        yield _check(
            "lora_A = 0, lora_B = 0, lora_B.bias = plan vector",
            not bad,
            f"differ: {bad[:3]}" if bad else "",
        )


def run_verify_static(steering: Steering, baked: Path) -> StaticReport:
    """Compare a baked folder's tensors with the source's and the steering's, byte by byte."""
    src = steering.checkpoint
    baked = Path(baked)
    if steering.plan.ablates:
        choose_route(src.spec, "auto", steering.kind)
        baked_ckpt = open_checkpoint(baked)
        baked_ckpt.fingerprint.check(src.fingerprint, f"baked model {baked}")
        kind, checks = "checkpoint", list(_ablation_checks(src, baked_ckpt, steering))
    elif (baked / "adapter_config.json").exists():
        kind, checks = "adapter", list(_adapter_checks(src, baked, steering))
    else:
        choose_route(src.spec, "bias")
        baked_ckpt = open_checkpoint(baked)
        baked_ckpt.fingerprint.check(src.fingerprint, f"baked model {baked}")
        kind, checks = "checkpoint", list(_checkpoint_checks(src, baked_ckpt, steering))
    return StaticReport(
        check="static",
        runtime="none: tensors compared, no model run",
        kind=kind,
        model=str(src.path),
        baked=str(baked),
        layers=format_layers(steering.layers),
        alpha=steering.plan.alpha,
        checks=checks,
        passed=all(c.ok for c in checks),
    )
