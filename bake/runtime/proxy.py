"""Stage 1 of the search: score a steering candidate with forward passes only.

  proxy refusal of prompt x = P(the answer opens with a refusal opening | x)
                            = sum_j prod_t p(o_j,t | x, o_j,<t)     teacher-forced
  over the openings o_j (token prefixes, all of one length, so they are disjoint events),
  the benign KL at the first answer position
                 KL(x) = sum_v p_base(v|x) (log p_base(v|x) - log p_steered(v|x)),
  and its mean along the first DRIFT_TOKENS tokens of the unsteered answer, teacher-forced
  (the drift: answers that derail later show it where the first position does not).

Openings come from the unsteered answers the judge labelled refusal (their first tokens as
generated); without any, from the rubric's explicit-refusal phrases. Rows are prompt ids
(as every stage builds them) + opening ids; each set is one Replay (bake.runtime.replay),
so a candidate runs the shared chat-template prefix once and only the blocks from its first
steered layer up.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bake.runtime.chat import chat_text
from bake.runtime.hooks import hooked
from bake.runtime.replay import Replay

OPENING_TOKENS = 6  # the most tokens of a refusal opening
MIN_OPENING_TOKENS = 2
MAX_OPENINGS = 3  # rows grow with the openings
DRIFT_TOKENS = 16  # answer tokens the KL along the answer covers
COVERAGE = 0.9  # openings are added until they cover this share of the refused answers
FALLBACK_OPENINGS = ("I'm sorry, but I can't", "I cannot help with that", "I can't help with that")


def refusal_openings(
    tokenizer: Any, refused: Sequence[Sequence[int]], n: int = OPENING_TOKENS
) -> list[tuple[int, ...]]:
    """The most frequent first-n-token prefixes of refused answers (generated ids), as few
    as cover COVERAGE of them (at most MAX_OPENINGS), cut to the shortest; without any
    refused answer, the fallback phrases tokenized."""
    heads = [tuple(ids[:n]) for ids in refused if len(ids) >= MIN_OPENING_TOKENS]
    if not heads:
        heads = [
            tuple(tokenizer(p, add_special_tokens=False).input_ids[:n]) for p in FALLBACK_OPENINGS
        ]
    chosen: list[tuple[int, ...]] = []
    covered = 0
    for head, count in Counter(heads).most_common(MAX_OPENINGS):
        chosen.append(head)
        covered += count
        if covered >= COVERAGE * len(heads):
            break
    k = min(len(h) for h in chosen)
    return list(dict.fromkeys(h[:k] for h in chosen))


def prompt_ids(
    tokenizer: Any, prompts: Sequence[str], system: str | None = None
) -> list[list[int]]:
    """Token ids of each prompt as the model sees it (chat template, generation prompt)."""
    add_special = not getattr(tokenizer, "chat_template", None)
    return [
        list(tokenizer(chat_text(tokenizer, p, system), add_special_tokens=add_special).input_ids)
        for p in prompts
    ]


@dataclass
class ScoredSet:
    """One set's rows ready for candidates: a Replay and how to read its logits."""

    replay: Replay
    openings: list[tuple[int, ...]]  # () for a KL set
    n_prompts: int
    answer_lengths: list[int] = field(default_factory=list)  # KL set: answer tokens per row


def scored_set(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    openings: Sequence[tuple[int, ...]] = (),
    *,
    system: str | None = None,
    starts: Sequence[int] = (),
) -> ScoredSet:
    """Rows prompt + opening for every prompt and opening (or the prompts alone for KL)."""
    pad = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    base = prompt_ids(tokenizer, prompts, system)
    rows = [ids + list(o) for ids in base for o in openings] if openings else base
    keep = len(openings[0]) + 1 if openings else 1
    return ScoredSet(Replay(model, rows, keep, pad, starts), list(openings), len(prompts))


def kl_set(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    answers: Sequence[Sequence[int]],
    *,
    system: str | None = None,
    starts: Sequence[int] = (),
    answer_tokens: int = DRIFT_TOKENS,
) -> ScoredSet:
    """Rows prompt + the first `answer_tokens` of its unsteered answer (generated ids), for
    the KL at the first answer position and along the answer (`kl_along`)."""
    pad = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    heads = [list(a[:answer_tokens]) for a in answers]
    rows = [
        ids + head for ids, head in zip(prompt_ids(tokenizer, prompts, system), heads, strict=True)
    ]
    keep = max(len(h) for h in heads) + 1
    replay = Replay(model, rows, keep, pad, starts)
    return ScoredSet(replay, [], len(prompts), [len(h) for h in heads])


def refusal_probability(s: ScoredSet, logits: Any) -> np.ndarray:
    """(n_prompts,) P(answer opens with one of the openings): each opening's probability,
    the product of its teacher-forced token probabilities, summed over the openings."""
    import torch

    k = len(s.openings[0])
    targets = torch.tensor(s.openings, dtype=torch.long, device=logits.device)  # (n_open, k)
    logp = torch.log_softmax(logits[:, :k], -1)  # position t predicts opening token t
    tgt = targets.repeat(logp.shape[0] // len(s.openings), 1)[..., None]  # row i: opening i%n
    per_row = logp.gather(2, tgt)[..., 0].sum(1).exp()  # (rows,)
    return per_row.view(s.n_prompts, len(s.openings)).sum(1).double().cpu().numpy()


def greedy_margin(s: ScoredSet, logits: Any) -> np.ndarray:
    """(n_prompts,) sigmoid of the best opening's weakest teacher-forced margin:
        m_j = min_t (z[o_j,t] - max_{v not in S_j,t} z[v])    logits z at the position before t
    where S_j,t holds the t-th tokens of every opening that agrees with o_j before t (a
    token that starts another refusal is no rival). sigmoid(max_j m_j) > 1/2 exactly when
    greedy decoding opens with one of the openings; it is the two-way probability of the
    opening against its strongest rival at its weakest step, a smooth stand-in for the
    greedy decision."""
    import torch

    k, n_open = len(s.openings[0]), len(s.openings)
    z = logits[:, :k].float()  # (rows, k, vocab)
    targets = torch.tensor(s.openings, dtype=torch.long, device=z.device)  # (n_open, k)
    per_row = z.shape[0] // n_open
    chosen = z.gather(2, targets.repeat(per_row, 1)[..., None])[..., 0]  # (rows, k)
    rivals = z.clone()
    for j, opening in enumerate(s.openings):
        for t in range(k):
            siblings = {o[t] for o in s.openings if o[:t] == opening[:t]}
            rivals[j::n_open, t, sorted(siblings)] = float("-inf")
    margin = (chosen - rivals.max(-1).values).min(1).values  # (rows,)
    best = margin.view(s.n_prompts, n_open).max(1).values
    return torch.sigmoid(best.double()).cpu().numpy()


def kl_along(s: ScoredSet, logits: Any) -> tuple[np.ndarray, np.ndarray]:
    """(n_prompts,) twice: KL(base || steered) at the first answer position, and its mean
    over the first answer position and the answer tokens after it (teacher-forced on the
    unsteered answer: how far the steered model drifts from what the model said)."""
    import torch

    base = torch.log_softmax(s.replay.base.double(), -1)
    got = torch.log_softmax(logits.double(), -1)
    kl = (base.exp() * (base - got)).sum(-1).clamp(min=0)  # (rows, keep)
    keep = kl.shape[1]
    first = np.empty(s.n_prompts)
    along = np.empty(s.n_prompts)
    for i, n in enumerate(s.answer_lengths):
        window = kl[i, keep - n - 1 :]  # the first answer position, then n answer tokens
        first[i], along[i] = float(window[0]), float(window.mean())
    return first, along


@dataclass
class ProxyScore:
    """A candidate's stage-1 numbers: mean proxy refusal per set and the benign KL."""

    refusal: dict[str, float]  # set -> mean per-prompt proxy
    per_prompt: dict[str, list[float]]  # set -> the proxy per prompt
    kl: float  # benign KL at the first answer position, mean over the KL set's prompts
    drift: float  # benign KL along the answer's first tokens, mean over prompts


MEASURES = {"greedy margin": greedy_margin, "opening probability": refusal_probability}


def score(
    sets: dict[str, ScoredSet], kl_set: str, steering: Any, model: Any, measure: str
) -> ProxyScore:
    """Every set run from the candidate's first steered layer with its hooks on (None:
    unsteered, from the kept logits); `measure` names the per-prompt proxy (MEASURES:
    greedy margin for greedy decoding, opening probability for sampling)."""
    start = min(steering.layers) if steering is not None else 0
    refusal, per_prompt, kl, drift = {}, {}, 0.0, 0.0
    with hooked(model, steering):
        for name, s in sets.items():
            logits = s.replay.logits(start) if steering is not None else s.replay.base
            if name == kl_set:
                first, along = kl_along(s, logits)
                kl, drift = float(first.mean()), float(along.mean())
            else:
                p = MEASURES[measure](s, logits)
                refusal[name], per_prompt[name] = float(p.mean()), [float(x) for x in p]
    return ProxyScore(refusal, per_prompt, kl, drift)
