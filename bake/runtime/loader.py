"""The one way a transformers model is loaded for running: weights as safetensors only
(never pickles, never remote code), in the asked dtype and device, eval mode, with its
tokenizer (a pad token set when it has none)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_model_and_tokenizer(
    path: Path, dtype: str = "float32", device: str = "cpu"
) -> tuple[Any, Any]:
    """A model folder or a PEFT adapter folder, in eval mode, with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model: Any = AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, dtype), trust_remote_code=False
    )
    model = model.to(device).eval()
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok
