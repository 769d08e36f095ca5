"""What `steerbake tune` searches and finds, on disk: its settings, stage 1's candidates
with their proxy numbers, the configurations stage 2 confirmed by generating and judging,
the chosen one with its significance test, and the report (JSON, Markdown, PNG plots).
Every record is cached in PLAN.tune-cache.jsonl as it is measured, keyed by everything it
depends on, so an interrupted search resumes without measuring anything twice.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bake.errors import InputError
from bake.files.jsonio import dumps, nan_if_none
from bake.options import opt

GOALS = ("remove", "selective", "induce")
VECTOR_OPTIONS = ("file", "over", "projected", "pooled", "combined")
TUNE_KINDS = ("add", "ablate", "both")
BOTH_STRENGTH = 1.0  # kind both: the writers lose u_l entirely, then alpha v_l is added
KIND_NOTES = {"add": "", "ablate": " (ablate: strength)", "both": " (ablated, then alpha)"}
# --goal selective searches every option: on Qwen2.5-Coder-0.5B no option was more selective
# than another on the tuning sets (README, "Real models"), so stage 2 judges them per model.
SELECTIVE_OPTIONS = VECTOR_OPTIONS
PROFILES = ("flat", "ranked")


def predicted_rate(mean: float, per_prompt: list[float] | None, greedy: bool) -> float:
    """The refusal rate a set's proxy predicts: greedy decoding opens with a refusal exactly
    where sigmoid(margin) > 1/2, so the share of such prompts (a mean of sigmoids falls as
    margins shrink while every answer still refuses); sampling: the mean opening
    probability."""
    if not greedy or not per_prompt:
        return mean
    return sum(v > 0.5 for v in per_prompt) / len(per_prompt)


def parse_ints(text: str) -> tuple[int, ...]:
    """--layer-counts: '1,4,8' -> (1, 4, 8), each 1 or more."""
    try:
        counts = tuple(int(x) for x in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise InputError(f"--layer-counts {text!r}: give numbers of layers, e.g. 1,4,8")
    return counts


def parse_alphas(text: str) -> tuple[float, ...]:
    """--alphas: '0.05,0.1' -> (0.05, 0.1), magnitudes (the goal gives the sign)."""
    try:
        values = tuple(abs(float(x)) for x in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(a) and a > 0 for a in values):
        raise InputError(f"--alphas {text!r}: give alpha magnitudes, e.g. 0.05,0.1,0.2")
    return values


def parse_kinds(text: str) -> tuple[str, ...]:
    """--kinds: 'add,ablate' -> ('add', 'ablate')."""
    values = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    if not values or any(v not in TUNE_KINDS for v in values):
        raise InputError(f"--kinds {text!r}: give some of {', '.join(TUNE_KINDS)}, e.g. add,ablate")
    return values


def parse_options(text: str) -> tuple[str, ...]:
    """--vector-options: 'file,projected' -> ('file', 'projected')."""
    values = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    bad = [v for v in values if v not in VECTOR_OPTIONS]
    if bad or not values:
        raise InputError(f"--vector-options {text!r}: choose from {', '.join(VECTOR_OPTIONS)}")
    return values


@dataclass
class TuneSettings:
    goal: str = opt(
        "remove",
        "remove: lower refusal on --sensitive, keeping --harmful's; selective: the same, "
        "searching every vector option (README); induce: raise refusal "
        "on --target.",
        choices=GOALS,
    )
    harmful_tolerance: float = opt(  # absolute share
        0.1, "Allowed drop of harmful refusal (share of prompts)."
    )
    benign_tolerance: float = opt(  # absolute share, every goal
        0.1,
        "Allowed rise of refusal, and of broken answers, on the benign set (judged answers).",
    )
    kl_max: float = opt(0.1, "Bound on benign KL at the first answer token.")
    drop_deepest: float = 0.2  # share of the deepest layers never steered
    layer_counts: tuple[int, ...] | None = opt(  # default 1, 2, 4, 8 and bands
        None,
        "Numbers of best-ranked layers to try, e.g. 1,4,8 [default: 1,2,4,8 and bands of "
        "3, 5 and 9 layers around the two best].",
        parse=parse_ints,
    )
    alphas: tuple[float, ...] | None = opt(  # magnitudes; the goal gives the sign
        None,
        "Alpha magnitudes to try, e.g. 0.05,0.1 [default: from 0.004 to where the benign "
        "KL is predicted to reach --kl-max, then bisected].",
        parse=parse_alphas,
    )
    refine: int = 2  # bisection steps where the proxy KL crossed the bound
    stage1: int = opt(96, "Stage 1: candidates scored by forward passes only.")
    confirm: int = opt(6, "Stage 2: configurations generated and judged.")
    vector_options: tuple[str, ...] | None = opt(
        None,
        "Vector options to search: file (VECTORS), over, projected, pooled, combined "
        "(VECTORS by category) [default: file; --goal selective: all].",
        parse=parse_options,
    )
    kinds: tuple[str, ...] = opt(
        ("add",),
        "Interventions to search: add (alpha x vector), ablate (remove the direction from "
        "the residual writers, strength 0.25 to 1.5), both (remove it, strength 1, then add "
        "alpha x vector; README), or several, e.g. add,ablate.",
        parse=parse_kinds,
    )
    min_effect: float = 0.10  # a plan must move, net, this share of the target set
    significance: float = 0.05  # exact one-sided McNemar p on the target set

    def check(self) -> None:
        if self.goal not in GOALS:
            raise InputError(f"--goal must be one of {', '.join(GOALS)}, not {self.goal!r}")
        if self.stage1 < 1 or self.confirm < 1:
            raise InputError("--stage1 and --confirm must be at least 1")
        if self.goal == "induce" and set(self.options()) != {"file"}:
            raise InputError("--goal induce searches the VECTORS file only (--vector-options file)")
        if self.goal == "induce" and set(self.kinds) != {"add"}:
            raise InputError("--goal induce adds refusal; ablation removes it (--kinds add)")
        if not (self.kl_max > 0 and self.refine >= 0):
            raise InputError("--kl-max must be positive")

    def options(self) -> tuple[str, ...]:
        if self.vector_options:
            return self.vector_options
        return SELECTIVE_OPTIONS if self.goal == "selective" else ("file",)

    @property
    def primary(self) -> str:
        """The set whose refusal the goal moves."""
        return "target" if self.goal == "induce" else "sensitive"

    @property
    def guard(self) -> str:
        """The set whose refusal must not move (much)."""
        return "benign" if self.goal == "induce" else "harmful"

    @property
    def sets(self) -> tuple[str, ...]:
        return ("target", "benign") if self.goal == "induce" else ("sensitive", "harmful", "benign")


@dataclass(frozen=True)
class Candidate:
    """One steering configuration: a vector option, layers, alpha and a per-layer profile
    (flat: every layer 1; ranked: m_l from 1 at the best-ranked layer to 0.5 at the last)."""

    option: str
    layers: tuple[int, ...]
    alpha: float  # kind ablate: the strength a (1 = full removal of the direction)
    profile: str = "flat"
    multipliers: tuple[tuple[int, float], ...] = ()
    kind: str = "add"  # add: h += alpha m_l s_l u_l; ablate: writers' outputs y -= a u_l u_l' y;
    # both: y -= u_l u_l' y (BOTH_STRENGTH), then h += alpha m_l s_l u_l

    def label(self) -> str:
        strength = "strength " if self.kind == "ablate" else ""
        layers = ",".join(map(str, self.layers))
        return f"{self.kind} {self.option} [{layers}] {self.profile} {strength}{self.alpha:+.4g}"

    def key(self) -> dict[str, Any]:
        key = {
            "option": self.option,
            "layers": list(self.layers),
            "alpha": self.alpha,
            "profile": self.profile,
            "multipliers": [list(m) for m in self.multipliers],
        }
        return key if self.kind == "add" else {**key, "kind": self.kind}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Candidate:
        multipliers = tuple((int(layer), float(m)) for layer, m in row.get("multipliers", []))
        return cls(
            row["option"],
            tuple(row["layers"]),
            float(row["alpha"]),
            row["profile"],
            multipliers,
            row.get("kind", "add"),
        )


@dataclass
class Proxy:
    """Stage 1: a candidate's numbers from forward passes only."""

    candidate: Candidate
    refusal: dict[str, float]  # set -> mean per-prompt proxy
    kl: float  # benign KL at the first answer position
    drift: float  # benign KL along the first answer tokens (bake.runtime.proxy.kl_along)
    per_prompt: dict[str, list[float]] = field(default_factory=dict)

    def predicted_rate(self, name: str, greedy: bool) -> float:
        """The refusal rate the proxy predicts for set `name` (predicted_rate)."""
        return predicted_rate(self.refusal[name], self.per_prompt.get(name), greedy)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.candidate.key(),
            "refusal": self.refusal,
            "kl": self.kl,
            "drift": self.drift,
            "per_prompt": self.per_prompt,
        }

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Proxy:
        refusal = {k: nan_if_none(v) for k, v in row["refusal"].items()}
        return cls(
            Candidate.from_json(row),
            refusal,
            nan_if_none(row["kl"]),
            nan_if_none(row["drift"]),
            row.get("per_prompt", {}),
        )


def objectives(p: Proxy, s: TuneSettings) -> tuple[float, float]:
    """Both lower-is-better: remove/selective (primary refusal, -guard refusal); induce
    (-target refusal, benign refusal)."""
    primary, guard = p.refusal[s.primary], p.refusal[s.guard]
    return (-primary, guard) if s.goal == "induce" else (primary, -guard)


def first_front(proxies: list[Proxy], s: TuneSettings) -> list[Proxy]:
    """The candidates under the KL bound that no other one dominates, in objective order
    (empty when none is under the bound)."""
    left = sorted(
        ((objectives(p, s), p) for p in proxies if p.kl <= s.kl_max), key=lambda item: item[0]
    )
    points = [o for o, _ in left]
    return [p for o, p in left if not _dominated(o, points)]


def fronts(proxies: list[Proxy], s: TuneSettings) -> list[list[Proxy]]:
    """Non-dominated sorting of the candidates under the KL bound: front 1 first."""
    left = [p for p in proxies if p.kl <= s.kl_max]
    out = []
    while left:
        front = first_front(left, s)
        out.append(front)
        left = [p for p in left if p not in front]
    return out


def _dominated(a: tuple[float, float], points: list[tuple[float, float]]) -> bool:
    """Some point is no worse than `a` in both objectives and better in one."""
    return any(b[0] <= a[0] and b[1] <= a[1] and b != a for b in points)


@dataclass
class Confirmed:
    """Stage 2: a candidate generated and judged on the tuning sets."""

    candidate: Candidate
    refusal: dict[str, float]  # set -> judged refusal rate (induce target: not-broken only)
    kl: float
    labels: dict[str, list[int]]  # set -> per prompt: 1 refusal, 0 not
    broken: dict[str, int]  # set -> answers judged looping or corrupted
    answers: dict[str, list[str]] = field(default_factory=dict)
    feasible: bool = False
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            **self.candidate.key(),
            "refusal": self.refusal,
            "kl": self.kl,
            "labels": self.labels,
            "broken": self.broken,
            "answers": self.answers,
            "feasible": self.feasible,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Confirmed:
        refusal = {k: nan_if_none(v) for k, v in row["refusal"].items()}
        return cls(
            Candidate.from_json(row),
            refusal,
            nan_if_none(row["kl"]),
            row["labels"],
            row["broken"],
            row.get("answers", {}),
            bool(row["feasible"]),
            row.get("reason", ""),
        )


@dataclass
class Significance:
    """Exact one-sided McNemar test of the chosen configuration on the target set."""

    moved_with: int  # prompts that moved in the goal's direction
    moved_against: int
    n: int  # prompts in the set
    p_value: float
    needed: int  # net moves required
    passed: bool

    def describe(self) -> str:
        return (
            f"{self.moved_with} prompt{'s' * (self.moved_with != 1)} moved with the goal, "
            f"{self.moved_against} against "
            f"(net {self.moved_with - self.moved_against} of {self.n}, {self.needed} needed), "
            f"one-sided exact McNemar p = {self.p_value:.3g}"
        )


@dataclass
class TuneResult:
    settings: TuneSettings
    ranked: list[int]
    baseline: dict[str, float]  # set -> judged refusal, unsteered
    baseline_labels: dict[str, list[int]]
    baseline_broken: dict[str, int]
    proxy_baseline: dict[str, float]  # set -> mean P(refusal opening), unsteered
    openings: dict[str, list[str]]  # proxy set -> its refusal openings (decoded)
    measure: str = "greedy margin"  # the per-prompt proxy (bake.runtime.proxy.MEASURES)
    options: dict[str, str] = field(default_factory=dict)  # option -> "" or why it was skipped
    stage1: list[Proxy] = field(default_factory=list)
    stage2: list[Confirmed] = field(default_factory=list)
    best: Confirmed | None = None
    significance: Significance | None = None
    agreement: dict[str, float | None] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "ranked_layers": self.ranked,
            "baseline": self.baseline,
            "baseline_labels": self.baseline_labels,
            "baseline_broken": self.baseline_broken,
            "proxy_baseline": self.proxy_baseline,
            "openings": self.openings,
            "proxy_measure": self.measure,
            "vector_options": self.options,
            "stage1": [p.to_json() for p in self.stage1],
            "stage2": [c.to_json() for c in self.stage2],
            "best": self.best.to_json() if self.best else None,
            "significance": asdict(self.significance) if self.significance else None,
            "proxy_judge_agreement": self.agreement,
            "seconds": self.seconds,
        }


class TuneCache:
    """Stage-1 and stage-2 records keyed by a hash of everything they depend on (model,
    vectors, prompt sets, judge and decoding, goal), appended as they are measured."""

    def __init__(self, path: Path | None, context: dict[str, Any]) -> None:
        self.path, self.context = path, context
        self.rows: dict[str, dict[str, Any]] = {}
        if path and path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    self.rows[row["key"]] = dict(row["record"])
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue  # a line cut short by an interruption, or another version's

    def key(self, stage: str, candidate: Candidate | None = None) -> str:
        """stage "baseline" has no candidate: the unsteered answers."""
        about = candidate.key() if candidate else {}
        blob = json.dumps({**self.context, "stage": stage, **about}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, stage: str, candidate: Candidate | None = None) -> dict[str, Any] | None:
        return self.rows.get(self.key(stage, candidate))

    def put(self, stage: str, candidate: Candidate | None, record: dict[str, Any]) -> None:
        key = self.key(stage, candidate)
        self.rows[key] = record
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as f:
            f.seek(0, 2)
            if f.tell() and (f.seek(-1, 2), f.read(1))[1] != b"\n":
                f.write(b"\n")  # end a line an interruption cut short
            f.write((dumps({"key": key, "record": record}) + "\n").encode())


# --------------------------------------------------------------------------- the report
def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.0%}"


def render_table(result: TuneResult) -> str:
    """Stage 2 as a Markdown table, the unsteered baseline first."""
    s, base = result.settings, result.baseline
    names = list(s.sets)
    head = " | ".join(f"{n} refusal" for n in names)
    lines = [
        "unsteered: " + ", ".join(f"{n} refusal {_pct(base[n])}" for n in names),
        "",
        f"| vector | layers | profile | alpha | {head} | broken | benign KL | ok |",
        "|" + "---|" * (len(names) + 7),
    ]
    for c in result.stage2:
        mark = " **chosen**" if c is result.best else ""
        rates = " | ".join(_pct(c.refusal.get(n)) for n in names)
        broken = sum(c.broken.values())
        layers = ",".join(map(str, c.candidate.layers))
        ok = "yes" if c.feasible else f"no: {c.reason}"
        option = c.candidate.option + KIND_NOTES[c.candidate.kind]
        lines.append(
            f"| {option} | {layers} | {c.candidate.profile} | "
            f"{c.candidate.alpha:+.4g} | {rates} | {broken} | {c.kl:.4f} | {ok}{mark} |"
        )
    return "\n".join(lines)


def render_markdown(result: TuneResult, plots: list[str]) -> str:
    s = result.settings
    parts = [
        "# Tuning report",
        "",
        f"Goal **{s.goal}**; vector options searched: "
        + ", ".join(f"{k}" + (f" (skipped: {v})" if v else "") for k, v in result.options.items())
        + f". Stage 1 scored {len(result.stage1)} candidates by forward passes (proxy: "
        f"{result.measure} of each set's refusal openings: {_openings(result.openings)}); "
        f"stage 2 generated and judged {len(result.stage2)} of them.",
        "",
        "## Stage 2 (generated and judged, tuning sets)",
        "",
        render_table(result),
        "",
    ]
    if result.significance is not None:
        verdict = "passed" if result.significance.passed else "failed"
        parts += [
            f"Significance on the {s.primary} set ({verdict}): {result.significance.describe()}.",
            "",
        ]
    a = result.agreement
    parts += [
        "## Proxy vs judge (over the confirmed configurations)",
        "",
        f"AUC per configuration-and-prompt: {_num(a.get('auc'))}; Spearman of "
        f"per-configuration {s.primary} rates: {_num(a.get('spearman'))}.",
        "",
        "## Time",
        "",
        ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()),
        "",
    ]
    parts += [f"![{p}]({p})\n" for p in plots]
    return "\n".join(parts)


def _openings(openings: dict[str, list[str]]) -> str:
    return "; ".join(f"{n} " + ", ".join(repr(o) for o in ops) for n, ops in openings.items())


def _num(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.3f}"
