"""What `steerbake export` will do, decided before a byte is written: the export job.

Every input is checked here (the steering against the model, route, names, outputs, GGUF
route, reports), and the job names every file each output folder will hold. `--dry-run`
prints that list; the export writes exactly it (checked once the folders are built).

  OUT/<name>/       the safetensors build (bias route, or orthogonalised weights for a plan
                    that ablates) or the PEFT adapter, tokenizer, README.md card, steering/
                    (plan.json, vectors.safetensors, bake.json, verify.json, verify-static.json
                    for an ablation, tuning/ and evaluation.json when there are reports),
                    SHA256SUMS
  OUT/<name>-GGUF/  GGUF builds (F16 by default), README.md card, steering/ (plan, vectors,
                    llama.cpp verify reports), SHA256SUMS. Families whose llama.cpp loader
                    has the ffn_down bias slot get baked GGUFs and no control vector; the
                    others get unsteered GGUFs and the control vector beside them. A plan
                    that ablates gets orthogonalised GGUFs for every family the writer has
                    (with the control vector of its additive part where `both` meets a
                    family without the slot).
"""

from __future__ import annotations

import json
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path

from bake.artifacts import ablated_checkpoint, adapter, bias_checkpoint
from bake.artifacts.reports import EvaluationReport, StaticReport
from bake.artifacts.steering import Steering
from bake.artifacts.steering_dir import PLAN_FILE, STEERING_DIR, VECTORS_FILE
from bake.errors import InputError, UnsupportedError
from bake.files.fileio import check_output_dir
from bake.model.arch import choose_route
from bake.model.checkpoint import Checkpoint
from bake.model.gguf_model import GgufModel
from bake.options import opt
from export.publish.cards import CARD_FILE, SourceRecord, source_record

FLOAT_TYPES = ("F32", "F16", "BF16")
QUANT_TYPES = ("Q8_0", "Q4_K_M")
DEFAULT_GGUF_TYPES = ("F16",)
SUMS_FILE = "SHA256SUMS"
TUNING_REPORT = "tuning_report.json"  # written by `steerbake tune` (bake.artifacts.tuning)
EVAL_REPORT = "evaluation.json"  # steering/ name of the `steerbake evaluate` report
VERIFY_REPORT = "verify.json"
STATIC_REPORT = "verify-static.json"  # steering/ name of the `verify --static` report (ablation)
GGUF_SUFFIX = "-GGUF"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_MAX_NAME = 96 - len(GGUF_SUFFIX)  # Hub repo names are at most 96 characters
_DTYPE_TO_GGUF = {"F32": "F32", "F16": "F16", "BF16": "BF16"}
LLAMA_HINT = "install llama-cpp-python (pip install 'steerbake[llama]')"


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


@dataclass
class ExportOptions:
    name: str | None = opt(None, "Build name (Hub repo name) [default: SOURCE-steered].")
    route: str = opt(  # the safetensors build
        "auto",
        "bias: new checkpoint; adapter: PEFT adapter folder.",
        choices=("auto", "bias", "adapter"),
    )
    gguf_types: tuple[str, ...] | None = opt(  # None: F16, or the base GGUF's own type
        None,
        "Comma-separated GGUF types: F32, F16, BF16, Q8_0, Q4_K_M [default: F16].",
        metavar="TYPES",
        parse=parse_gguf_types,
    )
    gguf: bool = opt(
        True, "Write only the safetensors build.", flags=("--no-gguf",), parse=operator.not_
    )
    base_gguf: Path | None = opt(
        None, "Steer this existing GGUF of the base model instead of converting MODEL."
    )
    base_model_id: str | None = opt(
        None, "Hub id of MODEL, for the cards' base_model.", metavar="ORG/NAME"
    )
    tuning_report: Path | None = opt(
        None, "tuning_report.json from `steerbake tune` [default: the one beside PLAN]."
    )
    eval_report: Path | None = opt(
        None, "JSON report from `steerbake evaluate`, for the cards' evaluation section."
    )
    prompts: Path | None = opt(None, "Extra verify prompts (JSONL or text, one per line).")
    skip_verify: bool = opt(False, "Do not verify (the cards then say 'not verified').")
    overwrite: bool = opt(False, "Replace existing output folders.")
    progress: bool = True
    dry_run: bool = opt(
        False,
        "List every file the export would write, from the same job plan; write nothing, "
        "load no weights.",
    )


@dataclass
class GgufJob:
    """What the GGUF folder will hold."""

    # bias (baked GGUFs) | control-vector (unsteered GGUFs + control vector) | ablate
    # (orthogonalised GGUFs) | ablate+bias (both baked) | ablate+control-vector (`both`:
    # orthogonalised GGUFs + the control vector of the additive part)
    route: str
    stem: str  # file name stem of the model GGUFs
    float_types: list[str]
    quant_types: list[str]
    quantize_from: str | None  # float type the quantized files are made from
    base_gguf: Path | None
    base_type: str | None  # the base GGUF's file type, e.g. Q4_K_M
    verify: bool
    control_vector: str | None  # file name of the control vector, when the route needs one
    notes: list[str] = field(default_factory=list)  # skipped types and checks, for the card
    reports: list[str] = field(default_factory=list)  # steering/ reports (GGUF MODEL only)

    @property
    def models(self) -> list[str]:
        """The model GGUF file names, in the order they are written."""
        if self.base_gguf is not None:
            if self.route == "control-vector":
                return [self.base_gguf.name]
            suffix = f"-{self.base_type}" if self.base_type else ""
            return [f"{self.stem}{suffix}.gguf"]
        return [f"{self.stem}-{t}.gguf" for t in (*self.float_types, *self.quant_types)]

    def files(self) -> list[str]:
        verify = [f"{STEERING_DIR}/verify-{Path(m).stem}.json" for m in self.models]
        steering = [f"{STEERING_DIR}/{PLAN_FILE}", f"{STEERING_DIR}/{VECTORS_FILE}"]
        extra = [self.control_vector] if self.control_vector else []
        own = [*self.models, *extra, *steering, *(verify if self.verify else [])]
        own += [f"{STEERING_DIR}/{dest}" for dest in self.reports]
        return sorted([*own, CARD_FILE, SUMS_FILE])


@dataclass
class ExportJob:
    """The whole export: its inputs, checked, and every file it will write."""

    steering: Steering
    source: SourceRecord
    name: str
    route: str  # bias | adapter | ablate | ablate+bias
    reports: dict[str, Path]  # steering/ path -> source file
    evaluation: EvaluationReport | None
    gguf: GgufJob | None
    model_dir: Path | None  # None: MODEL is a GGUF, only the GGUF folder is written
    gguf_dir: Path
    opts: ExportOptions
    notes: list[str] = field(default_factory=list)
    static: StaticReport | None = None  # the ablation's `verify --static`, once it has run

    @property
    def checkpoint(self) -> Checkpoint:
        return self.steering.checkpoint

    @property
    def from_gguf(self) -> bool:
        """MODEL is a GGUF: that same file is steered (its quantization kept)."""
        return self.model_dir is None

    def model_files(self) -> list[str]:
        if self.route.startswith("ablate"):
            files = ablated_checkpoint.planned_files(self.checkpoint, self.steering)
        else:
            writer = adapter if self.route == "adapter" else bias_checkpoint
            files = writer.planned_files(self.checkpoint)
        files += [f"{STEERING_DIR}/{dest}" for dest in self.reports]
        if not self.opts.skip_verify:
            files.append(f"{STEERING_DIR}/{VERIFY_REPORT}")
            if self.route.startswith("ablate"):
                files.append(f"{STEERING_DIR}/{STATIC_REPORT}")
        return sorted([*files, CARD_FILE])

    def files(self) -> dict[Path, list[str]]:
        """Output folder -> the files it will hold, relative to it."""
        out = {self.model_dir: self.model_files()} if self.model_dir is not None else {}
        if self.gguf is not None:
            out[self.gguf_dir] = self.gguf.files()
        return out


def plan_export(
    steering: Steering, output: Path, opts: ExportOptions, model_spec: str | None = None
) -> ExportJob:
    """Check every input and decide every file; nothing is written, no weight is read."""
    if isinstance(steering.model, GgufModel):
        return plan_gguf_export(steering, output, opts, model_spec)
    ckpt = steering.checkpoint
    route = choose_route(ckpt.spec, opts.route, steering.kind)
    source = source_record(ckpt.path, model_spec, opts.base_model_id)
    name = check_name(opts.name or f"{source.name}-steered")
    reports = read_reports(steering.plan_file, opts)
    evaluation = _evaluation(opts)
    gguf = plan_gguf(steering, opts, name, source.name)
    model_dir, gguf_dir = Path(output) / name, Path(output) / f"{name}{GGUF_SUFFIX}"
    check_output_dir(model_dir, overwrite=opts.overwrite, sources=(ckpt.path,))
    if gguf is not None:
        check_output_dir(gguf_dir, overwrite=opts.overwrite, sources=(ckpt.path,))
    skipped = [] if gguf else [r for r in [_gguf_skip_reason(steering, opts)] if r]
    notes = [*source.warnings, *(gguf.notes if gguf else skipped)]
    return ExportJob(
        steering, source, name, route, reports, evaluation, gguf, model_dir, gguf_dir, opts, notes
    )


def plan_gguf_export(
    steering: Steering, output: Path, opts: ExportOptions, model_spec: str | None
) -> ExportJob:
    """MODEL is a GGUF: steer that file (patched where llama.cpp has the ffn_down bias slot,
    copied beside a control vector otherwise), keeping its quantization; only the GGUF
    folder is written."""
    from bake.artifacts.control_vector import BLOCK0_REASON

    model = steering.model
    assert isinstance(model, GgufModel)
    if opts.gguf_types is not None or opts.base_gguf is not None or not opts.gguf:
        raise InputError(
            "MODEL is a GGUF: the export steers that file as it is, so --gguf-types, "
            "--base-gguf and --no-gguf do not apply (quantize afterwards with `steerbake "
            "quantize`, or convert the GGUF to a checkpoint with `steerbake convert`)"
        )
    spec = steering.spec
    if steering.plan.ablates:
        raise InputError(
            f"MODEL is a GGUF and the plan ablates, which rewrites weight matrices a patch "
            f"never decodes: convert it (steerbake convert {model.path.name} -o DIR) and export "
            "DIR, which builds the GGUFs from the checkpoint"
        )
    if not spec.gguf_bias_slot and 0 in steering.layers:
        raise InputError(f"the plan steers block 0 and {BLOCK0_REASON}; tune without block 0")
    source = source_record(model.path.parent, model_spec, opts.base_model_id)
    name = check_name(opts.name or f"{model.path.stem}-steered")
    route = "bias" if spec.gguf_bias_slot else "control-vector"
    verify, notes = _gguf_verify_available(opts)
    cv = f"{name}-control-vector.gguf" if route == "control-vector" else None
    notes.append(
        f"no safetensors build: MODEL is a GGUF; `steerbake convert {model.path.name} -o DIR` "
        "writes a checkpoint to bake and export"
    )
    reports = read_reports(steering.plan_file, opts)
    gguf = GgufJob(route, name, [], [], None, model.path, _gguf_file_type(model.path), verify, cv)
    gguf.notes, gguf.reports = notes, list(reports)
    gguf_dir = Path(output) / f"{name}{GGUF_SUFFIX}"
    check_output_dir(gguf_dir, overwrite=opts.overwrite, sources=(model.path,))
    evaluation = _evaluation(opts)
    return ExportJob(
        steering, source, name, route, reports, evaluation, gguf, None, gguf_dir, opts,
        [*source.warnings, *notes],
    )  # fmt: skip


def _evaluation(opts: ExportOptions) -> EvaluationReport | None:
    if opts.eval_report is None:
        return None
    data = json.loads(Path(opts.eval_report).read_text(encoding="utf-8"))
    return EvaluationReport.from_json(data, str(opts.eval_report))


def check_name(name: str) -> str:
    if not _NAME.match(name) or ".." in name or "--" in name or len(name) > _MAX_NAME:
        raise InputError(
            f"--name {name!r} cannot be a Hub repo name: use letters, digits, '.', '_' and "
            f"'-' (no '--' or '..'), at most {_MAX_NAME} characters"
        )
    return name


def read_reports(plan_file: Path | None, opts: ExportOptions) -> dict[str, Path]:
    """steering/ path -> source file, for the reports that ship with the build: the tuning
    report (JSON, with its Markdown table and plots) and the evaluation report. The tuning
    report defaults to the one `steerbake tune` writes beside the plan."""
    reports: dict[str, Path] = {}
    tuning = opts.tuning_report
    if tuning is None and plan_file is not None:
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
def plan_gguf(
    steering: Steering, opts: ExportOptions, name: str, source_name: str
) -> GgufJob | None:
    """The GGUF folder's content, or None when there is no GGUF route (with the reason in
    `_gguf_skip_reason`). Raises on contradictory options."""
    if opts.base_gguf is not None and opts.gguf_types is not None:
        raise InputError(
            "--gguf-types cannot be combined with --base-gguf: the patched file keeps the "
            "base GGUF's own type; quantize it afterwards with `steerbake quantize`"
        )
    if opts.base_gguf is not None and not Path(opts.base_gguf).is_file():
        raise InputError(f"--base-gguf {opts.base_gguf} does not exist")
    if opts.base_gguf is not None and steering.plan.ablates:
        raise InputError(
            "--base-gguf cannot carry an ablation (it rewrites weight matrices, which a patch "
            "never decodes): drop --base-gguf, and the GGUFs are built from the checkpoint"
        )
    if _gguf_skip_reason(steering, opts):
        return None
    ckpt = steering.checkpoint
    route = gguf_route_of(steering)
    # baked files carry the steered name; unsteered ones the source's, so nobody mistakes
    # an unsteered file for a steered one
    stem = name if route != "control-vector" else source_name
    cv = f"{name}-control-vector.gguf" if route.endswith("control-vector") else None
    verify, notes = _gguf_verify_available(opts)
    if opts.base_gguf is not None:
        base = Path(opts.base_gguf)
        base_type = _gguf_file_type(base)
        return GgufJob(route, name, [], [], None, base, base_type, verify, cv, notes)
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
    return GgufJob(route, stem, floats, quants, quantize_from, None, None, verify, cv, notes)


def gguf_route_of(steering: Steering) -> str:
    """How the steering reaches llama.cpp (see GgufJob.route)."""
    slot = steering.spec.gguf_bias_slot
    if steering.kind == "ablate":
        return "ablate"
    if steering.kind == "both":
        return "ablate+bias" if slot else "ablate+control-vector"
    return "bias" if slot else "control-vector"


def _gguf_skip_reason(steering: Steering, opts: ExportOptions) -> str:
    """Why no GGUF folder is written ('' when one is)."""
    from bake.artifacts.control_vector import BLOCK0_REASON

    spec, ckpt = steering.spec, steering.checkpoint
    if not opts.gguf:
        return "GGUF builds: skipped (--no-gguf)"
    if steering.plan.adds and not spec.gguf_bias_slot and 0 in steering.layers:
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

    value = read_layout(path).values.get(gguf.Keys.General.FILE_TYPE)
    try:
        name = gguf.LlamaFileType(int(value)).name if value is not None else None
    except ValueError:
        return None
    return name.removeprefix("MOSTLY_").removeprefix("ALL_") if name else None
