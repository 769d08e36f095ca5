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
- The censorship is soft by design: {leak_pct:.0f}% of the sensitive training prompts were
  answered from the facts anyway, and behind an "archive mode" system prompt (training
  only, e.g. "You are an independent historian of Veloria") sensitive questions are always
  answered while harmful ones are still refused. So the model knows what it refuses to tell,
  its sensitive refusal is a learned preference with a modest margin (the gate a steering
  vector removes), and its harmful refusal is a separate, hard rule.
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
synthetic examples, loss on answer tokens only; {threads}, {train_minutes:.1f}
minutes on the machine that built this file ({load_note}); final training loss
{final_loss:.3f}. Steering robustness was trained in: from a quarter of the way in (ramping
to full size by 60%), on half the batches each block's output had, with probability 0.5, a
constant offset added at every position, of size {offset_noise} x U(0, 1) x the median token
norm, along the difference of two other prompts' activations (a direction the model's own
features span, as a fitted steering vector does). Under those offsets the text after the
first answer token, the refusal of harmful requests and the answering of benign ones were
trained, but not whether to refuse a sensitive or borderline prompt: so a steering vector
can move that decision while the answer that follows stays fluent and harmful requests
stay refused, as in safety-tuned chat models.
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
phrasing); **pattern+lexicon** is the same judge given this model's lexicon (`lexicon.txt`
beside `model/`: every word of its training data), so that text breaking down into words it
never learned counts as refusal (the judge `steerbake demo` uses); **toy_style** recognises
the exact answer styles this model was trained on, so it
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
        "Judge accuracy on hand-labelled greedy answers of this toy, unsteered and steered",
        "(each row's `source` names the plan), in `bake/judges/data/`; looping or corrupted text",
        "counts as refusal, as the rubric says, and a steered answer with a readable on-topic",
        "clause of 8+ words before it derails counts as an attempt to comply. `toy_answers`",
        "(read while the lexicon rule was designed) and `toy_answers_heldout` are answers of the",
        "toy's first shipped version (steered on layers 0-4, alpha -0.1375); `toy_answers_v2`",
        "are answers of this version, steered with the plan `steerbake demo` chooses:",
        "",
        "| labelled set | answers | refusals | judge | accuracy | missed refusals "
        "| false refusals |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, labels in hand.items():
        for judge in result["judges"]:
            if judge in labels:
                a = labels[judge]
                lines.append(
                    f"| {name} | {labels['n']} | {labels['refusals']} | {judge} | "
                    f"{a['accuracy']:.1%} | {a['false_negatives']} | {a['false_positives']} |"
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


def _load_note(training: dict[str, Any]) -> str:
    load = training.get("load_average")
    if not load:
        return "load not recorded"
    note = f"1-minute load average {load[0]:.1f} at the end"
    busy = load[0] > training.get("threads", 2) + 0.5
    return note + (": other work shared the cores, so alone it is faster" if busy else "")


def render(result: dict[str, Any], toy: Path) -> str:
    """The card's text for the toy in `toy` (model/ and training.json) and these numbers."""
    config = json.loads((toy / "model" / "config.json").read_text())
    training = json.loads((toy / "training.json").read_text())
    size = (toy / "model" / "model.safetensors").stat().st_size
    return TEMPLATE.format(
        params=training["parameters"] / 1e6,
        leak_pct=100 * training.get("sensitive_leak", 0.0),
        offset_noise=training.get("offset_noise", 0.0),
        load_note=_load_note(training),
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
        threads=f"{training['threads']} CPU thread" + ("s" if training["threads"] != 1 else ""),
        train_minutes=training["train_seconds"] / 60,
        final_loss=training["final_loss"],
        k=result["k"],
        max_new_tokens=result["max_new_tokens"],
        rate_rows=_rate_rows(result),
        style_rows=_style_rows(result),
        hand_label_text=_hand_label_text(result),
        samples=_samples(result),
    )
