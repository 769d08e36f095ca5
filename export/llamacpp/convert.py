"""`steerbake convert FILE.gguf -o DIR`: a GGUF as a transformers checkpoint folder.

transformers' GGUF loader (bake.runtime.loader) reads the file and dequantizes every tensor
to the asked dtype, but refuses `save_pretrained` on the result ("quantized with gguf, not
serializable") although every weight is dense. So the folder is written here, as
save_pretrained would write it, with our own writer:

- `model.safetensors`, or shards of about 2 GB (`model-0000i-of-0000n.safetensors`, plain
  names) with `model.safetensors.index.json`: the model's state dict as transformers would
  save it (tied weights removed, so a tied model has no `lm_head.weight`; weight
  conversions reverted), each tensor streamed from the loaded model's own memory through a
  StreamWriter (no second copy of the model: peak memory is the load's, about 2x the model
  in the asked dtype while transformers dequantizes, then 1x while writing);
- `config.json` (no `quantization_config`; `dtype` = the written dtype; `architectures`),
  `generation_config.json`, the tokenizer files (`tokenizer.json`, `tokenizer_config.json`,
  `chat_template.jinja`: the GGUF's `tokenizer.chat_template` byte for byte);
- `README.md`: YAML front matter with `license` (`license_name`, `license_link`) from the
  GGUF's `general.license*` keys, so `steerbake export` of a model built from DIR inherits
  it; and a line naming the file and its sha256;
- `steerbake-convert/report.json` (REPORT_FILE) and `SHA256SUMS`. The report sits in a
  sub-folder because bake carries a source's top-level files (tokenizer, generation
  config, ...) into its outputs and never its folders: a baked model must not claim a
  conversion check it did not get.

The output is built in a hidden folder beside DIR and renamed into place. DIR may sit next
to the GGUF (the usual `convert models/x.gguf -o models/x`); it must not be the file nor
contain it (with --overwrite, replacing DIR would delete the GGUF): check_output_dir gets
the file itself as the source, not its folder.

The check (skip it with check=False, `--no-check`), run on the finished temporary folder
before it is renamed into place:
  - DIR loads back in transformers with no missing or unexpected tensor;
  - token-id parity: the tokenizer written to DIR vs llama.cpp's tokenizer of the GGUF on
    probe strings (digits, runs of spaces, newlines, non-ASCII, plain prose, and a 2-turn
    chat rendered with the template, special tokens parsed). GATED: any mismatch fails the
    conversion in one line and nothing is written (pass --no-check to convert anyway);
  - logits on the chat-formatted verify probes: llama.cpp running the GGUF (f32 KV cache)
    vs transformers running DIR in float32: max and mean |delta logit|, max |logit|, top-1
    agreement and mean KL(llama.cpp || transformers). REPORTED, not gated: for a quantized
    file this measures llama.cpp's quantized matmuls (it also quantizes the activations of
    Q4/Q8 matmuls) against the dequantized float weights, ~1 logit on SmolLM2 Q4_1; on an
    F32 GGUF it is ~1e-5 relative.
Without llama-cpp-python the llama.cpp side (parity and logits) is skipped with a note.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import json
import logging
import struct
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bake import __version__
from bake.artifacts.reports import JsonReport
from bake.errors import InputError, UnsupportedError, VerificationError
from bake.files.fileio import (
    StreamWriter,
    atomic_output_dir,
    check_free_space,
    check_output_dir,
    sha256_file,
    write_sha256sums,
)
from bake.model.gguf_model import DTYPE_BYTES, GgufModel, open_gguf_model
from bake.options import OVERWRITE_HELP, opt

CONVERT_DTYPES = ("float32", "bfloat16")
REPORT_FILE = "steerbake-convert/report.json"
SHARD_BYTES = 2 * 1000**3  # about 2 GB per safetensors shard
SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
_ST_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "int64": "I64"}

# token-id parity probes: (id, text); the chat probe is rendered from CHAT_TURNS
PARITY_PROBES = [
    ("digits", "12345 67.89"),
    ("spaces", "a    b"),
    ("newlines", "line1\nline2\n\n"),
    ("non_ascii", "naïve café – 日本語 🙂"),
    ("prose", "The quick brown fox jumps over the lazy dog. It was a bright, cold day."),
]
CHAT_TURNS = [
    {"role": "user", "content": "Hi! What is 2 + 2?"},
    {"role": "assistant", "content": "2 + 2 = 4."},
    {"role": "user", "content": "And 3 + 3?"},
]


@dataclass(frozen=True)
class ConvertOptions:
    dtype: str = opt("float32", "dtype of the written weights.", choices=CONVERT_DTYPES)
    overwrite: bool = opt(False, OVERWRITE_HELP)
    check: bool = opt(
        True,
        "Compare tokenization (gated) and logits (reported) with llama.cpp on the GGUF.",
        flags=("--check/--no-check",),
    )


# --------------------------------------------------------------------------- report
@dataclass
class FileRecord(JsonReport):
    name: str
    bytes: int
    sha256: str


@dataclass
class TokenParity(JsonReport):
    """One probe string: transformers' ids (DIR's tokenizer) vs llama.cpp's (the GGUF's)."""

    id: str
    text: str
    add_special: bool  # BOS/EOS added as each tokenizer adds them (else none)
    identical: bool
    tokens: int
    first_difference: int | None = field(default=None, metadata={"omit_none": True})
    transformers: list[int] | None = field(default=None, metadata={"omit_none": True})
    llama: list[int] | None = field(default=None, metadata={"omit_none": True})


@dataclass
class LogitComparison(JsonReport):
    """llama.cpp on the GGUF (reference) vs transformers on DIR in float32, all positions
    of the chat-formatted probes, on transformers' token ids. Reported, not gated."""

    reference: str
    candidate: str
    prompts: int
    positions: int
    max_abs_diff: float
    mean_abs_diff: float
    max_abs_logit: float
    top1_agreement: float
    mean_kl: float
    max_kl: float


@dataclass
class ConvertReport(JsonReport):
    source: str
    source_sha256: str
    source_types: dict[str, int]  # GGUF tensor type -> count
    output: str
    dtype: str
    model_type: str
    parameters: int
    tied_embeddings: bool
    license: str | None
    chat_template: bool  # the GGUF has one (carried byte-equal into chat_template.jinja)
    files: list[FileRecord]
    load_seconds: float
    write_seconds: float
    peak_rss_bytes: int | None  # VmHWM after writing (the process's peak so far)
    checked: bool
    loads_cleanly: bool | None = None  # DIR loads with no missing or unexpected tensor
    token_parity_ok: bool | None = None
    token_parity: list[TokenParity] = field(default_factory=list)
    logits: LogitComparison | None = None
    check_seconds: float | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"wrote {self.output}: {self.model_type}, {self.parameters:,} parameters, "]
        lines[0] += f"{self.dtype}, from {Path(self.source).name} ({_types(self.source_types)})"
        lines += [f"  {f.name}  {_mb(f.bytes)}" for f in self.files]
        rss = f", peak RSS {_mb(self.peak_rss_bytes)}" if self.peak_rss_bytes else ""
        lines.append(f"load {self.load_seconds:.1f} s, write {self.write_seconds:.1f} s{rss}")
        lines.append(f"license: {self.license or 'none in the GGUF'}")
        if self.token_parity:
            same = sum(p.identical for p in self.token_parity)
            lines.append(
                f"token ids, transformers vs llama.cpp: {same}/{len(self.token_parity)} "
                "probe strings identical"
            )
        if self.logits is not None:
            c = self.logits
            lines.append(
                f"logits, llama.cpp (GGUF) vs transformers ({self.output}, float32) on "
                f"{c.prompts} probes, {c.positions} positions: max |delta| "
                f"{c.max_abs_diff:.3g}, mean {c.mean_abs_diff:.3g} (max |logit| "
                f"{c.max_abs_logit:.3g}), top-1 agreement {c.top1_agreement:.3f}, mean KL "
                f"{c.mean_kl:.3g} (reported, not gated)"
            )
        if self.check_seconds is not None:
            lines.append(f"check {self.check_seconds:.1f} s; report: {REPORT_FILE}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _types(types: dict[str, int]) -> str:
    return ", ".join(f"{n} {t}" for t, n in sorted(types.items()))


# --------------------------------------------------------------------------- entry point
def run_convert(
    gguf_path: str | Path,
    output: str | Path,
    dtype: str = "float32",
    overwrite: bool = False,
    *,
    check: bool = True,
    shard_bytes: int = SHARD_BYTES,
) -> ConvertReport:
    """Convert FILE.gguf into the transformers checkpoint folder `output` (atomically).

    shard_bytes: the largest safetensors file before the weights are sharded. Threads
    (torch and llama.cpp) are the caller's choice (bake.runtime.threads, `--threads`)."""
    from bake.runtime.loader import load_model, load_tokenizer

    path, output = Path(gguf_path), Path(output)
    if dtype not in CONVERT_DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; use {' or '.join(CONVERT_DTYPES)}")
    source = open_gguf_model(path)  # refuses a steered GGUF or a control vector
    check_output_dir(output, overwrite=overwrite, sources=(path,))
    check_free_space(output.parent, source.parameters * DTYPE_BYTES[dtype] + (64 << 20))
    with ThreadPoolExecutor(1, thread_name_prefix="steerbake-sha256") as pool:
        digest = pool.submit(sha256_file, path)  # hashed while transformers loads
        start = time.perf_counter()
        with _quiet_packed_weights_warning():
            model = load_model(path, dtype=dtype)
        tok = load_tokenizer(path)
        load_seconds = time.perf_counter() - start
        report = _new_report(source, output, dtype, model, load_seconds)
        with atomic_output_dir(output, overwrite=overwrite) as tmp:
            start = time.perf_counter()
            sums = _write_checkpoint(model, tok, tmp, shard_bytes)
            report.write_seconds = time.perf_counter() - start
            report.peak_rss_bytes = peak_rss()
            del model  # the check loads DIR back instead
            release_memory()
            if check:
                _check(report, path, tmp)
            report.source_sha256 = digest.result()
            sums["README.md"] = _write_readme(tmp / "README.md", source, report)
            report.files = _file_records(tmp, sums)
            report_path = tmp / REPORT_FILE
            report_path.parent.mkdir()
            report_path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
            write_sha256sums(tmp, known=sums)
    return report


def _new_report(
    source: GgufModel, output: Path, dtype: str, model: Any, load_seconds: float
) -> ConvertReport:
    import gguf

    layout = source.layout
    return ConvertReport(
        source=str(source.path),
        source_sha256="",
        source_types=dict(Counter(t.type_name for t in layout.tensors)),
        output=str(output),
        dtype=dtype,
        model_type=str(model.config.model_type),
        parameters=sum(p.numel() for p in model.parameters()),
        tied_embeddings=bool(getattr(model.config, "tie_word_embeddings", False)),
        license=layout.string(gguf.Keys.General.LICENSE),
        chat_template=bool(layout.string(gguf.Keys.Tokenizer.CHAT_TEMPLATE)),
        files=[],
        load_seconds=load_seconds,
        write_seconds=0.0,
        peak_rss_bytes=None,
        checked=False,
    )


@contextlib.contextmanager
def _quiet_packed_weights_warning() -> Iterator[None]:
    """transformers 5.23 warns, for any non-float32 dtype, that GGUF weights "stay quantized
    regardless"; not so for the families it loads through its legacy (dequantizing) path,
    and state_to_save refuses any weight left packed. Its other warnings still show."""
    logger = logging.getLogger("transformers.quantizers.quantizer_gguf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc malloc_trim):
    the loader's many temporary arrays otherwise leave the heap fragmented and resident."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_rss() -> int | None:
    """This process's peak resident memory so far (Linux VmHWM), None where unknown."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------- writing
def _write_checkpoint(model: Any, tok: Any, dest: Path, shard_bytes: int) -> dict[str, str]:
    """Weights, config, generation config and tokenizer into `dest`; returns the sha256
    of each weight file (relative name -> hex)."""
    state = state_to_save(model)
    shards = plan_shards(state, shard_bytes)
    sums = {}
    for name, names in shards.items():
        sums[name] = write_tensors(dest / name, {n: state[n] for n in names})
    if len(shards) > 1:
        total = sum(_nbytes(t) for t in state.values())
        weight_map = {n: shard for shard, names in shards.items() for n in names}
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (dest / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    del state
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    config.architectures = [type(model).__name__]
    config.save_pretrained(dest)
    if model.can_generate() and getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(dest)
    tok.save_pretrained(dest)
    return sums


def state_to_save(model: Any) -> dict[str, Any]:
    """The tensors save_pretrained would write, as views of the model's own memory: tied
    aliases removed (a tied head keeps only the embedding), weight conversions reverted
    (identity for dense families; fused experts are split back)."""
    from transformers.modeling_utils import (
        remove_tied_weights_from_state_dict,
        revert_weight_conversion,
    )

    state = remove_tied_weights_from_state_dict(model.state_dict(), model)
    state = revert_weight_conversion(model, state)
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    packed = [n for n, t in state.items() if not t.is_floating_point()]
    if packed:  # transformers' packed-GGUF path (qwen35, lfm2 with `kernels` installed)
        raise UnsupportedError(
            f"transformers kept {packed[0]} packed in GGUF blocks ({state[packed[0]].dtype}) "
            "instead of dequantizing it; convert needs dense weights: uninstall the `kernels` "
            "package and run convert again"
        )
    return {name: t.detach() for name, t in state.items()}


def plan_shards(state: dict[str, Any], shard_bytes: int) -> dict[str, list[str]]:
    """File name -> tensor names, in state order: one `model.safetensors` when everything
    fits in shard_bytes, else consecutive groups of at most shard_bytes (a larger tensor
    alone) named model-0000i-of-0000n.safetensors."""
    groups: list[list[str]] = [[]]
    size = 0
    for name, t in state.items():
        n = _nbytes(t)
        if groups[-1] and size + n > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += n
    if len(groups) == 1:
        return {SAFE_SINGLE: groups[0]}
    total = len(groups)
    return {f"model-{i:05d}-of-{total:05d}.safetensors": g for i, g in enumerate(groups, 1)}


def _nbytes(t: Any) -> int:
    return int(t.numel()) * int(t.element_size())


def write_tensors(path: Path, tensors: dict[str, Any]) -> str:
    """One safetensors file from torch tensors, streamed from their memory (a
    non-contiguous tensor is made contiguous alone); returns its sha256 (hex)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, t in tensors.items():
        tag = _ST_DTYPES.get(str(t.dtype).removeprefix("torch."))
        if tag is None:
            raise UnsupportedError(f"{name} is {t.dtype}; convert writes float32 and bfloat16")
        n = _nbytes(t)
        header[name] = {"dtype": tag, "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data section aligned to 8 bytes
    with StreamWriter(path, sha256=True) as out:
        out.write(struct.pack("<Q", len(blob)) + blob)
        for t in tensors.values():
            out.write(_raw_bytes(t))
        return str(out.close())


def _raw_bytes(t: Any) -> np.ndarray:
    """The tensor's bytes as a uint8 numpy view (no copy when contiguous on the CPU)."""
    import torch

    t = t.detach().cpu().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy()


def _write_readme(path: Path, source: GgufModel, report: ConvertReport) -> str:
    """The card: license keys in the front matter (what `steerbake export` inherits) and
    where the weights came from; returns its sha256."""
    import gguf

    layout = source.layout
    keys = {
        "license": gguf.Keys.General.LICENSE,
        "license_name": gguf.Keys.General.LICENSE_NAME,
        "license_link": gguf.Keys.General.LICENSE_LINK,
    }
    front = {k: v for k, key in keys.items() if (v := layout.string(key))}
    name = layout.string(gguf.Keys.General.NAME) or source.path.stem
    head = "".join(f"{k}: {json.dumps(v)}\n" for k, v in front.items())
    text = f"---\n{head}---\n\n" if head else ""
    text += (
        f"# {name}\n\n"
        f"Converted from `{source.path.name}` (sha256 `{report.source_sha256}`) by steerbake "
        f"{__version__} (`steerbake convert`).\n\n"
        f"The GGUF's tensors ({_types(report.source_types)}) were dequantized by "
        f"transformers' GGUF loader and written as {report.dtype} safetensors: these are the "
        "GGUF's own values, not the original checkpoint's where the file was quantized.\n"
    )
    if not front:
        text += "\nThe GGUF names no license (no `general.license` key).\n"
    if report.checked:
        text += f"\nConversion check: `{REPORT_FILE}`.\n"
    path.write_text(text, encoding="utf-8")
    return sha256_file(path)


def _file_records(folder: Path, sums: dict[str, str]) -> list[FileRecord]:
    """Every file written so far (not the report and SHA256SUMS, written last)."""
    records = []
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        rel = p.relative_to(folder).as_posix()
        digest = sums.get(rel) or sha256_file(p)
        sums[rel] = digest
        records.append(FileRecord(rel, p.stat().st_size, digest))
    return records


# --------------------------------------------------------------------------- the check
def _check(report: ConvertReport, gguf_path: Path, folder: Path) -> None:
    """Load `folder` back; token parity (gated) and logits (reported) vs llama.cpp."""
    from bake.runtime.loader import load_model, load_tokenizer

    start = time.perf_counter()
    report.checked = True
    tok = load_tokenizer(folder)
    model = load_model(folder, dtype="float32", strict=True)  # VerificationError if not
    report.loads_cleanly = True
    if not llama_available():
        report.notes.append(
            "llama-cpp-python is not installed: token-id parity and the llama.cpp logit "
            "comparison were skipped (pip install 'steerbake[llama]')"
        )
        report.check_seconds = time.perf_counter() - start
        return
    from bake.runtime.llama import LlamaRuntime
    from bake.stages.verify import probe_texts

    probes = [(pid, text, _hf_ids(tok, text)) for pid, text in probe_texts(tok, None)]
    parity_items = parity_probes(tok)
    n_ctx = max(len(ids) for _, _, ids in probes) + 16
    n_ctx = max(n_ctx, *(len(_hf_ids(tok, text, add)) + 16 for _, text, add in parity_items))
    with LlamaRuntime(gguf_path, n_ctx=n_ctx) as rt:
        report.token_parity = [
            token_parity(pid, text, add, _hf_ids(tok, text, add), rt.tokenize(text, add_bos=add))
            for pid, text, add in parity_items
        ]
        report.token_parity_ok = all(p.identical for p in report.token_parity)
        if not report.token_parity_ok:
            bad = next(p for p in report.token_parity if not p.identical)
            raise VerificationError(
                f"tokenization differs between transformers and llama.cpp on probe "
                f"{bad.id!r} {bad.text!r} at token {bad.first_difference} (transformers "
                f"{(bad.transformers or [])[:12]}, llama.cpp {(bad.llama or [])[:12]}); "
                "nothing was written; pass --no-check to convert anyway"
            )
        ref = [rt.logits(ids) for _, _, ids in probes]
    got = _hf_logits(model, [ids for _, _, ids in probes])
    report.logits = compare_logits(
        ref, got, f"llama.cpp on {gguf_path.name} (f32 KV cache)", "transformers on DIR, float32"
    )
    report.check_seconds = time.perf_counter() - start


def llama_available() -> bool:
    try:
        from bake.runtime.llama import llama_cpp_module

        llama_cpp_module()
    except UnsupportedError:
        return False
    return True


def parity_probes(tok: Any) -> list[tuple[str, str, bool]]:
    """(id, text, add_special) for the parity check: PARITY_PROBES without added special
    tokens, the prose again with them (BOS/EOS behaviour), and the special tokens: a
    2-turn chat rendered with the chat template, or BOS/EOS around words without one."""
    items = [(pid, text, False) for pid, text in PARITY_PROBES]
    items.append(("prose_add_special", dict(PARITY_PROBES)["prose"], True))
    if getattr(tok, "chat_template", None):
        chat = tok.apply_chat_template(CHAT_TURNS, tokenize=False, add_generation_prompt=True)
        items.append(("chat", str(chat), False))
    else:
        marks = [m for m in (tok.bos_token, tok.eos_token) if m]
        if marks:
            items.append(("special", f"{marks[0]}Hello there{marks[-1]} again", False))
    return items


def token_parity(
    pid: str, text: str, add_special: bool, hf: list[int], llama: list[int]
) -> TokenParity:
    if hf == llama:
        return TokenParity(pid, text, add_special, True, len(hf))
    pairs = enumerate(zip(hf, llama, strict=False))
    first = next((i for i, (a, b) in pairs if a != b), min(len(hf), len(llama)))
    return TokenParity(pid, text, add_special, False, len(hf), first, hf, llama)


def _hf_ids(tok: Any, text: str, add_special: bool = False) -> list[int]:
    return [int(i) for i in tok(text, add_special_tokens=add_special).input_ids]


def _hf_logits(model: Any, prompts: list[list[int]]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        return [model(input_ids=torch.tensor([ids])).logits[0].float().numpy() for ids in prompts]


def compare_logits(
    ref: list[np.ndarray], got: list[np.ndarray], reference: str, candidate: str
) -> LogitComparison:
    """|delta logit|, top-1 agreement and KL(ref || got) over every position."""
    r = np.concatenate(ref).astype(np.float64)
    g = np.concatenate(got).astype(np.float64)
    log_p, log_q = _log_softmax(r), _log_softmax(g)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)
    diffs = np.abs(g - r)
    return LogitComparison(
        reference=reference,
        candidate=candidate,
        prompts=len(ref),
        positions=int(r.shape[0]),
        max_abs_diff=float(diffs.max()),
        mean_abs_diff=float(diffs.mean()),
        max_abs_logit=float(np.abs(r).max()),
        top1_agreement=float((r.argmax(-1) == g.argmax(-1)).mean()),
        mean_kl=float(kl.mean()),
        max_kl=float(kl.max()),
    )


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))
