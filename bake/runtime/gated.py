"""Probe-gated steering at run time, in transformers: a linear probe (bake.artifacts.probe)
reads block L_p's output at the last prompt token in an unsteered pass and decides once per
prompt a multiplier g on the plan's vectors, held for every generated token:

    h_l <- h_l + g(x) * rounded_l      at every position of prompt x, for each plan layer l
    g(x) = +1 / -1 (sign), +1 / 0 (gate) or clip(threshold - f(x), -1, 1) (soft),
    f(x) = w . h_Lp(x) + b, "answer" where f <= threshold

The model is run twice per prompt batch: when a forward call starts on whole prompts (an
empty or absent KV cache), a first pass without steering stops after block L_p (positions
from the attention mask, as `collect` computes them, so the probe sees what it was trained
on), then the steered call proceeds; calls that extend the cache (generated tokens) keep
the gates. So any plan layers work, also those at or below L_p.

No weight file can hold this (a baked vector is the same for every prompt), and llama.cpp
exposes no intermediate activations to read a probe from: it runs here only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from bake.artifacts.probe import Probe, check_mode
from bake.errors import UnsupportedError
from bake.runtime.hooks import decoder_blocks

if TYPE_CHECKING:
    import torch

    from bake.artifacts.steering import Steering


@dataclass
class GateLog:
    """The probe's f and the gates g of every prompt batch seen while the context was
    open, in order: one (b,) array per batch."""

    decisions: list[np.ndarray] = field(default_factory=list)
    gates: list[np.ndarray] = field(default_factory=list)

    def counts(self, since: int = 0) -> dict[str, int]:
        """Rows steered as planned (g > 0), the other way (g < 0) and left alone (g = 0)."""
        g = np.concatenate(self.gates[since:]) if self.gates[since:] else np.zeros(0)
        return {
            "as_planned": int((g > 0).sum()),
            "opposite": int((g < 0).sum()),
            "unsteered": int((g == 0).sum()),
        }


class _Stop(Exception):
    """Raised at block L_p: the probe pass needs nothing above it."""


def _last_positions(mask: torch.Tensor) -> torch.Tensor:
    """(b,) column of each row's last real token, whatever the padding side."""
    return mask.shape[1] - 1 - mask.flip(-1).argmax(-1)


def probe_rows(model: Any, probe: Probe, input_ids: Any, attention_mask: Any) -> np.ndarray:
    """Block probe.layer's output at each row's last real token (b, d) float32, from a pass
    that stops there; positions from the mask, as `collect` takes them."""
    import torch

    blocks = decoder_blocks(model)
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    captured: dict[str, torch.Tensor] = {}

    def capture(module: Any, args: Any, output: Any) -> None:
        h = output[0] if isinstance(output, tuple) else output  # (b, s, d)
        last = _last_positions(mask).to(h.device)
        captured["h"] = h[torch.arange(h.shape[0], device=h.device), last].float().cpu()
        raise _Stop

    handle = blocks[probe.layer].register_forward_hook(capture)
    try:
        with torch.no_grad():
            model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=(mask.long().cumsum(-1) - 1).clamp(min=0),
                use_cache=False,
            )
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["h"].numpy()


def _starts_prompts(args: Any, kwargs: dict[str, Any]) -> bool:
    """Whether a forward call runs whole prompts (no cached positions yet)."""
    cache = kwargs.get("past_key_values")
    if cache is not None and hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length()) == 0
    ids = kwargs.get("input_ids", args[0] if args else None)
    return cache is None or ids is None or ids.shape[1] > 1


@contextlib.contextmanager
def probe_gated(
    model: Any, steering: Steering, probe: Probe, mode: str = "sign"
) -> Iterator[GateLog]:
    """While open, `model` is steered by `steering`'s vectors times the probe's per-prompt
    gate (module docstring); yields the log of the gates."""
    import torch

    check_mode(mode)
    probe.fingerprint.check(steering.plan.model, "the probe")
    blocks = decoder_blocks(model)
    state: dict[str, Any] = {"probing": False, "gates": None}
    log = GateLog()

    def before(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        if state["probing"] or not _starts_prompts(args, kwargs):
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise UnsupportedError("probe-gated steering needs input_ids, not embeddings")
        state["probing"] = True
        try:
            rows = probe_rows(model, probe, ids, kwargs.get("attention_mask"))
        finally:
            state["probing"] = False
        decision = probe.decision(rows)
        gates = probe.gates(decision, mode)
        state["gates"] = torch.as_tensor(gates, dtype=torch.float32)
        log.decisions.append(decision)
        log.gates.append(gates)

    def adder(vec: torch.Tensor) -> Any:
        def hook(module: Any, args: Any, output: Any) -> Any:
            if state["probing"]:
                return None
            h = output[0] if isinstance(output, tuple) else output  # (b, s, d)
            gates = state["gates"]
            if gates is None or len(gates) != h.shape[0]:
                raise UnsupportedError(
                    "probe-gated steering saw a batch whose prompts it did not gate "
                    "(beam search or a reused cache?); generate one batch at a time"
                )
            steered = h + gates.to(h.device, h.dtype)[:, None, None] * vec
            return (steered, *output[1:]) if isinstance(output, tuple) else steered

        return hook

    handles = [model.register_forward_pre_hook(before, with_kwargs=True)]
    try:
        for layer, v in steering.rounded.items():
            param = next(blocks[layer].parameters())
            vec = torch.as_tensor(np.asarray(v, np.float32)).to(param.device, param.dtype)
            handles.append(blocks[layer].register_forward_hook(adder(vec)))
        yield log
    finally:
        for handle in handles:
            handle.remove()
