"""`steerbake chat --backend transformers`: a chat session with MODEL (a folder or .gguf) in
transformers, unsteered, steered with a plan's hooks, or probe-gated (bake.runtime.gated:
the probe reads each turn's prompt once, the gate holds for every token of the reply)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bake.errors import InputError

if TYPE_CHECKING:
    from bake.artifacts.probe import Probe
    from bake.artifacts.steering import Steering


@dataclass
class TransformersChat:
    model: Any
    tokenizer: Any
    steering: Steering | None = None
    probe: Probe | None = None
    probe_mode: str = "sign"

    @classmethod
    def open(
        cls,
        model: str | Path | None,
        plan: Path | None = None,
        probe: Path | None = None,
        probe_mode: str = "sign",
        dtype: str = "float32",
    ) -> TransformersChat:
        from bake.artifacts.probe import Probe, check_mode
        from bake.artifacts.steering import open_steering
        from bake.model.resolve import resolve_model
        from bake.runtime.loader import load_model_and_tokenizer

        check_mode(probe_mode)
        if probe is not None and plan is None:
            raise InputError("--probe gates a plan's steering: pass --plan PLAN too")
        steering = open_steering(model, plan) if plan is not None else None
        gate = Probe.load(probe) if probe is not None else None
        path = steering.model.path if steering is not None else resolve_model(model)
        loaded, tokenizer = load_model_and_tokenizer(Path(path), dtype, "cpu")
        return cls(loaded, tokenizer, steering, gate, probe_mode)

    @contextlib.contextmanager
    def _steered(self) -> Iterator[Any]:
        from bake.runtime.gated import probe_gated
        from bake.runtime.hooks import hooked

        if self.probe is not None and self.steering is not None:
            with probe_gated(self.model, self.steering, self.probe, self.probe_mode) as log:
                yield log
        else:
            with hooked(self.model, self.steering):
                yield None

    def reply(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.7,
        seed: int = 0,
    ) -> Iterator[str]:
        """The assistant's reply to `messages` (one piece; a note on the gate first)."""
        import torch

        tok = self.tokenizer
        has_template = bool(getattr(tok, "chat_template", None))
        text = (
            tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            if has_template
            else messages[-1]["content"]
        )
        enc = tok(str(text), return_tensors="pt", add_special_tokens=not has_template)
        torch.manual_seed(seed)
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": temperature}
            if temperature > 0
            else {"do_sample": False}
        )
        with self._steered() as log, torch.no_grad():
            out = self.model.generate(
                **enc,
                max_new_tokens=max_tokens,
                pad_token_id=tok.pad_token_id or tok.eos_token_id,
                **sampling,
            )
        if log is not None and log.gates:
            yield f"[probe: gate {float(log.gates[-1][0]):+g}] "
        yield tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
