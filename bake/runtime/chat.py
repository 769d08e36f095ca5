"""How a prompt looks to the model: the chat template with the generation prompt, and the
template text that follows the user's instruction (the `template` activation position)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bake.errors import InputError

if TYPE_CHECKING:
    pass


def chat_text(tokenizer: Any, prompt: str, system: str | None = None) -> str:
    """The prompt as the model sees it: chat template with the generation prompt, or the
    bare text for a tokenizer without a template."""
    if not getattr(tokenizer, "chat_template", None):
        return prompt
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


_SENTINEL = "STEERBAKEINSTRUCTIONSENTINEL"


# --------------------------------------------------------------------------- positions
def template_suffix(tokenizer: Any, system: str | None = None) -> str:
    """The chat-template text after the user's instruction (closes the user turn, opens
    the assistant's), found by rendering the template around a sentinel."""
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(
            "position 'template' needs a chat template and this tokenizer has "
            "none; use --position last or mean"
        )
    rendered = chat_text(tokenizer, _SENTINEL, system)
    suffix = rendered[rendered.rindex(_SENTINEL) + len(_SENTINEL) :]
    if not suffix:
        raise InputError(
            "the chat template adds nothing after the instruction; use --position last or mean"
        )
    return suffix
