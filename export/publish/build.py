"""`steerbake export`: from a Steering to folders that are ready to publish.

The job (export.publish.job) fixes every input and every file first; here the folders are
built. Each is built in a temporary folder beside its final path and renamed into place,
the GGUF folder first, once both are complete, so a failure anywhere leaves neither folder,
and an interrupted run only `.steerbake-tmp-*` ones. What was written is checked against
the job's list before the rename, so `--dry-run` lists exactly what an export writes.

The GGUF model files are written in a second thread while the safetensors build is baked
and verified: both read the same source shards (one trip through the page cache) and the
work (casts, SHA-256, writes) spreads over the cores. Every byte written is hashed once,
from memory, as it is written (bake.files.fileio.StreamWriter): the carried shards from
the source pages they are copied from, each GGUF from its write buffers; SHA256SUMS and the
cards reuse those digests. Large files are written with O_DIRECT where the filesystem
allows it (no page-cache copy and no writeback left for later).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from bake.artifacts.reports import StaticReport, VerifyReport
from bake.artifacts.steering import Steering
from bake.artifacts.steering_dir import STEERING_DIR, write_plan_copy
from bake.errors import OutputError, VerificationError
from bake.files.fileio import atomic_output_dir, fast_copy, sha256_file
from bake.files.jsonio import dumps
from export.llamacpp.cvec import write_steering_control_vector
from export.llamacpp.verify import GgufVerifyReport
from export.llamacpp.verify_source import SourceVerifyReport
from export.publish.cards import CARD_FILE, CardInput, FileEntry, human_size, write_card
from export.publish.job import (
    FLOAT_TYPES,
    GGUF_SUFFIX,
    STATIC_REPORT,
    SUMS_FILE,
    VERIFY_REPORT,
    ExportJob,
    ExportOptions,
    GgufJob,
    plan_export,
)

T = TypeVar("T")
AnyGgufReport = GgufVerifyReport | SourceVerifyReport


@dataclass
class ExportResult:
    folders: dict[str, list[FileEntry]]  # folder path -> files (sizes 0 in a dry run)
    notes: list[str]  # warnings and skipped parts, one line each
    verified: bool
    seconds: float
    dry_run: bool = False

    def summary(self) -> str:
        lines = ["dry run: nothing written; the export would write:"] if self.dry_run else []
        for folder, files in self.folders.items():
            if self.dry_run:
                lines.append(f"{folder}/  ({len(files)} files)")
                lines += [f"  {f.path}" for f in files]
                continue
            total = sum(f.size for f in files)
            lines.append(f"{folder}/  ({len(files)} files, {human_size(int(total))})")
            width = max(len(f.path) for f in files)
            lines += [f"  {f.path:<{width}}  {human_size(f.size):>10}" for f in files]
        lines += [f"note: {n}" for n in self.notes]
        if not self.verified:
            lines.append("warning: exported WITHOUT verification (--skip-verify); the cards say so")
        if not self.dry_run:
            lines.append(f"export finished in {self.seconds:.1f} s")
        return "\n".join(lines)


# --------------------------------------------------------------------------- entry point
def run_export(
    steering: Steering,
    output: Path,
    opts: ExportOptions | None = None,
    *,
    model_spec: str | None = None,
) -> ExportResult:
    """Bake, verify and write OUT/<name>/ and OUT/<name>-GGUF/ (export.publish.job);
    with opts.dry_run, only list what would be written. model_spec: MODEL as the user
    typed it (a Hub id there names the base model in the cards)."""
    start = time.perf_counter()
    opts = opts or ExportOptions()
    job = plan_export(steering, output, opts, model_spec)
    if opts.dry_run:
        planned = {
            str(folder): [FileEntry(f, 0, "") for f in files]
            for folder, files in job.files().items()
        }
        return ExportResult(planned, job.notes, not opts.skip_verify, 0.0, dry_run=True)
    folders = _build(job)
    return ExportResult(folders, job.notes, not opts.skip_verify, time.perf_counter() - start)


def _build(job: ExportJob) -> dict[str, list[FileEntry]]:
    if job.model_dir is None:
        return _build_from_gguf(job)
    folders: dict[str, list[FileEntry]] = {}
    opts = job.opts
    with (
        _Stages(_stage_names(job), opts.progress) as stages,
        atomic_output_dir(job.model_dir, overwrite=opts.overwrite) as tmp_model,
    ):
        if job.gguf is None:
            folders[str(job.model_dir)] = _model_folder(tmp_model, job, stages)
        else:  # the GGUF folder exits first: renamed into place just before the model folder
            with (
                atomic_output_dir(job.gguf_dir, overwrite=opts.overwrite) as tmp_gguf,
                _in_background(partial(_write_gguf_models, tmp_gguf, job, stages)) as models,
            ):
                folders[str(job.model_dir)] = _model_folder(tmp_model, job, stages)
                folders[str(job.gguf_dir)] = build_gguf_folder(
                    tmp_gguf, job, models.result(), stages
                )
    return folders


def _build_from_gguf(job: ExportJob) -> dict[str, list[FileEntry]]:
    """MODEL is a GGUF: only the GGUF folder, that file steered, its reports beside it."""
    with (
        _Stages(_stage_names(job), job.opts.progress) as stages,
        atomic_output_dir(job.gguf_dir, overwrite=job.opts.overwrite) as tmp,
    ):
        models = _write_gguf_models(tmp, job, stages, threading.Event())
        for dest, path in job.reports.items():
            (tmp / STEERING_DIR / dest).parent.mkdir(parents=True, exist_ok=True)
            fast_copy(path, tmp / STEERING_DIR / dest)
        return {str(job.gguf_dir): build_gguf_folder(tmp, job, models, stages)}


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


# --------------------------------------------------------------------------- progress
def _stage_names(export: ExportJob) -> list[str]:
    job, opts = export.gguf, export.opts
    stages = [f"bake ({export.route})"] + ([] if opts.skip_verify else ["verify (transformers)"])
    stages.append("card and checksums")
    if job is not None:
        if job.base_gguf is not None:
            stages.append("patch GGUF" if job.route == "bias" else "copy GGUF")
        stages += [f"GGUF {t}" for t in job.float_types]
        if job.quant_types and job.quantize_from not in job.float_types:
            stages.append(f"GGUF {job.quantize_from} (to quantize from)")
        stages += [f"quantize {t}" for t in job.quant_types]
        if job.control_vector:
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
def build_model_folder(tmp: Path, job: ExportJob, stages: _Stages) -> VerifyReport | None:
    """Bake into `tmp`, verify, copy the reports; returns the verify report (None if skipped)."""
    from bake.stages.bake import run_bake

    with stages.stage(f"bake ({job.route})"):
        staging = tmp / ".bake"
        run_bake(job.steering, staging, route=job.route, base_model=job.source.base_model)
        for child in staging.iterdir():
            os.replace(child, tmp / child.name)
        staging.rmdir()
    for dest, path in job.reports.items():
        (tmp / STEERING_DIR / dest).parent.mkdir(parents=True, exist_ok=True)
        _copy_report(path, tmp / STEERING_DIR / dest)
    if job.opts.skip_verify:
        return None
    with stages.stage("verify (transformers)"):
        from bake.stages.verify import run_verify

        report = run_verify(job.steering, tmp, prompts=job.opts.prompts)
        report.model = job.source.base_model or job.source.name
        report.baked = job.name
        if not report.passed:
            raise VerificationError(
                f"the {job.route} build does not match hook steering: max |delta logit| "
                f"{report.max_abs_diff:.3g} (mean {report.mean_abs_diff:.3g}, tolerance "
                f"{report.tolerance:.3g}), greedy {report.greedy_identical}/"
                f"{report.prompts} identical; nothing was written"
            )
        _write_json(tmp / STEERING_DIR / VERIFY_REPORT, report.to_json())
        if job.route.startswith("ablate"):
            job.static = _static_proof(tmp, job)
    return report


def _static_proof(tmp: Path, job: ExportJob) -> StaticReport:
    """An ablation's bitwise proof (`verify --static`): every orthogonalised tensor equal to
    its recomputation, every other one byte-identical; written to steering/."""
    from bake.stages.verify_static import run_verify_static

    static = run_verify_static(job.steering, tmp)
    static.model, static.baked = job.source.base_model or job.source.name, job.name
    if not static.passed:
        failed = "; ".join(f"{c.name}: {c.detail}" for c in static.checks if not c.ok)
        raise VerificationError(f"the {job.route} build fails `verify --static` ({failed})")
    _write_json(tmp / STEERING_DIR / STATIC_REPORT, static.to_json())
    return static


def _model_folder(tmp: Path, job: ExportJob, stages: _Stages) -> list[FileEntry]:
    """The safetensors build (or adapter) in `tmp`, verified, with its card and sums."""
    verify = build_model_folder(tmp, job, stages)
    kind = "adapter" if job.route == "adapter" else "checkpoint"
    card = _card(job, kind, job.route, verify=verify)
    return _finish_folder(tmp, job.model_files(), card, stages)


def _card(
    job: ExportJob,
    kind: str,
    route: str,
    *,
    verify: VerifyReport | None = None,
    gguf_verify: dict[str, AnyGgufReport] | None = None,
) -> CardInput:
    """A card without its file list (filled in by _finish_folder)."""
    gguf = job.gguf
    companion: str | None = job.name  # the GGUF card points to the safetensors build
    if kind != "gguf":
        companion = f"{job.name}{GGUF_SUFFIX}" if gguf is not None else None
    in_gguf = kind == "gguf" and gguf is not None
    return CardInput(
        kind=kind,
        name=job.name if kind != "gguf" else f"{job.name}{GGUF_SUFFIX}",
        source=job.source,
        steering=job.steering,
        route=route,
        steerbake_version=_version(),
        files=[],
        verify=verify,
        static=job.static if kind != "gguf" else None,
        gguf_verify=gguf_verify or {},
        gguf_notes=list(gguf.notes) if in_gguf and gguf else [],
        evaluation=job.evaluation if kind != "gguf" else None,
        control_vector=gguf.control_vector if in_gguf and gguf else None,
        companion=companion,
        base_gguf=gguf.base_gguf.name if (in_gguf and gguf and gguf.base_gguf) else None,
    )


def _version() -> str:
    from bake import __version__

    return __version__


def _finish_folder(
    tmp: Path,
    planned: list[str],
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
    written = sorted([*everything, sums], key=lambda f: f.path)
    if [f.path for f in written] != sorted(planned):  # the dry run's list must be the truth
        raise OutputError(
            f"internal error: the export wrote {sorted(f.path for f in written)} but planned "
            f"{sorted(planned)}; nothing was published, please report it"
        )
    return written


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
    tmp: Path, job: ExportJob, models: dict[str, str | None], stages: _Stages
) -> list[FileEntry]:
    """Around the model GGUFs already in `tmp` (`models`: name -> sha256 where known, from
    _write_gguf_models): the control vector where needed, steering/, verify reports, card,
    sums."""
    gguf = job.gguf
    assert gguf is not None
    if gguf.control_vector:
        with stages.stage("control vector"):
            write_steering_control_vector(job.steering, tmp / gguf.control_vector)
    write_plan_copy(job.steering, tmp / STEERING_DIR)
    reports: dict[str, AnyGgufReport] = {}
    if gguf.verify:
        reports = _verify_ggufs(tmp, job, list(models), stages)
    card = _card(job, "gguf", gguf.route, gguf_verify=reports)
    known = {name: digest for name, digest in models.items() if digest}
    return _finish_folder(tmp, gguf.files(), card, stages, known)


def _write_gguf_models(
    tmp: Path, job: ExportJob, stages: _Stages, cancel: threading.Event
) -> dict[str, str | None]:
    """The model GGUFs in `tmp`, in the order written: file name -> sha256 (hashed while
    converting; None for patched and quantized files). Stops between files, and between
    tensors of a conversion, once `cancel` is set."""
    gguf = job.gguf
    assert gguf is not None
    if gguf.base_gguf is not None:
        return {_from_base_gguf(tmp, job, gguf, stages): None}
    from export.llamacpp.writer import convert_to_gguf

    steering = job.steering if gguf.route != "control-vector" else None
    src, stem = job.checkpoint.path, gguf.stem
    names: dict[str, str | None] = {}
    for t in gguf.float_types:
        with stages.stage(f"GGUF {t}"):
            path = tmp / f"{stem}-{t}.gguf"
            result = convert_to_gguf(src, path, t, steering, name=stem, sha256=True, cancel=cancel)
            names[path.name] = result.sha256
    if gguf.quant_types:
        from export.llamacpp.quantize import run_quantize

        assert gguf.quantize_from is not None
        source = tmp / f"{stem}-{gguf.quantize_from}.gguf"
        scratch = None
        if gguf.quantize_from not in gguf.float_types:
            scratch = tmp / ".work"
            scratch.mkdir()
            source = scratch / f"{stem}-{gguf.quantize_from}.gguf"
            with stages.stage(f"GGUF {gguf.quantize_from} (to quantize from)"):
                convert_to_gguf(src, source, gguf.quantize_from, steering, name=stem, cancel=cancel)
        for q in gguf.quant_types:
            if cancel.is_set():
                raise OutputError(f"{tmp}: cancelled")
            with stages.stage(f"quantize {q}"):
                run_quantize(source, tmp / f"{stem}-{q}.gguf", q)
                names[f"{stem}-{q}.gguf"] = None
        if scratch is not None:
            shutil.rmtree(scratch)
    return names


def _from_base_gguf(tmp: Path, job: ExportJob, gguf: GgufJob, stages: _Stages) -> str:
    """--base-gguf: patched with the plan (bias slot), or copied unchanged (control vector)."""
    assert gguf.base_gguf is not None
    (name,) = gguf.models
    if gguf.route == "bias":
        from export.llamacpp.patch import gguf_base, patch_gguf

        with stages.stage("patch GGUF"):
            base = job.steering.rebind(gguf_base(gguf.base_gguf, job.steering.plan))
            patch_gguf(base, tmp / name)
        return name
    with stages.stage("copy GGUF"):
        fast_copy(gguf.base_gguf, tmp / name)
    return name


def _verify_ggufs(
    tmp: Path, job: ExportJob, models: list[str], stages: _Stages
) -> dict[str, AnyGgufReport]:
    """llama.cpp vs transformers + hooks for every model GGUF. Float builds must pass;
    quantized ones are reported as measured (quantization is expected to move logits)."""
    from export.llamacpp.verify import verify_gguf

    assert job.gguf is not None
    cv_name = job.gguf.control_vector
    reports: dict[str, AnyGgufReport] = {}
    for i, name in enumerate(models):
        with stages.stage(f"verify GGUF {i + 1}/{len(models)} (llama.cpp)"):
            cv = tmp / cv_name if cv_name else None
            if job.from_gguf:
                from export.llamacpp.verify_source import verify_from_source

                source = verify_from_source(
                    job.steering, tmp / name, control_vector=cv, prompts=job.opts.prompts
                )
                _write_json(tmp / STEERING_DIR / f"verify-{Path(name).stem}.json", source.to_json())
                if not source.passed:
                    failed = "; ".join(f"{c.name}: {c.detail}" for c in source.checks if not c.ok)
                    raise VerificationError(f"{name} does not match its steering ({failed})")
                reports[name] = source
                continue
            report = verify_gguf(
                job.steering, tmp / name, control_vector=cv, prompts=job.opts.prompts
            )
        report.model = job.source.base_model or job.source.name
        report.gguf, report.control_vector = name, cv_name
        lossless = set(report.out_type.split("/")) <= set(FLOAT_TYPES)
        if lossless and not report.passed:
            failed = "; ".join(f"{c.name}: {c.detail}" for c in report.checks if not c.ok)
            raise VerificationError(
                f"{name} does not match hook steering in llama.cpp ({failed}); nothing was written"
            )
        if not report.passed:
            job.notes.append(
                f"{name}: quantized, did not pass the llama.cpp checks for float builds "
                "(reported as measured in the card)"
            )
        _write_json(tmp / STEERING_DIR / f"verify-{Path(name).stem}.json", report.to_json())
        reports[name] = report
    return reports


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(dumps(data, indent=2) + "\n")


def _copy_report(src: Path, dest: Path) -> None:
    """A report into steering/: JSON rewritten with NaN as null (older tuning reports hold
    bare NaN, which is not JSON), other files copied as they are."""
    if src.suffix == ".json":
        _write_json(dest, json.loads(src.read_text(encoding="utf-8")))
    else:
        fast_copy(src, dest)
