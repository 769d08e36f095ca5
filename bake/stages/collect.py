"""Collect activations: the output of chosen decoder blocks at one token position per prompt.

Each prompt is wrapped in the chat template (bake.prompts.chat_text), batched with padding
(left by default; positions and position ids come from the attention mask, so the padding
side does not change a row), and run with forward hooks on the decoder blocks. The forward
pass stops after the last chosen block. One row per prompt and layer:

  last      h_l at the last prompt token (default)
  template  mean of h_l over the chat-template tokens after the instruction (the tokens
            that close the user turn and open the assistant turn)
  mean      mean of h_l over all prompt tokens

and beside each row the mean block-output norm ||h_l|| over the same positions (the fit's
scale s_l is the mean of these over the compliant set; DESIGN.md, "Units of alpha").

On disk an activation folder (ACTS) holds shards written as rows arrive, so memory stays
bounded by one shard:
  acts-00000.safetensors   "layer.{l}" F32 (rows, d), "norm.{l}" F32 (rows,)
  index.json               {"format": "steerbake.activations/1", "ids": [...row order],
                            "layers", "position", "model": {architecture, hidden_size,
                            num_layers, source}, "dtype": "float32", "compute_dtype",
                            "shards": [{"file", "rows"}], "system", "chat_template",
                            ["categories": [...per row]]}
"categories" is written when the prompt file gives any prompt a category (null for the rows
of prompts without one).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bake.artifacts.activations import (
    SHARD_BYTES,
    Activations,
    ActivationSet,
    ActivationWriter,
    _check_unique,
)
from bake.artifacts.plan import parse_layers
from bake.artifacts.prompts import Prompt
from bake.errors import InputError, SteerbakeError
from bake.model.fingerprint import Fingerprint
from bake.options import OVERWRITE_HELP, opt
from bake.runtime.chat import chat_text, template_suffix

if TYPE_CHECKING:
    import torch

    from bake.model.checkpoint import Checkpoint
    from bake.model.gguf_model import GgufModel


POSITIONS = ("last", "template", "mean")


@dataclass(frozen=True)
class CollectOptions:
    """Every choice of `run_collect` besides its model, prompts and output."""

    layers: list[int] | None = opt(
        None, "0-based blocks, ranges inclusive [default: all].", parse=parse_layers
    )
    position: str = opt(
        "last",
        "last prompt token; mean over the chat-template tokens after the instruction; mean "
        "over all prompt tokens.",
        choices=POSITIONS,
    )
    batch_size: int = opt(8)
    system: str | None = opt(None, "System message for every prompt.")
    device: str = opt("cpu")
    dtype: str = opt("auto", "auto: the checkpoint's dtype on an accelerator, float32 on the CPU.")
    device_map: str | None = opt(
        None,
        "Spread a model larger than one device over all devices (accelerate).",
        choices=("auto",),
    )
    overwrite: bool = opt(False, OVERWRITE_HELP)


@dataclass
class _Batch:
    ids: list[str]
    input_ids: torch.Tensor  # (b, s)
    attention_mask: torch.Tensor  # (b, s) 1 = real token
    position_ids: torch.Tensor  # (b, s) cumsum(mask) - 1, clamped at 0
    selected: torch.Tensor  # (b, s) bool: the positions a row is taken from
    last: torch.Tensor | None = None  # (b,) column of the last real token (position 'last')


def _pad(seqs: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        span = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[i, span] = torch.tensor(s, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def _suffix_counts(tokenizer: Any, texts: list[str], enc: Any, suffix: str) -> list[int]:
    """Number of tokens at the end of each text that cover the template suffix."""
    counts = []
    for k, text in enumerate(texts):
        if not text.endswith(suffix):
            raise InputError(
                "the chat template renders the text after the instruction "
                "differently for some prompts; use --position last or mean"
            )
        end = len(text) - len(suffix)
        if "offset_mapping" in enc:
            counts.append(sum(1 for _, stop in enc["offset_mapping"][k] if stop > end))
        else:  # slow tokenizer: tokenize the suffix alone
            counts.append(len(tokenizer(suffix, add_special_tokens=False)["input_ids"]))
    return counts


def _make_batch(
    tokenizer: Any,
    prompts: Sequence[Prompt],
    position: str,
    system: str | None,
    padding_side: str,
    suffix: str | None,
) -> _Batch:
    import torch

    has_template = bool(getattr(tokenizer, "chat_template", None))
    texts = [chat_text(tokenizer, p.text, system) for p in prompts]
    want_offsets = position == "template" and bool(getattr(tokenizer, "is_fast", False))
    enc = tokenizer(texts, add_special_tokens=not has_template, return_offsets_mapping=want_offsets)
    seqs = [list(x) for x in enc["input_ids"]]
    for p, s in zip(prompts, seqs, strict=True):
        if not s:
            raise InputError(f"prompt {p.id!r} tokenizes to nothing; remove it")
    pad_id = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    ids, mask = _pad(seqs, pad_id, padding_side)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    if position == "last":
        selected = position_ids == (mask.sum(-1, keepdim=True) - 1)
        selected &= mask.bool()
    elif position == "mean":
        selected = mask.bool()
    else:
        assert suffix is not None
        counts = torch.tensor(_suffix_counts(tokenizer, texts, enc, suffix))
        if bool((counts == 0).any()):
            raise InputError(
                "no token covers the chat template after the instruction; use "
                "--position last or mean"
            )
        selected = mask.bool() & (position_ids >= (mask.sum(-1, keepdim=True) - counts[:, None]))
    last = selected.int().argmax(-1) if position == "last" else None
    return _Batch([p.id for p in prompts], ids, mask, position_ids, selected, last)


# --------------------------------------------------------------------------- forward
class _StopForward(Exception):
    """Raised by the hook on the last chosen block: later blocks and the head are skipped."""


def _reduce(h: torch.Tensor, batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """h (b, s, d) -> mean of h over each row's selected positions (b, d) float32 and the
    mean of ||h_t|| over them (b,). Masked with where, never multiplied: padded positions
    may hold NaN. One position per row (last) is a plain gather."""
    import torch

    if batch.last is not None:
        rows = h[torch.arange(h.shape[0], device=h.device), batch.last.to(h.device)].float()
        return rows, rows.norm(dim=-1)
    hf = h.float()
    sel = batch.selected.to(h.device)
    count = sel.sum(-1).clamp(min=1).to(torch.float32)  # (b,)
    rows = torch.where(sel[..., None], hf, 0.0).sum(1) / count[:, None]
    norms = torch.where(sel, hf.norm(dim=-1), 0.0).sum(1) / count
    return rows, norms


def _forward(
    model: Any, blocks: Any, layers: list[int], batch: _Batch
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Run the model on one batch; rows[l] (b, d) and norms[l] (b,) on the CPU."""
    import torch

    rows: dict[int, torch.Tensor] = {}
    norms: dict[int, torch.Tensor] = {}
    last = max(layers)

    def capture(layer: int) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            h = output[0] if isinstance(output, tuple) else output  # (b, s, d)
            rows[layer], norms[layer] = _reduce(h, batch)
            if layer == last:
                raise _StopForward

        return hook

    handles = [blocks[layer].register_forward_hook(capture(layer)) for layer in layers]
    device = model.get_input_embeddings().weight.device
    try:
        with torch.no_grad():
            model(
                input_ids=batch.input_ids.to(device),
                attention_mask=batch.attention_mask.to(device),
                position_ids=batch.position_ids.to(device),
                use_cache=False,
            )
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return ({k: v.cpu() for k, v in rows.items()}, {k: v.cpu() for k, v in norms.items()})


def model_fingerprint(model: Any) -> Fingerprint:
    cfg = model.config
    return Fingerprint(str(cfg.model_type), int(cfg.hidden_size), int(cfg.num_hidden_layers))


def _check_layers(layers: Sequence[int] | None, num_layers: int) -> list[int]:
    if layers is None:
        return list(range(num_layers))
    chosen = sorted(set(int(x) for x in layers))
    bad = [x for x in chosen if not 0 <= x < num_layers]
    if bad or not chosen:
        raise InputError(
            f"layers {bad or chosen} are out of range: the model has layers 0-{num_layers - 1}"
        )
    return chosen


def iter_activations(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    layers: Sequence[int] | None = None,
    position: str = "last",
    batch_size: int = 8,
    system: str | None = None,
    padding_side: str = "left",
    progress: bool = False,
) -> Iterator[tuple[list[str], dict[int, np.ndarray], dict[int, np.ndarray]]]:
    """Yield (ids, rows {l: (b, d)}, norms {l: (b,)}) per batch of an already-loaded model.

    Raises SteerbakeError when the model produces NaN or Inf at a chosen block.
    """
    from tqdm.auto import tqdm

    from bake.runtime.hooks import decoder_blocks

    if position not in POSITIONS:
        raise InputError(f"unknown position {position!r}; use one of {', '.join(POSITIONS)}")
    if padding_side not in ("left", "right"):
        raise InputError(f"padding side must be left or right, not {padding_side!r}")
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    if not prompts:
        raise InputError("no prompts to collect; the prompt list is empty")
    _check_unique([p.id for p in prompts], "prompts")
    chosen = _check_layers(layers, int(model.config.num_hidden_layers))
    blocks = decoder_blocks(model)
    suffix = template_suffix(tokenizer, system) if position == "template" else None
    with tqdm(total=len(prompts), unit="prompt", desc="collect", disable=not progress) as bar:
        for start in range(0, len(prompts), batch_size):
            part = prompts[start : start + batch_size]
            batch = _make_batch(tokenizer, part, position, system, padding_side, suffix)
            rows, norms = _forward(model, blocks, chosen, batch)
            for layer in chosen:
                if not bool(rows[layer].isfinite().all()):
                    bad = int((~rows[layer].isfinite().all(-1)).nonzero()[0, 0])
                    raise SteerbakeError(
                        f"the model produced NaN/Inf at block {layer} for prompt "
                        f"{part[bad].id!r}; rerun with --dtype float32 (half precision can "
                        "overflow) or check the weights"
                    )
            yield (
                batch.ids,
                {k: v.numpy() for k, v in rows.items()},
                {k: v.numpy() for k, v in norms.items()},
            )
            bar.update(len(part))


def collect_activations(
    model: Any, tokenizer: Any, prompts: Sequence[Prompt], **kw: Any
) -> Activations:
    """Activations of an already-loaded model, in memory (keyword options as in
    iter_activations)."""
    chosen = _check_layers(kw.pop("layers", None), int(model.config.num_hidden_layers))
    ids: list[str] = []
    rows: dict[int, list[np.ndarray]] = {layer: [] for layer in chosen}
    norms: dict[int, list[np.ndarray]] = {layer: [] for layer in chosen}
    for batch_ids, batch_rows, batch_norms in iter_activations(
        model, tokenizer, prompts, layers=chosen, **kw
    ):
        ids.extend(batch_ids)
        for layer in chosen:
            rows[layer].append(batch_rows[layer])
            norms[layer].append(batch_norms[layer])
    return Activations(
        ids,
        chosen,
        kw.get("position", "last"),
        model_fingerprint(model),
        {k: np.concatenate(v) for k, v in rows.items()},
        {k: np.concatenate(v) for k, v in norms.items()},
        prompt_categories(prompts),
    )


def prompt_categories(prompts: Sequence[Prompt]) -> list[str | None] | None:
    """Each prompt's category in order, or None when no prompt has one."""
    found = [p.category for p in prompts]
    return found if any(c is not None for c in found) else None


def write_activations(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    output: Path,
    *,
    overwrite: bool = False,
    shard_bytes: int = SHARD_BYTES,
    source: str | None = None,
    source_dtype: str | None = None,
    **kw: Any,
) -> ActivationSet:
    """Stream activations of an already-loaded model into the folder `output` (built aside,
    renamed into place). Keyword options as in iter_activations."""
    from bake.files.fileio import atomic_output_dir, check_output_dir

    output = Path(output)
    check_output_dir(output, overwrite=overwrite)
    fingerprint = model_fingerprint(model)
    chosen = _check_layers(kw.pop("layers", None), fingerprint.num_layers)
    position = kw.get("position", "last")
    with atomic_output_dir(output, overwrite=overwrite) as tmp:
        writer = ActivationWriter(tmp, chosen, fingerprint.hidden_size, shard_bytes)
        for ids, rows, norms in iter_activations(model, tokenizer, prompts, layers=chosen, **kw):
            writer.add(ids, rows, norms)
        writer.finish(
            fingerprint,
            position,
            model={"source": source, "dtype": source_dtype},
            compute_dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
            system=kw.get("system"),
            chat_template=bool(getattr(tokenizer, "chat_template", None)),
            **_categories_entry(prompts),
        )
    return ActivationSet.open(output)


def _categories_entry(prompts: Sequence[Prompt]) -> dict[str, Any]:
    """{"categories": [...]} for the index (rows are written in prompt order), or {}."""
    found = prompt_categories(prompts)
    return {} if found is None else {"categories": found}


# --------------------------------------------------------------------------- from a path
def load_model(
    model: str | Path | None,
    *,
    device: str = "cpu",
    dtype: str = "auto",
    device_map: str | None = None,
) -> tuple[Any, Any, Checkpoint | GgufModel]:
    """(model, tokenizer, MODEL as read from its headers); device_map='auto' spreads a
    large model over the available devices (needs accelerate)."""
    from bake.model.resolve import open_model
    from bake.runtime.loader import load_model as load
    from bake.runtime.loader import load_tokenizer, resolve_dtype

    source = open_model(model)  # checks the architecture and refuses pickled weights
    config = getattr(source, "config", {})
    torch_dtype = resolve_dtype(dtype, "cuda" if device_map else device, config)
    loaded = load(source.path, dtype=torch_dtype, device=device, device_map=device_map)
    return loaded, load_tokenizer(source.path), source


def run_collect(
    model: str | Path | None,
    prompts_file: Path,
    output: Path,
    *,
    device: str = "cpu",
    dtype: str = "auto",
    device_map: str | None = None,
    layers: Sequence[int] | None = None,
    position: str = "last",
    batch_size: int = 8,
    system: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ActivationSet:
    """`steerbake collect`: load MODEL, read the prompt file, write the activation folder."""
    from bake.artifacts.prompts import load_prompts
    from bake.files.fileio import check_output_dir

    prompts = load_prompts(Path(prompts_file))
    if position not in POSITIONS:
        raise InputError(f"unknown position {position!r}; use one of {', '.join(POSITIONS)}")
    check_output_dir(Path(output), overwrite=overwrite)
    loaded, tokenizer, source = load_model(model, device=device, dtype=dtype, device_map=device_map)
    return write_activations(
        loaded,
        tokenizer,
        prompts,
        output,
        overwrite=overwrite,
        source=str(model or source.path),
        source_dtype=source.dtype,
        layers=layers,
        position=position,
        batch_size=batch_size,
        system=system,
        progress=progress,
    )
