"""`steerbake demo`: the pipeline on the embedded default model, every artifact into one
folder. Until the toy refuser ships, a tiny random Llama is built on the fly.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from bake.fileio import check_output_dir
from bake.models import toy_model_dir


def _tiny_llama(folder: Path) -> Path:
    """A random 4-layer Llama with a byte-level tokenizer (no download, a few seconds)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens(pre_tokenizers.ByteLevel.alphabet())
    tok.add_special_tokens(["<|end|>", "<|user|>", "<|assistant|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|end|>", pad_token="<|end|>")
    fast.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def run_demo(output: Path, *, overwrite: bool = False) -> None:
    from bake.fold import bake_model
    from bake.inspect import describe_model, render_description
    from bake.plan import make_plan
    from bake.vectors import SteeringVectors
    from bake.vectors_import import model_fingerprint
    from bake.verify import render_report, run_verify

    check_output_dir(output, overwrite=overwrite)
    if output.exists():
        import shutil

        shutil.rmtree(output)
    output.mkdir(parents=True)
    model_dir = toy_model_dir()
    if not (model_dir / "config.json").exists():
        click.echo("toy refuser not shipped yet: building a tiny random Llama")
        model_dir = _tiny_llama(output / "model")
    click.echo(render_description(describe_model(str(model_dir))))
    fp = model_fingerprint(model_dir)
    rng = np.random.default_rng(0)
    raw = {i: rng.normal(size=fp.hidden_size) for i in range(fp.num_layers)}
    SteeringVectors.from_raw(raw, fp, method="random-demo").save(output / "vectors.safetensors")
    layers = list(range(1, max(2, fp.num_layers * 4 // 5)))
    make_plan(output / "vectors.safetensors", layers, -0.15).save(output / "plan.json")
    click.echo(bake_model(model_dir, output / "plan.json", output / "baked").summary())
    report = run_verify(model_dir, output / "plan.json", output / "baked", max_new_tokens=16)
    click.echo(render_report(report))
    click.echo(f"artifacts in {output}: vectors.safetensors, plan.json, baked/")
