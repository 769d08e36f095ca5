"""The one way a transformers model is loaded for running: safetensors weights only (never a
pickle, never remote code), in the asked dtype and device, in eval mode, with its tokenizer.
A .gguf file is loaded by transformers' GGUF loader (dequantized), after a check that it
fits in memory and that transformers reads it as the family steerbake fingerprinted.

dtype names: float32, bfloat16, float16, `auto` or `fast`. What `auto` means is the
caller's choice (`resolve_dtype`): for collect and fit, the checkpoint's dtype on an
accelerator and float32 on the CPU; elsewhere the checkpoint's own dtype (transformers'
auto). `fast` (tune's search) is bfloat16 where the device computes it natively (a CPU with
AVX512-BF16 or AMX-BF16, a CUDA device with bf16 support), float32 otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from bake.errors import InputError, VerificationError

if TYPE_CHECKING:
    import torch


def resolve_dtype(name: str, device: str, config: dict[str, Any]) -> torch.dtype:
    """'auto': the checkpoint's dtype on an accelerator, float32 on the CPU."""
    import torch

    if name == "auto":
        if device == "cpu":
            return torch.float32
        name = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return torch_dtype(name)


def native_bf16(device: str) -> bool:
    """The device multiplies bfloat16 natively (else bfloat16 is emulated, and slower)."""
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def fast_dtype(device: str) -> str:
    """`fast`: bfloat16 where `device` computes it natively, float32 otherwise."""
    return "bfloat16" if native_bf16(device) else "float32"


def torch_dtype(name: str) -> torch.dtype:
    """A floating torch dtype by name; anything else is an InputError naming the choices."""
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InputError(f"unknown dtype {name!r}; use auto, fast, float32, bfloat16 or float16")
    return dtype


def load_model(
    path: Path,
    *,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    device_map: str | None = None,
    strict: bool = False,
) -> Any:
    """The model in `path` (a checkpoint or PEFT adapter folder) in eval mode.

    dtype: a torch dtype, a name, or "auto" (the checkpoint's own dtype). strict: fail when
    transformers reports missing or unexpected tensors (it would drop or randomise them).
    """
    from transformers import AutoModelForCausalLM

    from bake.runtime.threads import apply_torch_threads

    apply_torch_threads()
    if dtype == "fast":
        dtype = fast_dtype(device)
    if isinstance(dtype, str) and dtype != "auto":
        dtype = torch_dtype(dtype)
    kw: dict[str, Any] = {"device_map": device_map} if device_map else {}
    gguf = _gguf_source(Path(path), dtype)
    kw |= _gguf_kwargs(Path(path)) if gguf else {"use_safetensors": True}
    loaded: Any = AutoModelForCausalLM.from_pretrained(
        Path(path).parent if gguf else path,
        dtype=dtype,
        trust_remote_code=False,
        output_loading_info=True,
        **kw,
    )
    model, info = loaded
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys") and v}
    if strict and bad:
        raise VerificationError(
            f"{path} does not load cleanly in transformers ({bad}); "
            "tensors would be silently dropped or left random"
        )
    if gguf is not None:
        from bake.model.gguf_model import check_loaded_model_type

        check_loaded_model_type(gguf, model.config)
    if not device_map:
        model = model.to(device)
    return model.eval()


def _gguf_kwargs(path: Path) -> dict[str, Any]:
    """Load a GGUF dequantized: the weights as plain tensors, steerable by hooks and the
    same as `steerbake convert` writes (transformers may otherwise keep some packed)."""
    from transformers import GgufConfig

    return {"gguf_file": path.name, "quantization_config": GgufConfig(dequantize=True)}


def _gguf_source(path: Path, dtype: Any) -> Any:
    """The GgufModel behind a .gguf path (checked: unsteered, fits in memory), else None."""
    from bake.model.gguf_model import is_gguf, open_gguf_model

    if not is_gguf(path):
        return None
    model = open_gguf_model(path)
    model.check_fits(str(dtype).removeprefix("torch.") if dtype != "auto" else "float32")
    return model


def load_tokenizer(path: Path, *, pad: bool = False) -> Any:
    """The tokenizer in `path`; with pad, the EOS token doubles as padding when it has none."""
    from transformers import AutoTokenizer

    path = Path(path)
    if path.suffix.lower() == ".gguf":
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    else:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if pad and tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model_and_tokenizer(
    path: Path, dtype: str = "float32", device: str = "cpu"
) -> tuple[Any, Any]:
    """A model folder or a PEFT adapter folder, in eval mode, with its (padded) tokenizer."""
    return load_model(path, dtype=dtype, device=device), load_tokenizer(path, pad=True)
