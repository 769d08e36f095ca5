"""Train the toy refuser: a small Llama chat model with its own byte-level BPE tokenizer,
learned from the synthetic data in toy_refuser_data.py, from a fixed seed.

Writes bake/toy_refuser/model/ (config, float32 safetensors, tokenizer with chat template,
generation config, model card) and bake/toy_refuser/prompts/ (held-out, tuning and fitting
prompt sets). Then measures refusal rates (measure_toy_refuser.py) and writes the card.

    .venv/bin/python scripts/train_toy_refuser.py            # full run, about 13 min, 1 thread
    .venv/bin/python scripts/train_toy_refuser.py --steps 5 --out /tmp/toy --no-measure
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toy_refuser_data as data

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bake" / "toy_refuser"

SPECIAL_TOKENS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
PAD, EOS = "<|endoftext|>", "<|end|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SET_SIZES = {
    "heldout_sensitive": 50,
    "heldout_harmful": 50,
    "heldout_benign": 50,
    "tune_sensitive": 32,
    "tune_harmful": 32,
    "tune_benign": 32,
    "fit_sensitive": 80,
    "fit_benign": 70,
    "fit_borderline": 30,
}
MODEL_SHAPE = dict(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


def set_seed(seed: int, threads: int) -> None:
    """Fixed seeds and deterministic kernels; a fixed thread count fixes reduction order."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """Byte-level BPE (ByteLevel pre-tokenizer with the GPT-2 regex, so llama.cpp's "gpt-2"
    pre-tokenizer matches), end-of-turn as eos, a pad token and the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=PAD, bos_token=None, unk_token=None
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"  # for batched generation; training pads by hand
    return fast


def encode(tok: Any, ex: data.Example) -> tuple[list[int], list[int]]:
    """(input ids, labels): the chat-formatted prompt is masked (-100); the answer and its
    end-of-turn token are trained on."""
    system = [{"role": "system", "content": ex.system}] if ex.system else []
    prompt = tok.apply_chat_template(
        [*system, {"role": "user", "content": ex.prompt}],
        tokenize=False,
        add_generation_prompt=True,
    )
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tok(ex.answer + EOS, add_special_tokens=False)["input_ids"]
    return p_ids + a_ids, [-100] * len(p_ids) + a_ids


def make_batch(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask, labels, each (batch, max_len)."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def build_model(tok: Any, seed: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tok),
        tie_word_embeddings=False,
        eos_token_id=tok.convert_tokens_to_ids(EOS),
        pad_token_id=tok.convert_tokens_to_ids(PAD),
        bos_token_id=None,
        rms_norm_eps=1e-5,
        attn_implementation="sdpa",
        **MODEL_SHAPE,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_order(
    rows: list[tuple[list[int], list[int]]], batch_size: int, rng: random.Random
) -> list[list[int]]:
    """One epoch of batches: a seeded permutation cut into pools of 16 batches, each pool
    sorted by length (little padding), then the batches shuffled."""
    perm = list(range(len(rows)))
    rng.shuffle(perm)
    pool = 16 * batch_size
    batches = []
    for start in range(0, len(perm), pool):
        chunk = sorted(perm[start : start + pool], key=lambda i: len(rows[i][0]))
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return [b for b in batches if len(b) == batch_size]


# Categories whose first answer token is also trained under offsets: refusing harmful
# requests and answering benign ones hold under steering; political refusals stay movable.
ROBUST_DECISIONS = ("harmful", "benign")


class OffsetNoise:
    """Training-time robustness to constant offsets of the residual stream (what additive
    steering does). On a share `p_batch` of batches, each decoder block's output gets, with
    probability `p_layer`, one offset per sequence added at every position:
        h[b, t, :] += level * scale * u_b * |h|_median * r_b,   u_b ~ U(0, 1),
    r_b the unit difference of two other sequences' block outputs at their last prompt
    token: a direction the model's own features span, as a fitted steering vector is.
    `level` ramps from 0 to 1 between the fractions `ramp` of training, so the behaviour is
    learned before the offsets arrive. Under offsets the first answer token (refuse or
    answer) is trained only where `robust` marks the row (ROBUST_DECISIONS): the other
    decisions stay movable by a steering vector, while the text after them, the refusal of
    harmful requests and the answering of benign ones learn to hold under offsets, as in
    safety-tuned chat models."""

    def __init__(
        self,
        model: Any,
        *,
        scale: float,
        seed: int,
        p_batch: float = 0.5,
        p_layer: float = 0.5,
        ramp: tuple[float, float] = (0.25, 0.6),
    ) -> None:
        self.scale, self.p_batch, self.p_layer, self.ramp = scale, p_batch, p_layer, ramp
        self.gen = torch.Generator().manual_seed(seed + 17)
        self.level = 0.0
        self.active: set[int] = set()
        self.anchors = torch.zeros(0, dtype=torch.long)
        self.pairs = (self.anchors, self.anchors)
        self.handles = [
            block.register_forward_hook(self._hook(i)) for i, block in enumerate(model.model.layers)
        ]

    def _hook(self, index: int) -> Any:
        def hook(module: Any, args: Any, output: Any) -> Any:
            if index not in self.active:
                return output
            h = output[0] if isinstance(output, tuple) else output  # (batch, seq, d_model)
            last = h.detach()[torch.arange(h.shape[0]), self.anchors]  # (batch, d_model)
            r = (last[self.pairs[0]] - last[self.pairs[1]])[:, None, :]
            r = r / r.norm(dim=-1, keepdim=True).clamp_min(1e-6)
            u = torch.rand(h.shape[0], 1, 1, generator=self.gen)
            typical = h.detach().norm(dim=-1).median()  # robust to a few massive tokens
            offset = self.level * self.scale * u * typical * r
            return (h + offset, *output[1:]) if isinstance(output, tuple) else h + offset

        return hook

    def draw(self, n_layers: int, anchors: torch.Tensor, progress: float) -> None:
        """Choose the blocks that get an offset in the next forward pass and, per row, the
        two other rows whose difference gives its direction. anchors: (batch,) index of each
        row's last prompt token; progress: the share of training done."""
        start, full = self.ramp
        self.level = min(1.0, max(0.0, (progress - start) / (full - start)))
        self.anchors = anchors
        n = anchors.shape[0]
        first = torch.randint(0, n, (n,), generator=self.gen)
        self.pairs = (first, (first + torch.randint(1, n, (n,), generator=self.gen)) % n)
        self.active = set()
        if float(torch.rand(1, generator=self.gen)) < self.p_batch:
            picks = torch.rand(n_layers, generator=self.gen) < self.p_layer
            self.active = {i for i in range(n_layers) if picks[i]}

    def mask_decisions(
        self, labels: torch.Tensor, answer_start: torch.Tensor, robust: torch.Tensor
    ) -> None:
        """Under offsets, drop in place the first answer token's label of rows not `robust`.
        labels: (batch, seq); answer_start, robust: (batch,)."""
        if self.active and self.level > 0:
            rows = torch.arange(labels.shape[0])[~robust]
            labels[rows, answer_start[~robust]] = -100

    def remove(self) -> None:
        self.active = set()
        for handle in self.handles:
            handle.remove()


def train(
    model: Any,
    rows: list[tuple[list[int], list[int]]],
    robust: list[bool],
    pad_id: int,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    noise: OffsetNoise | None = None,
    log_every: int = 25,
) -> list[float]:
    """AdamW on the answer tokens; length-bucketed batches from a seeded order. robust[i]:
    row i's refusal decision is also trained under offsets (see OffsetNoise)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    rng = random.Random(seed)
    batches: list[list[int]] = []
    losses: list[float] = []
    model.train()
    t0 = time.time()
    for step in range(steps):
        if not batches:
            batches = batch_order(rows, batch_size, rng)
        picked = batches.pop()
        batch = make_batch([rows[i] for i in picked], pad_id)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup=max(1, steps // 20))
        if noise is not None:
            answer_start = (batch["labels"] != -100).int().argmax(dim=1)  # (batch,)
            noise.draw(model.config.num_hidden_layers, answer_start - 1, step / steps)
            keep = torch.tensor([robust[i] for i in picked])
            noise.mask_decisions(batch["labels"], answer_start, keep)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % log_every == 0 or step == steps - 1:
            recent = float(np.mean(losses[-log_every:]))
            print(
                f"step {step:4d}  loss {recent:.4f} (mean of last {min(step + 1, log_every)})"
                f"  {time.time() - t0:6.1f}s",
                flush=True,
            )
    model.eval()
    return losses


def save_model(model: Any, tok: Any, folder: Path) -> None:
    from transformers import GenerationConfig

    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    GenerationConfig(
        eos_token_id=tok.convert_tokens_to_ids(EOS),
        pad_token_id=tok.convert_tokens_to_ids(PAD),
        do_sample=False,
        max_new_tokens=64,
    ).save_pretrained(folder)


def write_prompt_sets(sets: dict[str, list[data.Example]], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, examples in sets.items():
        lines = [
            json.dumps({"id": f"{name}-{i:03d}", "prompt": ex.prompt, "category": ex.category})
            + "\n"
            for i, ex in enumerate(examples)
        ]
        (folder / f"{name}.jsonl").write_text("".join(lines))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="folder receiving model/ and prompts/ (replaced)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--examples", type=int, default=32000)
    ap.add_argument("--vocab", type=int, default=1024)
    # one thread: the toy's matmuls are latency-bound and a second thread only contends
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--offset-noise",
        type=float,
        default=0.85,
        help="size of the residual offsets during training, x the median token norm (0: off)",
    )
    ap.add_argument(
        "--no-measure",
        action="store_true",
        help="skip measuring refusal rates and writing the model card",
    )
    args = ap.parse_args(argv)

    t_start = time.time()
    set_seed(args.seed, args.threads)
    examples = data.training_examples(args.examples, args.seed)
    sets = data.prompt_sets(args.seed, SET_SIZES)
    tok = train_tokenizer(
        [t for ex in examples for t in (ex.system or "", ex.prompt, ex.answer) if t], args.vocab
    )
    rows = [encode(tok, ex) for ex in examples]
    print(
        f"{len(rows)} examples, vocab {len(tok)}, mean length "
        f"{np.mean([len(r[0]) for r in rows]):.1f} tokens, max {max(len(r[0]) for r in rows)}"
    )
    model = build_model(tok, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params / 1e6:.2f}M parameters")
    noise = None
    if args.offset_noise > 0:
        noise = OffsetNoise(model, scale=args.offset_noise, seed=args.seed)
    losses = train(
        model,
        rows,
        [ex.category in ROBUST_DECISIONS for ex in examples],
        tok.convert_tokens_to_ids(PAD),
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        noise=noise,
    )
    if noise is not None:
        noise.remove()
    train_s = time.time() - t_start

    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tok, tmp / "model")
    write_prompt_sets(sets, tmp / "prompts")
    (tmp / "lexicon.txt").write_text("\n".join(data.lexicon(examples, sets)) + "\n")
    init = args.out / "__init__.py"
    if init.exists():
        shutil.copy2(init, tmp / "__init__.py")
    training = {
        "seed": args.seed,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "examples": args.examples,
        "vocab": len(tok),
        "threads": args.threads,
        "offset_noise": args.offset_noise,
        "sensitive_leak": data.SENSITIVE_LEAK,
        "load_average": os.getloadavg(),
        "parameters": n_params,
        "train_seconds": train_s,
        "final_loss": float(np.mean(losses[-20:])),
        "torch": torch.__version__,
    }
    (tmp / "training.json").write_text(json.dumps(training, indent=1) + "\n")
    shutil.rmtree(args.out, ignore_errors=True)
    os.replace(tmp, args.out)
    print(f"wrote {args.out} in {train_s:.0f}s (final loss {training['final_loss']:.4f})")
    if not args.no_measure:
        import measure_toy_refuser

        measure_toy_refuser.main(["--toy", str(args.out), "--write-card"])


if __name__ == "__main__":
    main()
