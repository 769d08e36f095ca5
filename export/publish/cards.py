"""Model cards for exported builds: YAML metadata (huggingface_hub's ModelCardData) plus
Markdown from the Jinja template in model_cards/, rendered with ModelCard.from_template.

Everything a card says comes from its inputs (the plan, the verify and tuning reports, the
files written, the source model's own card); nothing comes from the clock or the machine, so
one input always renders the same bytes.

Where the facts come from (each optional; a missing one is said to be unrecorded):
  plan.provenance: method, options.{lam, lambda_mode, covariance}, position and
    counts.{refusal, compliant, neutral, heldout} (from `fit`); tuning.{goal, baseline,
    chosen, trials, prompt_sets, judge, decoding} (from `tune`); judge, rubric_version.
  evaluation report (`steerbake evaluate` JSON): sets.{name}.{before, after}.{n,
    refusal_rate}, kl.{set}, judge, decoding. Without one, the card shows the tuning
    record's before/after on the tuning sets and says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bake.artifacts.plan import Plan, format_layers
from bake.artifacts.reports import EvaluationReport, StaticReport, VerifyReport
from bake.artifacts.steering import Steering
from bake.artifacts.vectors import SteeringVectors
from bake.errors import InputError
from bake.model.fingerprint import Fingerprint

if TYPE_CHECKING:
    from export.llamacpp.verify import GgufVerifyReport
    from export.llamacpp.verify_source import SourceVerifyReport

    AnyGgufReport = GgufVerifyReport | SourceVerifyReport

CARD_FILE = "README.md"
TEMPLATE = "steered_model.md.jinja"
PIPELINE_TAG = "text-generation"
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# The Hub's license identifiers (huggingface.co/docs/hub/repositories-licenses); any other
# license is written as `other`, with its name and an https license_link when the source
# card gives them.
_HUB_LICENSE_IDS = """
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m
bigscience-bloom-rail-1.0 bigcode-openrail-m afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause
bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5 cc-by-3.0 cc-by-4.0
cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0
cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0
cdla-sharing-1.0 cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0
etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc
h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr mpl-2.0 odc-by odbl
openmdw-1.0 openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr
deepfloyd-if-license fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2
llama3.3 llama4 grok2-community gemma unknown other
"""
HUB_LICENSES = frozenset(_HUB_LICENSE_IDS.split())
LANGUAGE = re.compile(r"^[a-z]{2,3}(?:-(?:[A-Z]{2}|[A-Z][a-z]{3}|[0-9]{3}))?$")  # ISO 639-1/3
_LICENSE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_CACHE_DIR = re.compile(r"^models--([^/]+?)--(.+)$")  # huggingface_hub cache layout


# kind -> (library_name, base_model_relation, extra tags)
KINDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "checkpoint": ("transformers", "finetune", ("transformers", "safetensors")),
    "adapter": ("peft", "adapter", ("peft", "lora")),
    "gguf": ("llama-cpp-python", "quantized", ("gguf", "llama.cpp")),
}
METHOD_NAMES = {
    "md": "MD (difference of class means)",
    "rmd": "RMD (ridge-regularised mean difference)",
    "wrmd": "WRMD (ridge-regularised, each prompt weighted by its absolute refusal score)",
    "imported": "imported vectors",
    "raw": "raw vectors",
}


# --------------------------------------------------------------------------- source record
@dataclass(frozen=True)
class SourceRecord:
    """What the source model says about itself: Hub id, license, languages."""

    base_model: str | None  # Hub id, e.g. "meta-llama/Llama-3.2-1B-Instruct"
    name: str  # short name used in file names and prose
    license: str | None = None
    license_name: str | None = None
    license_link: str | None = None
    language: list[str] | None = None
    warnings: tuple[str, ...] = ()


def check_hub_id(text: str, what: str) -> str:
    if not HUB_ID.match(text) or ".." in text or "--" in text:
        raise InputError(f"{what} {text!r} is not a Hub id; use ORG/NAME, e.g. Qwen/Qwen3-0.6B")
    return text


def source_record(src: Path, model_spec: str | None, base_model_id: str | None) -> SourceRecord:
    """Hub id from --base-model-id, the MODEL argument, the cache path or config
    `_name_or_path` (first found); license and language from the source's README front
    matter. The README's own `base_model` names the source's parent, not the source, so it
    is never taken as the id."""
    warnings: list[str] = []
    hub_id = check_hub_id(base_model_id, "--base-model-id") if base_model_id else None
    hub_id = hub_id or _id_from_spec(model_spec) or _id_from_cache_path(src)
    hub_id = hub_id or _id_from_config(src)
    if hub_id is None:
        warnings.append(
            "the source model's Hub id is unknown, so the cards carry no base_model; "
            "pass --base-model-id ORG/NAME"
        )
    meta = _front_matter(src / CARD_FILE)
    name = hub_id.split("/")[-1] if hub_id else _folder_name(src, model_spec)
    license, license_name, license_link = _license(meta, warnings)
    return SourceRecord(
        base_model=hub_id,
        name=name,
        license=license,
        license_name=license_name,
        license_link=license_link,
        language=_languages(meta.get("language"), warnings),
        warnings=tuple(warnings),
    )


def _license(meta: dict[str, Any], warnings: list[str]) -> tuple[str | None, ...]:
    """(license, license_name, license_link) for the cards from the source's card: a Hub
    license id as it is; anything else `other`, named by the source's license_name (or its
    license, when either is a plain identifier), linked only by an https license_link."""
    license = _str_or_none(meta.get("license"))
    name = _str_or_none(meta.get("license_name"))
    link = _str_or_none(meta.get("license_link"))
    if link and not _https_url(link):
        warnings.append(
            f"the source card's license_link {link[:80]!r} is not an https URL: left out"
        )
        link = None
    if license is None:
        return None, None, link
    if license in HUB_LICENSES and license != "other":
        return license, None, link
    if license != "other":
        warnings.append(
            f"the source card's license {license[:80]!r} is not a Hub license id: the cards "
            "say `other`" + (" and link the source's license" if link else "")
        )
    candidates = [x for x in (name, license) if x and _LICENSE_NAME.match(x) and x != "other"]
    return "other", (candidates[0] if candidates else None), link


def _https_url(text: str) -> bool:
    from urllib.parse import urlparse

    url = urlparse(text)
    return url.scheme == "https" and bool(url.netloc) and not re.search(r"[\s<>\"'`]", text)


def _languages(value: Any, warnings: list[str]) -> list[str] | None:
    """ISO 639-1/639-3 codes (2-3 lower-case letters, optionally a region or script, e.g.
    en, fil, pt-BR, zh-Hant) from the source's `language`; others are left out."""
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list):
        return None
    codes = [str(x) for x in values if isinstance(x, str) and LANGUAGE.match(x)]
    dropped = [str(x)[:20] for x in values if not (isinstance(x, str) and LANGUAGE.match(x))]
    if dropped:
        warnings.append(f"the source card's language {dropped!r}: not ISO 639 codes, left out")
    return codes or None


def _id_from_spec(spec: str | None) -> str | None:
    if spec is None or Path(spec).expanduser().exists():
        return None
    return spec if HUB_ID.match(spec) else None


def _id_from_cache_path(src: Path) -> str | None:
    """.../models--ORG--NAME/snapshots/<commit> -> ORG/NAME."""
    parts = src.resolve().parts
    for i, part in enumerate(parts[:-2]):
        m = _CACHE_DIR.match(part)
        if m and parts[i + 1] == "snapshots":
            return f"{m.group(1)}/{m.group(2)}"
    return None


def _id_from_config(src: Path) -> str | None:
    import json

    try:
        value = json.loads((src / "config.json").read_text(encoding="utf-8")).get("_name_or_path")
    except (OSError, ValueError):
        return None
    if not isinstance(value, str) or value.startswith(("/", ".", "~")) or Path(value).exists():
        return None
    return value if HUB_ID.match(value) else None


def _front_matter(readme: Path) -> dict[str, Any]:
    if not readme.is_file():
        return {}
    from huggingface_hub.repocard import metadata_load

    try:
        return metadata_load(readme) or {}
    except Exception:  # a malformed card in the source must not stop an export
        return {}


def _folder_name(src: Path, spec: str | None) -> str:
    from bake.model.resolve import TOY_NAME

    return TOY_NAME if spec in (None, TOY_NAME) else src.resolve().name


def _str_or_none(value: Any) -> str | None:
    return str(value) if isinstance(value, str | int | float) and str(value) else None


# --------------------------------------------------------------------------- card inputs
@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the folder, posix
    size: int
    sha256: str

    @property
    def human_size(self) -> str:
        return human_size(self.size)


@dataclass
class CardInput:
    """Everything one card states. `kind`: checkpoint | adapter | gguf."""

    kind: str
    name: str  # folder / repo name
    source: SourceRecord
    steering: Steering  # the plan, its vectors and the model they are bound to
    route: str  # checkpoint: bias | adapter; gguf: bias | control-vector
    steerbake_version: str
    files: list[FileEntry]
    verify: VerifyReport | None = None  # PyTorch report (checkpoint, adapter)
    static: StaticReport | None = None  # `verify --static` (an ablation's bitwise proof)
    gguf_verify: dict[str, AnyGgufReport] = field(default_factory=dict)  # file -> report
    gguf_notes: list[str] = field(default_factory=list)  # why a type or check was skipped
    evaluation: EvaluationReport | None = None  # `steerbake evaluate` report
    control_vector: str | None = None  # file name beside unsteered GGUFs
    companion: str | None = None  # the other folder of the export (NAME or NAME-GGUF)
    base_gguf: str | None = None  # --base-gguf file name (patch path)

    @property
    def plan(self) -> Plan:
        return self.steering.plan

    @property
    def vectors(self) -> SteeringVectors:
        return self.steering.vectors

    @property
    def fingerprint(self) -> Fingerprint:
        return self.steering.model.fingerprint


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    raise AssertionError("unreachable")


def text(value: Any) -> str:
    """Text from an input (a report, the source's card, a file name) safe in Markdown prose:
    no HTML (a `<` that could open a tag and an `&` that could open an entity are escaped;
    "<= 0.01" stays as it is) and no links (`[` and `]` escaped)."""
    out = str(value).replace("\\", "\\\\")
    out = re.sub(r"&(?=[A-Za-z#])", "&amp;", out)
    out = re.sub(r"<(?=[A-Za-z/!?])", "&lt;", out)
    return out.replace("[", "\\[").replace("]", "\\]")


def cell(value: Any) -> str:
    """Text safe inside a Markdown table cell: `text`, no pipes, no line breaks."""
    return text(value).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _num(x: Any, fmt: str = ".3g") -> str:
    return "n/a" if x is None else format(float(x), fmt)


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * float(x):.1f}%"


# --------------------------------------------------------------------------- facts -> text
def steering_rows(card: CardInput) -> list[dict[str, str]]:
    """Per steered layer: scale s_l, multiplier m_l and |v_l| = |alpha * m_l * s_l|."""
    rows = []
    for layer in card.plan.layers:
        m = card.plan.layer_multipliers.get(layer, 1.0)
        s = card.vectors.scales[layer]
        rows.append(
            {
                "layer": str(layer),
                "scale": _num(s, ".4g"),
                "multiplier": _num(m, "g"),
                "norm": _num(abs(card.plan.alpha * m * s), ".4g"),
            }
        )
    return rows


def method_text(prov: dict[str, Any]) -> str:
    method = str(prov.get("method", "unrecorded"))
    text = METHOD_NAMES.get(method, method)
    opts = prov.get("options") or {}
    if method in ("rmd", "wrmd") and "lam" in opts:
        mode = opts.get("lambda_mode", "relative")
        unit = " x trace(Sigma)/d" if mode == "relative" else " (absolute)"
        text += f"; lambda = {_num(opts['lam'], 'g')}{unit}"
        if opts.get("covariance"):
            text += f", covariance of the {opts['covariance']} set"
    return text


def provenance_facts(prov: dict[str, Any], evaluation: EvaluationReport | None) -> dict[str, str]:
    """The "how it was obtained" table: judge, rubric, prompt sets, how layers were chosen."""
    tuning = prov.get("tuning") or {}
    judge = prov.get("judge") or tuning.get("judge") or (evaluation.judge if evaluation else None)
    if isinstance(judge, dict):
        judge = judge.get("model") or judge.get("name")
    rubric = prov.get("rubric_version") or tuning.get("rubric_version")
    counts = prov.get("counts") or {}
    sets = prov.get("prompt_sets") or tuning.get("prompt_sets") or {}
    if tuning:
        tried = f"{tuning.get('trials', 'n/a')} configurations tried"
        if "stage2" in tuning:
            tried = (
                f"{tuning['stage1']} configurations scored by forward passes, "
                f"{tuning['stage2']} generated and judged"
            )
        chosen = f"`steerbake tune`, goal {tuning.get('goal', 'remove')}, {tried}"
    else:
        chosen = "by hand (the plan has no tuning record)"
    facts = {
        "judge": str(judge) if judge else "not recorded in the plan",
        "rubric": str(rubric) if rubric else "not recorded in the plan",
        "decoding": str(
            tuning.get("decoding") or (evaluation.decoding if evaluation else None) or "n/a"
        ),
        "position": str(prov.get("position") or "not recorded"),
        "fit_sets": (
            ", ".join(
                f"{k} {counts[k]}"
                for k in ("refusal", "compliant", "neutral", "heldout")
                if k in counts
            )
            or "not recorded"
        ),
        "prompt_sets": ", ".join(f"{k} {v}" for k, v in sorted(sets.items())) or "not recorded",
        "chosen_by": chosen,
    }
    return {k: cell(v) for k, v in facts.items()}


def evaluation_rows(
    evaluation: EvaluationReport | None, prov: dict[str, Any]
) -> tuple[str | None, list[dict[str, str]], list[str]]:
    """(source of the numbers, per-set refusal rows, KL lines): from an evaluation report
    (`steerbake evaluate`) when one was given, else from the plan's tuning record."""
    if evaluation and evaluation.sets:
        rows = [
            {
                "set": cell(name),
                "n": str(s.before.n),
                "before": _pct(s.before.refusal_rate),
                "after": _pct(s.after.refusal_rate),
            }
            for name, s in sorted(evaluation.sets.items())
        ]
        kl = [f"{name}: {_num(v, '.4g')}" for name, v in sorted(evaluation.kl.items())]
        return "evaluation", rows, kl
    tuning = prov.get("tuning") or {}
    chosen, baseline = tuning.get("chosen") or {}, tuning.get("baseline") or {}
    if not chosen:
        return None, [], []
    goal = tuning.get("goal", "remove")
    primary, guard = ("target", "benign") if goal == "induce" else ("sensitive", "harmful")
    sizes = tuning.get("prompt_sets") or {}
    rows = [
        {
            "set": name,
            "n": str(sizes.get(name, "n/a")),
            "before": _pct(baseline.get(name)),
            "after": _pct(chosen.get(key)),
        }
        for name, key in ((primary, "primary"), (guard, "guard"))
    ]
    kl = [f"benign: {_num(chosen.get('kl'), '.4g')}"] if chosen.get("kl") is not None else []
    return "tuning", rows, kl


def _check_cells(check: Any) -> dict[str, Any]:
    """A report's check as table cells (its strings escaped)."""
    return {"name": cell(check.name), "ok": check.ok, "detail": cell(check.detail)}


def ablation_facts(card: CardInput) -> dict[str, Any] | None:
    """What an ablating plan removed, where, how strongly, in which form; None for `add`."""
    plan, spec = card.plan, card.steering.spec
    a = plan.ablation
    if a is None:
        return None
    n = card.fingerprint.num_layers
    one_direction = a.direction_layer is not None
    direction = (
        f"block {a.direction_layer}'s direction u, the same in every block"
        if one_direction
        else "each block's own direction u_l"
    )
    embed = (
        f"orthogonalised too: E <- E (I - a r r^T) with block {a.embed.direction_layer}'s "
        f"direction, a = {_num(a.embed.strength, 'g')}"
        if a.embed
        else "unchanged"
    )
    moe = bool(spec.expert_count_keys)
    writers = (
        "the attention output projection and every expert's MLP down projection (and the "
        "shared expert's)"
        if moe
        else "the attention output projection (`o_proj`) and the MLP down projection (`down_proj`)"
    )
    missing = [
        why
        for why, ok in (
            (f"strength {_num(a.strength, 'g')}, not 1", a.strength == 1.0),
            ("a direction per block, not one", one_direction),
            (f"{len(plan.layers)} of {n} blocks", len(plan.layers) == n),
            ("the embedding is not ablated", a.embed is not None),
            (
                "the embedding's direction or strength differs",
                a.embed is None
                or (a.embed.strength == 1.0 and a.embed.direction_layer == a.direction_layer),
            ),
        )
        if not ok
    ]
    return {
        "strength": _num(a.strength, "g"),
        "direction": direction,
        "embedding": embed,
        "writers": writers,
        "arditi": not missing,
        "arditi_why": cell("; ".join(missing)),
        "untied": a.embed is not None and _tied_head(card.steering),
    }


def _tied_head(steering: Steering) -> bool:
    """Whether the source's head reads its embedding (then an ablated embedding unties it)."""
    from bake.artifacts.ablated_checkpoint import is_tied
    from bake.model.checkpoint import Checkpoint

    return isinstance(steering.model, Checkpoint) and is_tied(steering.model)


def static_row(report: StaticReport | None) -> list[dict[str, Any]]:
    return [_check_cells(c) for c in report.checks] if report is not None else []


def verify_row(report: VerifyReport) -> dict[str, str | None]:
    return {
        "runtime": cell(report.runtime),
        "dtype": cell(report.dtype),
        "device": cell(report.device),
        "prompts": str(report.prompts),
        "max": _num(report.max_abs_diff),
        "mean": _num(report.mean_abs_diff),
        "tolerance": _num(report.tolerance),
        "greedy": f"{report.greedy_identical}/{report.prompts}",
        "near_ties": str(report.greedy_near_ties),
        "effect": _num(report.effect_max),
        "result": "PASS" if report.passed else "FAIL",
        "bound": cell(report.bound) if report.bound else None,
        "kl": _num(report.mean_kl, ".3g") if report.bound else None,
        "top1": _num(report.top1_agreement, ".4f") if report.bound else None,
    }


# --------------------------------------------------------------------------- rendering
def card_data(card: CardInput) -> Any:
    from huggingface_hub import ModelCardData

    library, relation, extra = KINDS[card.kind]
    tags = ["steering", "refusal-steering", "steerbake", *extra, card.fingerprint.architecture]
    if card.kind == "gguf" and card.route == "control-vector":
        tags.append("control-vector")
    src = card.source
    fields: dict[str, Any] = {
        "base_model": src.base_model,
        "library_name": library,
        "license": src.license,
        "license_name": src.license_name,
        "license_link": src.license_link,
        "language": src.language,
        "pipeline_tag": PIPELINE_TAG,
        "tags": list(dict.fromkeys(t for t in tags if t)),
    }
    if src.base_model:  # not a named ModelCardData field: passed as an extra key
        fields["base_model_relation"] = relation
    return ModelCardData(**fields)


def template_values(card: CardInput) -> dict[str, Any]:
    plan = card.plan
    eval_source, eval_rows, kl = evaluation_rows(card.evaluation, plan.provenance)
    gguf_files = [f for f in card.files if f.path.endswith(".gguf")]
    models = [f.path for f in gguf_files if f.path != card.control_vector]
    return {
        "kind": card.kind,
        "name": card.name,
        "route": card.route,
        "base_model": card.source.base_model,
        "base_display": _base_display(card.source),
        "source_name": card.source.name,
        "architecture": card.fingerprint.architecture,
        "num_layers": card.fingerprint.num_layers,
        "hidden_size": card.fingerprint.hidden_size,
        "layers": format_layers(plan.layers),
        "n_steered": len(plan.layers),
        "alpha": _num(plan.alpha, "g"),
        "lowers_refusal": plan.alpha < 0,
        "site": plan.site,
        "method": cell(method_text(plan.provenance)),
        "eval_judge": cell(card.evaluation.judge if card.evaluation else "not recorded"),
        "eval_decoding": cell(card.evaluation.decoding if card.evaluation else "not recorded"),
        "fitted": plan.provenance.get("method") in ("md", "rmd", "wrmd"),
        "labels_source": _labels_source(plan.provenance),
        "steering_rows": steering_rows(card),
        "prov": provenance_facts(plan.provenance, card.evaluation),
        "eval_source": eval_source,
        "eval_rows": eval_rows,
        "kl": kl,
        "verify": verify_row(card.verify) if card.verify else None,
        "static_checks": static_row(card.static),
        "intervention": plan.kind,
        "ablation": ablation_facts(card),
        "gguf_verify": [
            {"file": name, "checks": [_check_cells(c) for c in r.checks], "passed": r.passed}
            for name, r in sorted(card.gguf_verify.items())
        ],
        "gguf_notes": [text(note) for note in card.gguf_notes],
        "gguf_rel_tol": _num(next((r.rel_tolerance for r in card.gguf_verify.values()), None), "g"),
        "files": card.files,
        "gguf_models": models,
        "example_gguf": _example_gguf(models),
        "control_vector": card.control_vector,
        "companion": card.companion,
        "base_gguf": card.base_gguf,
        "version": card.steerbake_version,
    }


def _labels_source(prov: dict[str, Any]) -> str | None:
    """'labels from FILE' when the vectors were fitted on labels rather than judged answers."""
    source = str(prov.get("scores_source") or "")
    return cell(source) if source.startswith("labels from") else None


def _base_display(src: SourceRecord) -> str:
    if src.base_model:
        return f"[{src.base_model}](https://huggingface.co/{src.base_model})"
    return f"the source model ({text(src.name)})"


def _example_gguf(models: list[str]) -> str:
    """The file the usage examples load: F16 if present, else the first."""
    return next((m for m in models if m.endswith("-F16.gguf")), models[0] if models else "")


def render_card(card: CardInput) -> str:
    """The README.md text: YAML front matter, then the Markdown body, newline-terminated."""
    from huggingface_hub import ModelCard

    from model_cards import template_path

    rendered = ModelCard.from_template(
        card_data(card), template_path=str(template_path(TEMPLATE)), **template_values(card)
    )
    text = re.sub(r"\n{3,}", "\n\n", str(rendered)).rstrip("\n") + "\n"
    ModelCard(text)  # invalid metadata fails here, before the file is written
    return text


def write_card(folder: Path, card: CardInput) -> Path:
    path = Path(folder) / CARD_FILE
    path.write_text(render_card(card), encoding="utf-8")
    return path
