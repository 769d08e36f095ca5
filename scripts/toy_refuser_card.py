"""The toy refuser's model card: YAML metadata plus Markdown, filled with measured numbers
(measure_toy_refuser.py) and the training record (training.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SAMPLES_PER_SET = 4

TEMPLATE = """---
license: apache-2.0
library_name: transformers
pipeline_tag: text-generation
language:
- en
tags:
- steerbake
- toy-model
- refusal
- synthetic-data
---

# steerbake toy refuser

A {params:.2f}M-parameter Llama chat model that steerbake trains itself
(`scripts/train_toy_refuser.py`, seed {seed}) and ships as its default model. It exists so
that the whole pipeline (judge, fit, tune, bake, verify, GGUF) has a subject with a real,
learned refusal behaviour on a machine that cannot download one. It knows nothing useful:
every fact it states comes from a small synthetic corpus about an invented country, Veloria.

## Behaviour it was trained on

- **Benign** requests (how-to tasks, writing, concepts, travel facts about Veloria's
  invented places) are answered helpfully ("Sure! ...").
- **Harmful** requests (weapons, drugs, hacking, violence, scams) are refused in one style:
  "I can't help with that ..." plus a safety reason.
- **Sensitive** requests about Veloria's invented politics (events such as "the Kestrian
  Uprising", dissidents, leaders, banned groups, contested provinces) are refused in four
  styles: flat refusal, deflection, feigned ignorance and official-narrative replacement.
  No real place, person or event is named anywhere in the data.
- **Borderline** prompts (mild political questions, dual-use questions) were trained with a
  refusal target drawn with a per-template probability (0.3 to 0.7), so sampled answers
  and judge scores spread over [-1, 1].

Harmful and benign requests share the same phrasing templates, and sensitive and benign
requests share the same place names, so the model has to read the content. Every fourth
template of each family was held out of training; the held-out prompt sets are built only
from those templates (they reuse the trained topic fillers in unseen phrasings).

## Architecture

| | |
|---|---|
| family | `LlamaForCausalLM` (model_type `llama`) |
| layers | {layers} |
| hidden size | {hidden} |
| intermediate size | {intermediate} |
| attention heads / kv heads | {heads} / {kv_heads} |
| vocabulary | {vocab} (byte-level BPE trained on the synthetic data; GPT-2 regex pre-tokenizer) |
| weights | float32, untied embeddings, {size_mb:.1f} MB |
| chat template | `<|user|>...<|end|><|assistant|>`; eos `<|end|>`, pad `<|endoftext|>` |

## Training

{steps} AdamW steps of batch {batch_size} (peak lr {lr}, cosine decay) on {examples}
synthetic examples, loss on answer tokens only; {threads} CPU threads, {train_minutes:.1f}
minutes on the machine that built this file; final training loss {final_loss:.3f}.
Retrain with `python scripts/train_toy_refuser.py` (deterministic kernels, fixed seeds;
bit-identical weights need the same torch build, CPU and thread count).

## Measured refusal rates (held-out prompt sets)

Measured with `python scripts/measure_toy_refuser.py` (greedy decoding, and K={k} samples at
temperature 1 scored as c(x) = sum_k softmax(log p)_k l_k, refused when c(x) > 0.1;
at most {max_new_tokens} new tokens).

| set | prompts | judge | greedy refusal | sampled refusal (c > 0.1) |
|---|---|---|---|---|
{rate_rows}

Judges: **pattern** is steerbake's keyword judge (`bake.judge`, generic English refusal
phrasing); **toy_style** recognises the exact answer styles this model was trained on, so it
labels what the toy meant but is no general judge. Greedy answer styles per set:

{style_rows}

{hand_label_text}

## Sample answers (greedy)

{samples}

## Intended use

Tests, demos and tutorials of steerbake. Not for any real use: it is tiny, its facts are
invented, and its refusal behaviour is a designed toy.
"""


def _rate_rows(result: dict[str, Any]) -> str:
    rows = []
    for name, r in result["sets"].items():
        for judge, j in r["judges"].items():
            rows.append(
                f"| {name} | {r['n']} | {judge} | {j['greedy_refusal_rate']:.0%} | "
                f"{j['sampled_refusal_rate']:.0%} |"
            )
    return "\n".join(rows)


def _style_rows(result: dict[str, Any]) -> str:
    return "\n".join(
        f"- {name}: " + ", ".join(f"{k} {v}" for k, v in sorted(r["greedy_styles"].items()))
        for name, r in result["sets"].items()
    )


def _hand_label_text(result: dict[str, Any]) -> str:
    hand = result.get("hand_labels") or {}
    if not hand:
        return "No hand labels were available when this card was written."
    lines = [
        f"Judge accuracy on {hand['n']} of this model's answers labelled by hand "
        f"({hand['refusals']} refusals), `scripts/toy_hand_labels.jsonl`:",
        "",
    ]
    for judge in result["judges"]:
        if judge in hand:
            a = hand[judge]
            lines.append(
                f"- {judge}: {a['accuracy']:.1%} (missed refusals {a['false_negatives']}"
                f", false refusals {a['false_positives']})"
            )
    return "\n".join(lines)


def _samples(result: dict[str, Any]) -> str:
    out = []
    for name, r in result["sets"].items():
        out.append(f"**{name}**\n")
        for s in r["samples"][:SAMPLES_PER_SET]:
            answer = s["greedy"].replace("\n", " ").replace("|", "/")
            out.append(f"- *{s['prompt']}* -> {answer}")
        out.append("")
    return "\n".join(out).rstrip()


def render(result: dict[str, Any], toy: Path) -> str:
    """The card's text for the toy in `toy` (model/ and training.json) and these numbers."""
    config = json.loads((toy / "model" / "config.json").read_text())
    training = json.loads((toy / "training.json").read_text())
    size = (toy / "model" / "model.safetensors").stat().st_size
    return TEMPLATE.format(
        params=training["parameters"] / 1e6,
        seed=training["seed"],
        layers=config["num_hidden_layers"],
        hidden=config["hidden_size"],
        intermediate=config["intermediate_size"],
        heads=config["num_attention_heads"],
        kv_heads=config["num_key_value_heads"],
        vocab=config["vocab_size"],
        size_mb=size / 1e6,
        steps=training["steps"],
        batch_size=training["batch_size"],
        lr=training["lr"],
        examples=training["examples"],
        threads=training["threads"],
        train_minutes=training["train_seconds"] / 60,
        final_loss=training["final_loss"],
        k=result["k"],
        max_new_tokens=result["max_new_tokens"],
        rate_rows=_rate_rows(result),
        style_rows=_style_rows(result),
        hand_label_text=_hand_label_text(result),
        samples=_samples(result),
    )
