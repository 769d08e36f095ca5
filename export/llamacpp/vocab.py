"""Tokenizer -> GGUF vocabulary keys, for the GGUF writer.

Two kinds, as llama.cpp's loader knows them:
- byte-level BPE (`tokenizer.json`, model "BPE"): tokenizer model "gpt2", the token list in
  byte-level form, merges, token types, and the pre-tokenizer name llama.cpp uses to split
  text before BPE ("gpt-2", "llama-bpe", "qwen2"), recognised from the tokenizer's own
  pre-tokenizer definition.
- SentencePiece (`tokenizer.model`, llama/mistral style): tokenizer model "llama", pieces,
  scores and token types read with the sentencepiece library.
Special-token ids, add_bos/add_eos and the chat template come from gguf's SpecialVocab.
Token lists are padded to the config's vocab_size (the embedding's row count) with unused
`[PAD{i}]` entries, as llama.cpp requires one token per embedding row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bake.errors import InputError, UnsupportedError

SPM_FILE = "tokenizer.model"
HF_TOKENIZER_FILE = "tokenizer.json"
SPM_FAMILIES = ("llama", "mistral")  # families whose SentencePiece tokenizers llama.cpp reads


# Split regexes of the byte-level BPE pre-tokenizers we can name for llama.cpp.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}
KNOWN_PRE = "ByteLevel with its GPT-2 regex ('gpt-2'), Llama 3 ('llama-bpe'), Qwen2 ('qwen2')"
SCORE_ADDED = -1000.0  # score llama.cpp's converter gives added and padding tokens


def add_vocab(writer: Any, folder: Path, family: str, vocab_size: int) -> str:
    """Write the tokenizer keys for `folder` into `writer`; returns the tokenizer kind."""
    import gguf

    if (folder / SPM_FILE).is_file() and family in SPM_FAMILIES:
        tokens, scores, types = spm_vocab(folder, vocab_size)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        add_space_prefix = _tokenizer_config(folder).get("add_prefix_space")
        if isinstance(add_space_prefix, bool):
            writer.add_add_space_prefix(add_space_prefix)
        special = gguf.SpecialVocab(folder, n_vocab=len(tokens))
        _add_special_flags(special, folder)
        special.add_to_gguf(writer, quiet=True)
        return "sentencepiece"
    if (folder / HF_TOKENIZER_FILE).is_file():
        tokens_s, types, pre = bpe_vocab(folder, vocab_size)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens_s)
        writer.add_token_types(types)
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens_s))
        _add_special_flags(special, folder)
        if not special.merges:
            raise InputError(
                f"{folder / HF_TOKENIZER_FILE} has no BPE merges; llama.cpp "
                "cannot tokenize without them"
            )
        special.add_to_gguf(writer, quiet=True)
        return f"bpe ({pre})"
    raise InputError(
        f"{folder} has no tokenizer ({HF_TOKENIZER_FILE} or {SPM_FILE}); copy "
        "the tokenizer files next to the weights"
    )


def _add_special_flags(special: Any, folder: Path) -> None:
    """Whether transformers adds BOS/EOS to plain text, from tokenizer.json's post-processor,
    where the tokenizer config does not say: llama.cpp's defaults differ by tokenizer kind,
    and an unset flag would let llama.cpp add a BOS that transformers does not."""
    path = folder / HF_TOKENIZER_FILE
    if not path.is_file():
        return  # SentencePiece only: llama.cpp's default (add BOS) is SentencePiece's
    post = json.loads(path.read_text(encoding="utf-8")).get("post_processor") or {}
    steps = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
    single: list[Any] = next(
        (p.get("single", []) for p in steps if p.get("type") == "TemplateProcessing"), []
    )
    first = single[0].get("SpecialToken", {}).get("id") if single else None
    last = single[-1].get("SpecialToken", {}).get("id") if single else None
    special.add_special_token.setdefault("bos", first is not None)
    special.add_special_token.setdefault("eos", last is not None and len(single) > 1)


def _tokenizer_config(folder: Path) -> dict[str, Any]:
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def looks_special(text: str) -> bool:
    """Added tokens that act as control tokens although not flagged special (<|...|>)."""
    return (text.startswith("<|") and text.endswith("|>")) or text in ("<pad>", "<mask>")


def _added_tokens(folder: Path) -> dict[int, dict[str, Any]]:
    """id -> {content, special} from tokenizer.json and tokenizer_config.json."""
    added: dict[int, dict[str, Any]] = {}
    path = folder / HF_TOKENIZER_FILE
    if path.is_file():
        for tok in json.loads(path.read_text(encoding="utf-8")).get("added_tokens", []):
            added[int(tok["id"])] = {"content": tok["content"], "special": bool(tok.get("special"))}
    for key, tok in (_tokenizer_config(folder).get("added_tokens_decoder") or {}).items():
        added.setdefault(int(key), {"content": tok["content"], "special": bool(tok.get("special"))})
    return added


def _added_entry(content: str, special: bool) -> tuple[str, int]:
    """(token text, token type) for an added token, as llama.cpp expects it."""
    import gguf

    if special or looks_special(content):
        return content, int(gguf.TokenType.CONTROL)
    # llama.cpp takes user-defined tokens pre-normalised: SentencePiece's '▁' is a space
    return content.replace("\u2581", " "), int(gguf.TokenType.USER_DEFINED)


def _check_size(vocab_size: int, largest_id: int, folder: Path) -> None:
    if largest_id >= vocab_size:
        raise InputError(
            f"{folder}: the tokenizer has token id {largest_id} but the model's "
            f"vocab_size is {vocab_size}; the tokenizer does not belong to it"
        )


# --------------------------------------------------------------------------- byte-level BPE
def bpe_vocab(folder: Path, vocab_size: int) -> tuple[list[str], list[int], str]:
    """(tokens, token types, pre-tokenizer name) from tokenizer.json."""
    import gguf

    data = json.loads((folder / HF_TOKENIZER_FILE).read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise UnsupportedError(
            f"{folder / HF_TOKENIZER_FILE}: tokenizer model "
            f"{model.get('type')!r} is not byte-level BPE; the GGUF writer "
            "supports byte-level BPE and SentencePiece (tokenizer.model)"
        )
    pre = pre_tokenizer_name(data.get("pre_tokenizer"), folder)
    reverse = {int(i): t for t, i in model["vocab"].items()}
    added = _added_tokens(folder)
    _check_size(vocab_size, max([*reverse, *added]), folder)
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i in added:
            text, kind = _added_entry(added[i]["content"], added[i]["special"])
        elif i in reverse:
            text, kind = reverse[i], int(gguf.TokenType.NORMAL)
        else:
            text, kind = f"[PAD{i}]", int(gguf.TokenType.UNUSED)
        tokens.append(text)
        types.append(kind)
    return tokens, types, pre


def pre_tokenizer_name(pre: Any, folder: Path) -> str:
    """llama.cpp's name for a tokenizer.json pre-tokenizer, or an error naming the known."""
    if isinstance(pre, dict) and pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    steps = pre.get("pretokenizers", []) if isinstance(pre, dict) else []
    if (
        isinstance(pre, dict)
        and pre.get("type") == "Sequence"
        and len(steps) == 2
        and steps[0].get("type") == "Split"
        and steps[1].get("type") == "ByteLevel"
        and not steps[1].get("use_regex", True)
    ):
        name = PRE_TOKENIZERS.get((steps[0].get("pattern") or {}).get("Regex", ""))
        if name:
            return name
    raise UnsupportedError(
        f"{folder / HF_TOKENIZER_FILE}: pre-tokenizer not recognised, so "
        "llama.cpp would split text differently from transformers; "
        f"supported: {KNOWN_PRE}"
    )


# --------------------------------------------------------------------------- SentencePiece
def spm_vocab(folder: Path, vocab_size: int) -> tuple[list[bytes], list[float], list[int]]:
    """(pieces, scores, token types) from tokenizer.model, plus added tokens, padded."""
    import gguf
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto((folder / SPM_FILE).read_bytes())
    except (RuntimeError, OSError) as e:
        raise InputError(f"{folder / SPM_FILE}: not a SentencePiece model ({e})") from None
    n = sp.GetPieceSize()
    _check_size(vocab_size, n - 1, folder)
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    for i in range(n):
        tokens[i] = sp.IdToPiece(i).encode("utf-8")
        scores[i] = sp.GetScore(i)
        types[i] = int(_spm_type(sp, i))
    added = _added_tokens(folder)
    _check_size(vocab_size, max(added, default=0), folder)
    for i, tok in added.items():
        if i < n and types[i] != gguf.TokenType.UNUSED:
            continue  # a piece of the model itself (<s>, </s>, control symbols)
        text, kind = _added_entry(tok["content"], tok["special"])
        tokens[i], scores[i], types[i] = text.encode("utf-8"), SCORE_ADDED, kind
    return tokens, scores, types


def _spm_type(sp: Any, i: int) -> Any:
    import gguf

    if sp.IsUnknown(i):
        return gguf.TokenType.UNKNOWN
    if sp.IsControl(i):
        return gguf.TokenType.CONTROL
    if sp.IsUnused(i):
        return gguf.TokenType.UNUSED
    if sp.IsByte(i):
        return gguf.TokenType.BYTE
    return gguf.TokenType.NORMAL
