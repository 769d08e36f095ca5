"""Forward passes that start at a chosen decoder block, over rows that share a prefix.

Steering a set of layers changes nothing below the first steered block l0, so a candidate
needs only blocks l0..N-1. `Replay` holds a batch of rows that share their first P tokens
(the chat template's system part): the prefix is run once per call, as one row, with the
hooks that are open, and its key/value cache is copied to every row; the rows' own tokens
(the suffix, left-padded) then run with the blocks below l0 turned into the identity and
block l0's input replaced by the unsteered one kept at construction. The model's own
forward keeps every family's details (masks, rotary embeddings, norms, head); only the
last `keep` positions reach the head (otherwise the vocabulary projection dominates).

    cost per call ~ P tokens x N blocks + rows x S tokens x (N - l0) blocks

`check` replays from a middle block unsteered and compares with the full forward of the
same rows without any prefix sharing, so a family whose blocks or cache do not compose this
way is refused before it is trusted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from bake.errors import SteerbakeError
from bake.runtime.hooks import decoder_blocks


class ReplayMismatch(SteerbakeError):
    """Replaying from a middle block does not reproduce the full forward."""


def shared_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of `rows`, leaving every row one token."""
    shortest = min(len(r) for r in rows)
    n = 0
    while n < shortest - 1 and all(r[n] == rows[0][n] for r in rows):
        n += 1
    return n


class Replay:
    """rows: token ids per row (any lengths); keep: logits of the last `keep` positions;
    starts: the blocks a replay may start at (their unsteered inputs are kept)."""

    def __init__(
        self,
        model: Any,
        rows: Sequence[Sequence[int]],
        keep: int,
        pad_id: int,
        starts: Sequence[int] = (),
    ) -> None:
        import torch

        self.model, self.keep, self.pad_id = model, keep, pad_id
        self.blocks = decoder_blocks(model)
        self.device = model.get_input_embeddings().weight.device
        self.rows = [list(r) for r in rows]
        n_prefix = shared_prefix(self.rows)
        self.prefix = torch.tensor([self.rows[0][:n_prefix]], device=self.device)
        ids, mask = _pad_left([r[n_prefix:] for r in self.rows], pad_id)
        self.ids, self.mask = ids.to(self.device), mask.to(self.device)
        self.starts = sorted({s for s in starts if 0 < s < len(self.blocks)})
        self.states: dict[int, Any] = {}  # block -> its unsteered input (rows, S, d)
        handles = [
            self.blocks[s].register_forward_pre_hook(self._keeper(s), with_kwargs=True)
            for s in self.starts
        ]
        try:
            self.base = self.logits(0)
        finally:
            for h in handles:
                h.remove()

    def _keeper(self, block: int) -> Any:
        def keep(module: Any, args: tuple, kwargs: dict) -> None:
            self.states[block] = args[0] if args else kwargs["hidden_states"]

        return keep

    def logits(self, start: int) -> Any:
        """(rows, keep, vocab) float32 logits with blocks below `start` replayed (their
        unsteered output), under the hooks that are open."""
        import torch

        with torch.no_grad():
            cache = self._prefix_cache()
            if start <= 0:
                return self._suffix(cache)
            if start not in self.states:
                raise ValueError(f"block {start} was not kept for replay (kept: {self.starts})")
            with _skipped(self.blocks[:start]), _fed(self.blocks[start], self.states[start]):
                return self._suffix(cache)

    def _prefix_cache(self) -> Any:
        """The prefix's key/value cache, run as one row, copied to every row."""
        from transformers import DynamicCache

        rows = self.ids.shape[0]
        cache = DynamicCache(config=self.model.config)
        if self.prefix.shape[1] == 0:
            return cache
        one = self.model(input_ids=self.prefix, use_cache=True).past_key_values
        for i, layer in enumerate(one.layers):
            cache.update(
                layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1), i
            )
        return cache

    def _suffix(self, cache: Any) -> Any:
        import torch

        n_prefix = self.prefix.shape[1]
        rows = self.ids.shape[0]
        ones = torch.ones((rows, n_prefix), dtype=self.mask.dtype, device=self.device)
        out = self.model(
            input_ids=self.ids,
            attention_mask=torch.cat([ones, self.mask], 1),
            # positions from the mask: left padding must not shift a row's positions
            position_ids=n_prefix + (self.mask.cumsum(-1) - 1).clamp(min=0),
            past_key_values=cache if n_prefix else None,
            use_cache=bool(n_prefix),
            logits_to_keep=self.keep,
        )
        return out.logits.float()

    def full_logits(self) -> Any:
        """The same rows run whole, without prefix sharing or replay (for `check`)."""
        import torch

        ids, mask = _pad_left(self.rows, self.pad_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.no_grad():
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                use_cache=False,
                logits_to_keep=self.keep,
            )
        return out.logits.float()

    def check(self, tolerance: float) -> float:
        """max |delta logit| between the replay from the middle kept block and the plain
        full forward, unsteered; raises ReplayMismatch above `tolerance`."""
        middle = self.starts[len(self.starts) // 2] if self.starts else 0
        diff = float((self.logits(middle) - self.full_logits()).abs().max())
        if not diff <= tolerance:
            raise ReplayMismatch(
                f"replaying from block {middle} moves the logits by {diff:.3g} (> "
                f"{tolerance:.3g}); this family's blocks do not compose as steerbake assumes"
            )
        return diff


def _pad_left(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    """(rows, width) ids and attention mask, each row right-aligned."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


@contextlib.contextmanager
def _skipped(blocks: Sequence[Any]) -> Iterator[None]:
    """These blocks return their input unchanged while open (their output is replayed)."""
    saved = [b.forward for b in blocks]
    try:
        for b in blocks:
            b.forward = _identity
        yield
    finally:
        for b, forward in zip(blocks, saved, strict=True):
            b.forward = forward


def _identity(hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
    return hidden_states


@contextlib.contextmanager
def _fed(block: Any, state: Any) -> Iterator[None]:
    """`block` receives `state` as its input hidden states while open."""

    def swap(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (state, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": state}

    handle = block.register_forward_pre_hook(swap, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
