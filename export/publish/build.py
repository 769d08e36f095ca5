"""`steerbake export`: from (model, plan) to folders that are ready to publish.

  OUT/<name>/       the safetensors build (bias route) or the PEFT adapter, tokenizer,
                    README.md card, steering/ (plan.json, vectors.safetensors, bake.json,
                    verify.json, tuning/ and evaluation.json when there are reports),
                    SHA256SUMS
  OUT/<name>-GGUF/  GGUF builds (F16 by default), README.md card, steering/ (plan, vectors,
                    llama.cpp verify reports), SHA256SUMS. Families whose llama.cpp loader
                    has the ffn_down bias slot get baked GGUFs and no control vector; the
                    others get unsteered GGUFs and the control vector beside them.

Every input is checked before anything is written (plan vs model, route, names, outputs,
GGUF route). Each folder is built in a temporary folder beside its final path and renamed
into place, the GGUF folder first, once both are complete, so a failure anywhere leaves
neither folder, and an interrupted run only `.steerbake-tmp-*` ones.

The GGUF model files are written in a second thread while the safetensors build is baked
and verified: both read the same source shards (one trip through the page cache) and the
work (casts, SHA-256, writes) spreads over the cores. Every byte written is hashed once,
from memory, as it is written (bake.fileio.StreamWriter): the carried shards from the
source pages they are copied from, each GGUF from its write buffers; SHA256SUMS and the
cards reuse those digests. Large files are written with O_DIRECT where the filesystem
allows it (no page-cache copy and no writeback left for later).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from bake.artifacts.plan import Plan
from bake.artifacts.steering_dir import STEERING_DIR
from bake.errors import InputError, OutputError, UnsupportedError, VerificationError
from bake.files.fileio import atomic_output_dir, check_output_dir, fast_copy, sha256_file
from bake.model.checkpoint import Checkpoint, fingerprint_of, open_checkpoint
from bake.model.resolve import resolve_model
from bake.stages.bake import bake_model, choose_route
from export.llamacpp.cvec import write_checkpoint_control_vector
from export.publish.cards import (
    CARD_FILE,
    CardInput,
    FileEntry,
    SourceRecord,
    source_record,
    write_card,
)

FLOAT_TYPES = ("F32", "F16", "BF16")


QUANT_TYPES = ("Q8_0", "Q4_K_M")


DEFAULT_GGUF_TYPES = ("F16",)


SUMS_FILE = "SHA256SUMS"


TUNING_REPORT = "tuning_report.json"  # written by `steerbake tune` (bake.tune_report)


EVAL_REPORT = "evaluation.json"  # steering/ name of the `steerbake evaluate` report


GGUF_SUFFIX = "-GGUF"


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


_MAX_NAME = 96 - len(GGUF_SUFFIX)  # Hub repo names are at most 96 characters


_DTYPE_TO_GGUF = {"F32": "F32", "F16": "F16", "BF16": "BF16"}


LLAMA_HINT = "install llama-cpp-python (pip install 'steerbake[llama]')"


T = TypeVar("T")


@dataclass
class ExportOptions:
    name: str | None = None  # folder / repo name; default <source>-steered
    route: str = "auto"  # auto | bias | adapter (the safetensors build)
    gguf: bool = True
    gguf_types: tuple[str, ...] | None = None  # None: F16, or the base GGUF's own type
    base_gguf: Path | None = None  # patch this GGUF instead of converting the checkpoint
    base_model_id: str | None = None
    tuning_report: Path | None = None  # tuning_report.json from `steerbake tune`
    eval_report: Path | None = None  # JSON from `steerbake evaluate`
    prompts: Path | None = None  # extra verify prompts
    skip_verify: bool = False
    overwrite: bool = False
    progress: bool = True


@dataclass
class GgufJob:
    """What the GGUF folder will hold, decided before anything is written."""

    route: str  # bias (baked GGUFs) | control-vector (unsteered GGUFs + control vector)
    float_types: list[str]
    quant_types: list[str]
    quantize_from: str | None  # float type the quantized files are made from
    base_gguf: Path | None
    base_type: str | None  # the base GGUF's file type, e.g. Q4_K_M
    verify: bool
    notes: list[str] = field(default_factory=list)  # skipped types and checks, for the card


@dataclass
class ExportResult:
    folders: dict[str, list[FileEntry]]  # folder path -> files
    notes: list[str]  # warnings and skipped parts, one line each
    verified: bool
    seconds: float

    def summary(self) -> str:
        lines = []
        for folder, files in self.folders.items():
            total = sum(f.size for f in files)
            lines.append(f"{folder}/  ({len(files)} files, {_human(total)})")
            width = max(len(f.path) for f in files)
            lines += [f"  {f.path:<{width}}  {_human(f.size):>10}" for f in files]
        lines += [f"note: {n}" for n in self.notes]
        if not self.verified:
            lines.append("warning: exported WITHOUT verification (--skip-verify); the cards say so")
        lines.append(f"export finished in {self.seconds:.1f} s")
        return "\n".join(lines)


def _human(n: float) -> str:
    from export.publish.cards import human_size

    return human_size(int(n))


# --------------------------------------------------------------------------- entry point
def export_model(
    model: str | Path | None, plan_file: Path, output: Path, opts: ExportOptions | None = None
) -> ExportResult:
    """Bake, verify and write OUT/<name>/ and OUT/<name>-GGUF/ (see the module docstring)."""
    from bake import __version__

    start = time.perf_counter()
    opts = opts or ExportOptions()
    src = resolve_model(model)
    ckpt = open_checkpoint(src)
    plan = Plan.load(plan_file)
    plan.check_model(fingerprint_of(ckpt))
    vectors = plan.load_vectors()
    route = choose_route(ckpt.spec, opts.route)
    source = source_record(src, None if model is None else str(model), opts.base_model_id)
    name = check_name(opts.name or f"{source.name}-steered")
    reports = _read_reports(plan_file, opts)
    job = plan_gguf(ckpt, plan, opts)
    model_dir, gguf_dir = Path(output) / name, Path(output) / f"{name}{GGUF_SUFFIX}"
    check_output_dir(model_dir, overwrite=opts.overwrite, sources=(src,))
    if job is not None:
        check_output_dir(gguf_dir, overwrite=opts.overwrite, sources=(src,))
    skipped = [] if job else [r for r in [_gguf_skip_reason(ckpt, plan, opts)] if r]
    notes = [*source.warnings, *(job.notes if job else skipped)]
    ctx = _Context(src, ckpt, plan_file, plan, vectors, source, name, __version__, opts)
    folders: dict[str, list[FileEntry]] = {}
    stage_names = _stage_names(route, job, opts)
    with (
        _Stages(stage_names, opts.progress) as stages,
        atomic_output_dir(model_dir, overwrite=opts.overwrite) as tmp_model,
    ):
        if job is None:
            folders[str(model_dir)] = _model_folder(tmp_model, ctx, route, reports, job, stages)
        else:  # the GGUF folder exits first: renamed into place just before the model folder
            with (
                atomic_output_dir(gguf_dir, overwrite=opts.overwrite) as tmp_gguf,
                _in_background(partial(_write_gguf_models, tmp_gguf, ctx, job, stages)) as models,
            ):
                folders[str(model_dir)] = _model_folder(tmp_model, ctx, route, reports, job, stages)
                folders[str(gguf_dir)] = build_gguf_folder(
                    tmp_gguf, ctx, job, models.result(), stages
                )
    notes += ctx.notes
    return ExportResult(folders, notes, not opts.skip_verify, time.perf_counter() - start)


@contextmanager
def _in_background(task: Callable[[threading.Event], T]) -> Iterator[Future[T]]:
    """Run task(cancel) in a second thread while the block runs; the block takes its result
    with `.result()` (which re-raises its error). Leaving the block by an error or Ctrl-C
    sets `cancel`, so the task stops at its next check, and waits for it before the
    temporary folders are removed."""
    cancel = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="steerbake-gguf") as pool:
        future = pool.submit(task, cancel)
        try:
            yield future
        except BaseException:
            cancel.set()
            raise


@dataclass
class _Context:
    src: Path
    ckpt: Checkpoint
    plan_file: Path
    plan: Plan
    vectors: Any  # SteeringVectors
    source: SourceRecord
    name: str
    version: str
    opts: ExportOptions
    notes: list[str] = field(default_factory=list)  # found while building, for the summary


def check_name(name: str) -> str:
    if not _NAME.match(name) or ".." in name or "--" in name or len(name) > _MAX_NAME:
        raise InputError(
            f"--name {name!r} cannot be a Hub repo name: use letters, digits, '.', '_' and "
            f"'-' (no '--' or '..'), at most {_MAX_NAME} characters"
        )
    return name


def _read_reports(plan_file: Path, opts: ExportOptions) -> dict[str, Path]:
    """steering/ path -> source file, for the reports that ship with the build: the tuning
    report (JSON, with its Markdown table and plots) and the evaluation report. The tuning
    report defaults to the one `steerbake tune` writes beside the plan."""
    reports: dict[str, Path] = {}
    tuning = opts.tuning_report
    if tuning is None:
        beside = Path(plan_file).parent / f"{Path(plan_file).stem}-tuning" / TUNING_REPORT
        tuning = beside if beside.is_file() else None
    for dest, path in ((f"tuning/{TUNING_REPORT}", tuning), (EVAL_REPORT, opts.eval_report)):
        if path is None:
            continue
        reports[dest] = _checked_json(Path(path))
    if tuning is not None:
        for extra in sorted(Path(tuning).parent.iterdir()):
            if extra.suffix in (".md", ".png") and extra.is_file():
                reports[f"tuning/{extra.name}"] = extra
    return reports


def _checked_json(path: Path) -> Path:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"report {path} not found") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"report {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"report {path} is not a JSON object")
    return path


# --------------------------------------------------------------------------- GGUF plan
def parse_gguf_types(text: str) -> tuple[str, ...]:
    """'f16,q4_k_m' -> ('F16', 'Q4_K_M'); unknown types fail with the list of known ones."""
    types = tuple(dict.fromkeys(t.strip().upper() for t in text.split(",") if t.strip()))
    bad = [t for t in types if t not in FLOAT_TYPES + QUANT_TYPES]
    if bad or not types:
        raise InputError(
            f"unknown GGUF type(s) {', '.join(bad) or repr(text)}: choose from "
            f"{', '.join(FLOAT_TYPES + QUANT_TYPES)}"
        )
    return types


def plan_gguf(ckpt: Checkpoint, plan: Plan, opts: ExportOptions) -> GgufJob | None:
    """The GGUF folder's content, or None when there is no GGUF route (with the reason in
    `_gguf_skip_reason`). Raises on contradictory options."""
    if opts.base_gguf is not None and opts.gguf_types is not None:
        raise InputError(
            "--gguf-types cannot be combined with --base-gguf: the patched file keeps the "
            "base GGUF's own type; quantize it afterwards with `steerbake quantize`"
        )
    if opts.base_gguf is not None and not Path(opts.base_gguf).is_file():
        raise InputError(f"--base-gguf {opts.base_gguf} does not exist")
    if _gguf_skip_reason(ckpt, plan, opts):
        return None
    route = "bias" if ckpt.spec.gguf_bias_slot else "control-vector"
    verify, notes = _gguf_verify_available(opts)
    if opts.base_gguf is not None:
        base = Path(opts.base_gguf)
        return GgufJob(
            route,
            float_types=[],
            quant_types=[],
            quantize_from=None,
            base_gguf=base,
            base_type=_gguf_file_type(base),
            verify=verify,
            notes=notes,
        )
    types = list(opts.gguf_types or DEFAULT_GGUF_TYPES)
    floats = [t for t in types if t in FLOAT_TYPES]
    quants = [t for t in types if t in QUANT_TYPES]
    if quants and not llama_cpp_available():
        notes += [f"{q}: not built: quantizing needs llama.cpp; {LLAMA_HINT}" for q in quants]
        quants = []
    if not floats and not quants:
        return None
    source_type = _DTYPE_TO_GGUF.get(ckpt.dtype, "F32")
    quantize_from = next((t for t in FLOAT_TYPES if t in floats), source_type) if quants else None
    return GgufJob(
        route,
        float_types=floats,
        quant_types=quants,
        quantize_from=quantize_from,
        base_gguf=None,
        base_type=None,
        verify=verify,
        notes=notes,
    )


def _gguf_skip_reason(ckpt: Checkpoint, plan: Plan, opts: ExportOptions) -> str:
    """Why no GGUF folder is written ('' when one is)."""
    from bake.artifacts.control_vector import BLOCK0_REASON

    spec = ckpt.spec
    if not opts.gguf:
        return "GGUF builds: skipped (--no-gguf)"
    if not spec.gguf_bias_slot and 0 in plan.layers:
        return (
            f"GGUF builds: skipped: the plan steers block 0 and llama.cpp's {spec.gguf_arch} "
            f"has no bias slot, so only a control vector could carry it, but {BLOCK0_REASON}; "
            "tune without block 0 for a llama.cpp build"
        )
    if opts.base_gguf is not None:
        return ""
    from export.llamacpp.writer import check_family, supported_families

    if not spec.gguf_writer:
        return (
            f"GGUF builds: skipped: steerbake's GGUF writer does not support "
            f"{ckpt.model_type} (it supports {', '.join(supported_families())}); pass "
            "--base-gguf FILE with a GGUF of the base model to steer that instead"
        )
    try:
        check_family(ckpt)
    except UnsupportedError as e:
        return f"GGUF builds: skipped: {e}"
    types = opts.gguf_types or DEFAULT_GGUF_TYPES
    if all(t in QUANT_TYPES for t in types) and not llama_cpp_available():
        return f"GGUF builds: skipped: {', '.join(types)} need llama.cpp's quantizer; {LLAMA_HINT}"
    return ""


def _gguf_verify_available(opts: ExportOptions) -> tuple[bool, list[str]]:
    if opts.skip_verify:
        return False, ["GGUF files not verified in llama.cpp (--skip-verify)"]
    if not llama_cpp_available():
        return False, [f"GGUF files not verified in llama.cpp: {LLAMA_HINT}"]
    return True, []


def llama_cpp_available() -> bool:
    """llama-cpp-python (quantizer, llama.cpp verification) imports; a broken or blocked
    install counts as missing. Writing and patching GGUFs needs only the gguf package."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def _gguf_file_type(path: Path) -> str | None:
    """general.file_type of a GGUF as a short name (F16, Q4_K_M, ...), None if absent."""
    import gguf

    from bake.files.gguf_file import read_layout

    value = read_layout(path).values.get("general.file_type")
    try:
        name = gguf.LlamaFileType(int(value)).name if value is not None else None
    except ValueError:
        return None
    return name.removeprefix("MOSTLY_").removeprefix("ALL_") if name else None


# --------------------------------------------------------------------------- progress
def _stage_names(route: str, job: GgufJob | None, opts: ExportOptions) -> list[str]:
    stages = [f"bake ({route})"] + ([] if opts.skip_verify else ["verify (transformers)"])
    stages.append("card and checksums")
    if job is not None:
        if job.base_gguf is not None:
            stages.append("patch GGUF" if job.route == "bias" else "copy GGUF")
        stages += [f"GGUF {t}" for t in job.float_types]
        if job.quant_types and job.quantize_from not in job.float_types:
            stages.append(f"GGUF {job.quantize_from} (to quantize from)")
        stages += [f"quantize {t}" for t in job.quant_types]
        if job.route == "control-vector":
            stages.append("control vector")
        if job.verify:
            n = len(job.float_types) + len(job.quant_types) + (job.base_gguf is not None)
            stages += [f"verify GGUF {i + 1}/{n} (llama.cpp)" for i in range(n)]
        stages.append("GGUF card and checksums")
    return stages


class _Stages:
    """One progress bar over the export's stages (the bake shows its own byte bar)."""

    def __init__(self, names: list[str], enabled: bool) -> None:
        self.names = names
        self.enabled = enabled
        self.bar: Any = None

    def __enter__(self) -> _Stages:
        from tqdm import tqdm

        self.bar = tqdm(
            total=len(self.names),
            desc="export",
            unit="step",
            disable=None if self.enabled else True,
            leave=False,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.bar.set_description_str(f"export: {name}")
        yield
        self.bar.update(1)


# --------------------------------------------------------------------------- safetensors build
def build_model_folder(
    tmp: Path, ctx: _Context, route: str, reports: dict[str, Path], stages: _Stages
) -> dict[str, Any] | None:
    """Bake into `tmp`, verify, copy the reports; returns the verify report (None if skipped)."""
    with stages.stage(f"bake ({route})"):
        staging = tmp / ".bake"
        if route == "adapter":
            from bake.artifacts.adapter import write_adapter

            write_adapter(
                ctx.ckpt, ctx.plan, staging, overwrite=False, base_model=ctx.source.base_model
            )
        else:
            bake_model(ctx.src, ctx.plan_file, staging, route="bias")
        for child in staging.iterdir():
            os.replace(child, tmp / child.name)
        staging.rmdir()
    for dest, path in reports.items():
        (tmp / STEERING_DIR / dest).parent.mkdir(parents=True, exist_ok=True)
        fast_copy(path, tmp / STEERING_DIR / dest)
    if ctx.opts.skip_verify:
        return None
    with stages.stage("verify (transformers)"):
        from bake.stages.verify import run_verify

        report = run_verify(ctx.src, ctx.plan_file, tmp, prompts=ctx.opts.prompts)
        report.update(model=ctx.source.base_model or ctx.source.name, baked=ctx.name)
        if not report["passed"]:
            raise VerificationError(
                f"the {route} build does not match hook steering: max |delta logit| "
                f"{report['max_abs_diff']:.3g} (mean {report['mean_abs_diff']:.3g}, tolerance "
                f"{report['tolerance']:.3g}), greedy {report['greedy_identical']}/"
                f"{report['prompts']} identical; nothing was written"
            )
        (tmp / STEERING_DIR / "verify.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _model_folder(
    tmp: Path,
    ctx: _Context,
    route: str,
    reports: dict[str, Path],
    job: GgufJob | None,
    stages: _Stages,
) -> list[FileEntry]:
    """The safetensors build (or adapter) in `tmp`, verified, with its card and sums."""
    verify = build_model_folder(tmp, ctx, route, reports, stages)
    kind = "checkpoint" if route == "bias" else "adapter"
    card = _card(ctx, kind, route, verify=verify, reports=reports, job=job)
    return _finish_folder(tmp, ctx, card, stages)


def _card(
    ctx: _Context,
    kind: str,
    route: str,
    *,
    verify: dict[str, Any] | None = None,
    reports: dict[str, Path] | None = None,
    job: GgufJob | None = None,
    gguf_verify: dict[str, dict[str, Any]] | None = None,
    control_vector: str | None = None,
) -> CardInput:
    """A card without its file list (filled in by _finish_folder)."""
    evaluation = None
    if reports and EVAL_REPORT in reports:
        evaluation = json.loads(reports[EVAL_REPORT].read_text(encoding="utf-8"))
    companion: str | None = ctx.name  # the GGUF card points to the safetensors build
    if kind != "gguf":
        companion = f"{ctx.name}{GGUF_SUFFIX}" if job is not None else None
    return CardInput(
        kind=kind,
        name=ctx.name if kind != "gguf" else f"{ctx.name}{GGUF_SUFFIX}",
        source=ctx.source,
        plan=ctx.plan,
        vectors=ctx.vectors,
        route=route,
        steerbake_version=ctx.version,
        files=[],
        verify=verify,
        gguf_verify=gguf_verify or {},
        gguf_notes=list(job.notes) if (job and kind == "gguf") else [],
        evaluation=evaluation,
        control_vector=control_vector,
        companion=companion,
        num_layers=ctx.ckpt.num_layers,
        hidden_size=ctx.ckpt.hidden_size,
        architecture=ctx.ckpt.model_type,
        base_gguf=job.base_gguf.name if (job and job.base_gguf and kind == "gguf") else None,
    )


def _finish_folder(
    tmp: Path,
    ctx: _Context,
    card: CardInput,
    stages: _Stages,
    known_sums: dict[str, str] | None = None,
) -> list[FileEntry]:
    """Hash every file (reusing the SHA256SUMS lines the bake just wrote and `known_sums`,
    relative path -> digest), write the card listing them, then SHA256SUMS over everything
    including the card."""
    with stages.stage("GGUF card and checksums" if card.kind == "gguf" else "card and checksums"):
        known = {**_read_sums(tmp / SUMS_FILE), **(known_sums or {})}
        entries = []
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            rel = path.relative_to(tmp).as_posix()
            if rel in (SUMS_FILE, CARD_FILE):
                continue
            entries.append(FileEntry(rel, path.stat().st_size, known.get(rel) or sha256_file(path)))
        card.files = entries
        write_card(tmp, card)
        readme = FileEntry(
            CARD_FILE, (tmp / CARD_FILE).stat().st_size, sha256_file(tmp / CARD_FILE)
        )
        everything = sorted([*entries, readme], key=lambda f: f.path)
        (tmp / SUMS_FILE).write_text("".join(f"{f.sha256}  {f.path}\n" for f in everything))
        sums = FileEntry(SUMS_FILE, (tmp / SUMS_FILE).stat().st_size, "")
    return sorted([*everything, sums], key=lambda f: f.path)


def _read_sums(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    sums = {}
    for line in path.read_text().splitlines():
        digest, _, rel = line.partition("  ")
        if len(digest) == 64 and rel:
            sums[rel] = digest
    return sums


# --------------------------------------------------------------------------- GGUF build
def build_gguf_folder(
    tmp: Path, ctx: _Context, job: GgufJob, models: dict[str, str | None], stages: _Stages
) -> list[FileEntry]:
    """Around the model GGUFs already in `tmp` (`models`: name -> sha256 where known, from
    _write_gguf_models): the control vector where needed, steering/, verify reports, card,
    sums."""
    cv_name = None
    if job.route == "control-vector":
        with stages.stage("control vector"):
            cv_name = f"{ctx.name}-control-vector.gguf"
            write_checkpoint_control_vector(ctx.ckpt, ctx.plan, tmp / cv_name)
    _copy_plan(ctx.plan, tmp / STEERING_DIR)
    reports: dict[str, dict[str, Any]] = {}
    if job.verify:
        reports = _verify_ggufs(tmp, ctx, list(models), cv_name, stages)
    card = _card(ctx, "gguf", job.route, job=job, gguf_verify=reports, control_vector=cv_name)
    known = {name: digest for name, digest in models.items() if digest}
    return _finish_folder(tmp, ctx, card, stages, known)


def _write_gguf_models(
    tmp: Path, ctx: _Context, job: GgufJob, stages: _Stages, cancel: threading.Event
) -> dict[str, str | None]:
    """The model GGUFs in `tmp`, in the order written: file name -> sha256 (hashed while
    converting; None for patched and quantized files). Stops between files, and between
    tensors of a conversion, once `cancel` is set."""
    plan = ctx.plan if job.route == "bias" else None
    # baked files carry the steered name; unsteered ones the source's, so nobody mistakes
    # an unsteered file for a steered one
    stem = ctx.name if job.route == "bias" else ctx.source.name
    if job.base_gguf is not None:
        return {_from_base_gguf(tmp, ctx, job, stages): None}
    from export.llamacpp.writer import convert_to_gguf

    names: dict[str, str | None] = {}
    for t in job.float_types:
        with stages.stage(f"GGUF {t}"):
            path = tmp / f"{stem}-{t}.gguf"
            result = convert_to_gguf(ctx.src, path, t, plan, name=stem, sha256=True, cancel=cancel)
            names[path.name] = result.sha256
    if job.quant_types:
        from export.llamacpp.quantize import quantize_gguf

        assert job.quantize_from is not None
        source = tmp / f"{stem}-{job.quantize_from}.gguf"
        scratch = None
        if job.quantize_from not in job.float_types:
            scratch = tmp / ".work"
            scratch.mkdir()
            source = scratch / f"{stem}-{job.quantize_from}.gguf"
            with stages.stage(f"GGUF {job.quantize_from} (to quantize from)"):
                convert_to_gguf(ctx.src, source, job.quantize_from, plan, name=stem, cancel=cancel)
        for q in job.quant_types:
            if cancel.is_set():
                raise OutputError(f"{tmp}: cancelled")
            with stages.stage(f"quantize {q}"):
                quantize_gguf(source, tmp / f"{stem}-{q}.gguf", q)
                names[f"{stem}-{q}.gguf"] = None
        if scratch is not None:
            shutil.rmtree(scratch)
    return names


def _from_base_gguf(tmp: Path, ctx: _Context, job: GgufJob, stages: _Stages) -> str:
    """--base-gguf: patched with the plan (bias slot), or copied unchanged (control vector)."""
    assert job.base_gguf is not None
    if job.route == "bias":
        from export.llamacpp.patch import patch_gguf

        name = f"{ctx.name}-{job.base_type}.gguf" if job.base_type else f"{ctx.name}.gguf"
        with stages.stage("patch GGUF"):
            patch_gguf(job.base_gguf, ctx.plan, tmp / name)
        return name
    with stages.stage("copy GGUF"):
        fast_copy(job.base_gguf, tmp / job.base_gguf.name)
    return job.base_gguf.name


def _copy_plan(plan: Plan, folder: Path) -> None:
    """steering/plan.json + vectors.safetensors, the plan pointing at its local copy."""
    folder.mkdir(exist_ok=True)
    copy = folder / "vectors.safetensors"
    fast_copy(plan.vectors_file, copy)
    Plan(**{**plan.__dict__, "vectors_path": str(copy), "base_dir": Path("/")}).save(
        folder / "plan.json"
    )


def _verify_ggufs(
    tmp: Path, ctx: _Context, models: list[str], cv_name: str | None, stages: _Stages
) -> dict[str, dict[str, Any]]:
    """llama.cpp vs transformers + hooks for every model GGUF. Float builds must pass;
    quantized ones are reported as measured (quantization is expected to move logits)."""
    from export.llamacpp.verify import verify_gguf

    reports = {}
    for i, name in enumerate(models):
        with stages.stage(f"verify GGUF {i + 1}/{len(models)} (llama.cpp)"):
            report = verify_gguf(
                ctx.src,
                ctx.plan,
                tmp / name,
                control_vector=tmp / cv_name if cv_name else None,
                prompts=ctx.opts.prompts,
            )
        report.update(
            model=ctx.source.base_model or ctx.source.name, gguf=name, control_vector=cv_name
        )
        lossless = set(str(report.get("out_type", "")).split("/")) <= set(FLOAT_TYPES)
        if lossless and not report["passed"]:
            failed = "; ".join(
                f"{c['name']}: {c.get('detail', '')}" for c in report["checks"] if not c["ok"]
            )
            raise VerificationError(
                f"{name} does not match hook steering in llama.cpp ({failed}); nothing was written"
            )
        if not report["passed"]:
            ctx.notes.append(
                f"{name}: quantized, did not pass the llama.cpp checks for float builds "
                "(reported as measured in the card)"
            )
        (tmp / STEERING_DIR / f"verify-{Path(name).stem}.json").write_text(
            json.dumps(report, indent=2) + "\n"
        )
        reports[name] = report
    return reports
