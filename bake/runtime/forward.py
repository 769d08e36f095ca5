"""Forward passes without generation: the next-token distribution at the first answer
position, and the KL divergence between two of them:
    KL(x) = sum_v p_base(v|x) (log p_base(v|x) - log p_steered(v|x)),  averaged over prompts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bake.artifacts.prompts import Prompt
from bake.runtime.chat import chat_text


def next_token_logprobs(
    model: Any, tokenizer: Any, prompts: Sequence[Prompt], batch_size: int = 16
) -> Any:
    """log p(v | x) at the first generated position: (n_prompts, vocab) float32."""
    import torch

    texts = [chat_text(tokenizer, p.text) for p in prompts]
    add_special = not getattr(tokenizer, "chat_template", None)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # the last column is every prompt's last token
    out = []
    try:
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(
                texts[i : i + batch_size],
                return_tensors="pt",
                padding=True,
                add_special_tokens=add_special,
            ).to(next(model.parameters()).device)
            with torch.no_grad():
                logits = model(**enc).logits[:, -1].float()
            out.append(torch.log_softmax(logits, dim=-1).cpu())
    finally:
        tokenizer.padding_side = side
    return torch.cat(out)


def mean_kl(base_logp: Any, steered_logp: Any) -> float:
    """mean_x KL(base || steered) from two (n, vocab) log-prob tensors."""
    p = base_logp.exp()
    return float((p * (base_logp - steered_logp)).sum(-1).mean())
