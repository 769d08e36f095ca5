"""Tiny random models and a locally trained byte-level BPE tokenizer, built in seconds.

Shared by the tests' session fixtures; nothing here touches the network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CORPUS = [
    "How do I bake bread at home with simple flour and water?",
    "Tell me about the history of the river valley and its old towns.",
    "I cannot help with that request, sorry.",
    "Here is a recipe: mix, knead, rest, shape and bake for forty minutes.",
    "What is the capital of the northern province?",
    "Explain how a steering vector changes the hidden states of a model.",
    "The quick brown fox jumps over the lazy dog 0123456789.",
] * 20


def build_tokenizer(folder: Path) -> Any:
    """Train a byte-level BPE (vocab 384) and save it with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return fast


SPM_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] "
    "{{ m['content'] }} [/INST]{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)


def build_spm_tokenizer(folder: Path) -> Any:
    """Train a Llama/Mistral-style SentencePiece BPE (vocab 420, byte fallback, <unk> <s>
    </s> = 0 1 2); save tokenizer.model plus the equivalent tokenizer.json (legacy spaces)."""
    import io

    import sentencepiece as spm
    from transformers import LlamaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=proto,
        vocab_size=420,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        minloglevel=2,
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(proto.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    tok = LlamaTokenizer(
        vocab=vocab,
        merges=generate_merges(vocab),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        legacy=True,
    )
    tok.chat_template = SPM_CHAT_TEMPLATE
    tok.save_pretrained(folder)
    return tok


def _config(
    family: str,
    vocab: int,
    *,
    tied: bool,
    n_layers: int = 4,
    hidden: int = 64,
    intermediate: int = 128,
) -> Any:
    import transformers

    common: dict[str, Any] = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
        eos_token_id=4,
        pad_token_id=0,
        bos_token_id=None,
    )
    if family in ("qwen3", "gemma3_text"):
        common["head_dim"] = hidden // 4
    cls = {
        "llama": transformers.LlamaConfig,
        "mistral": transformers.MistralConfig,
        "qwen3": transformers.Qwen3Config,
        "qwen2": transformers.Qwen2Config,
        "gemma3_text": transformers.Gemma3TextConfig,
    }[family]
    return cls(**common)


def build_model(
    folder: Path,
    family: str = "llama",
    *,
    tied: bool = False,
    dtype: str = "float32",
    shard_size: str | None = None,
    seed: int = 0,
    n_layers: int = 4,
    hidden: int = 64,
    intermediate: int = 128,
    tokenizer: str = "bpe",
) -> Path:
    """Random model of `family` saved with the shared tokenizer; sharded if shard_size.
    tokenizer="spm": the SentencePiece one instead (bos/eos/pad ids 1/2/none)."""
    import torch
    from transformers import AutoModelForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tok = build_spm_tokenizer(folder) if tokenizer == "spm" else build_tokenizer(folder)
    config = _config(
        family, len(tok), tied=tied, n_layers=n_layers, hidden=hidden, intermediate=intermediate
    )
    if tokenizer == "spm":
        config.bos_token_id, config.eos_token_id, config.pad_token_id = 1, 2, None
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # larger weights so logits have std ~1 and hooks visibly matter
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.08)
    model = model.to(getattr(torch, dtype))
    kw = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(folder, **kw)
    return folder


def random_raw_vectors(hidden: int, layers: list[int], seed: int = 1) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {layer: rng.normal(size=hidden).astype(np.float32) for layer in layers}


def write_prompts(path: Path, prompts: list[str]) -> Path:
    path.write_text(
        "".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(prompts))
    )
    return path
