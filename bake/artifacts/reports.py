"""Typed reports: what `verify` (PyTorch and static) and `evaluate` write, as dataclasses
whose JSON keeps one key per field, in field order. Cards and summaries read the fields;
`to_json` writes them; `from_json` reads a report back and says in one line what is wrong
with a malformed one.

Fields marked `omit_none` are left out of the JSON when they are None, as some keys are
present only for some kinds of report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from bake.errors import InputError


def _omit_none() -> Any:
    return field(default=None, metadata={"omit_none": True})


def to_json_value(value: Any) -> Any:
    """Reports and dataclasses to dicts (field order, omit_none honoured), recursively."""
    if isinstance(value, JsonReport):
        return value.to_json()
    if is_dataclass(value) and not isinstance(value, type):
        return _fields_json(value)
    if isinstance(value, dict):
        return {k: to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    return value


def _fields_json(obj: Any) -> dict[str, Any]:
    out = {}
    for f in fields(obj):
        item = getattr(obj, f.name)
        if item is None and f.metadata.get("omit_none"):
            continue
        out[f.name] = to_json_value(item)
    return out


class JsonReport:
    """to_json for the dataclass reports below: one key per field, in field order."""

    def to_json(self) -> dict[str, Any]:
        return _fields_json(self)


@dataclass
class Check(JsonReport):
    """One named check of a report."""

    name: str
    ok: bool
    detail: str = ""


@dataclass
class GreedyRecord(JsonReport):
    """Where a continuation leaves the reference's, and the reference's top-2 logit margin
    there; near_tie is decided by the report (margin below its tolerance)."""

    id: str
    identical: bool
    diverged_at: int | None = None
    top2_margin: float | None = None
    near_tie: bool | None = None

    def __post_init__(self) -> None:
        if not self.identical and self.diverged_at is None:
            raise ValueError("a diverged record needs diverged_at")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "identical": self.identical}
        if not self.identical:  # the margin is recorded (possibly null) once diverged
            out |= {"diverged_at": self.diverged_at, "top2_margin": self.top2_margin}
            if self.near_tie is not None:
                out["near_tie"] = self.near_tie
        return out

    def judge_tie(self, tolerance: float) -> None:
        """Mark a divergence at a near-tie: the reference's top-2 margin below tolerance."""
        if not self.identical:
            self.near_tie = self.top2_margin is not None and self.top2_margin < tolerance

    @property
    def hard(self) -> bool:
        """Diverged somewhere that is not a near-tie."""
        return not self.identical and not self.near_tie


@dataclass
class VerifyReport(JsonReport):
    """`steerbake verify` in PyTorch: baked vs base + hooks."""

    check: str
    runtime: str
    kind: str  # checkpoint | adapter
    model: str
    baked: str
    layers: str
    alpha: float
    dtype: str
    device: str
    prompts: int
    tolerance: float
    rel_tolerance: float
    max_abs_diff: float
    mean_abs_diff: float
    max_abs_logit: float
    effect_max: float
    effect_mean: float
    effect_negligible: bool
    greedy_identical: int
    greedy_near_ties: int
    greedy: list[GreedyRecord]
    passed: bool
    # a plan that ablates a 16-bit checkpoint: the tolerance is the rounding bound of that
    # dtype (`bound` says how it was derived) and KL / top-1 are reported beside it
    intervention: str | None = _omit_none()  # ablate | both (absent: add)
    bound: str | None = _omit_none()
    mean_kl: float | None = _omit_none()
    top1_agreement: float | None = _omit_none()


@dataclass
class StaticReport(JsonReport):
    """`steerbake verify --static`: tensors compared byte by byte, no model run."""

    check: str
    runtime: str
    kind: str
    model: str
    baked: str
    layers: str
    alpha: float
    checks: list[Check]
    passed: bool


@dataclass
class RefusalSummary(JsonReport):
    """Refusal of one prompt set, before or after steering."""

    n: int
    scored: int
    refusal_rate: float
    compliance_rate: float

    @classmethod
    def from_json(cls, data: Any) -> RefusalSummary:
        """From a report's JSON object; a field of the wrong type is a TypeError or
        ValueError (EvaluationReport.from_json says which report)."""
        if not isinstance(data, dict) or set(data) != {f.name for f in fields(cls)}:
            raise TypeError(
                f"a refusal summary needs the fields n, scored, refusal_rate and "
                f"compliance_rate, got {data!r:.80}"
            )
        return cls(
            _int(data["n"]),
            _int(data["scored"]),
            _float(data["refusal_rate"]),
            _float(data["compliance_rate"]),
        )


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{value!r:.40} is not an integer")
    return value


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{value!r:.40} is not a number")
    return float(value)


@dataclass
class AnswerSample(JsonReport):
    prompt: str
    before: str
    after: str


@dataclass
class SetEvaluation(JsonReport):
    before: RefusalSummary
    after: RefusalSummary
    samples: list[AnswerSample]


@dataclass
class EvaluationReport(JsonReport):
    """`steerbake evaluate`: refusal per prompt set before and after steering, benign KL."""

    model: str
    steering: str
    mode: str  # hooks | baked
    judge: str
    decoding: str
    max_new_tokens: int
    band: float
    sets: dict[str, SetEvaluation]
    kl: dict[str, float]
    # probe-gated steering: {"mode", "layer", set name: {"as_planned", "opposite", "unsteered"}}
    gating: dict[str, Any] | None = _omit_none()  # noqa: RUF009 (a field specifier)

    @classmethod
    def from_json(cls, data: Any, where: str) -> EvaluationReport:
        """Read a report back; a malformed one is an InputError naming what is wrong."""
        try:
            if not isinstance(data, dict):
                raise TypeError("not a JSON object")
            sets = {
                str(name): SetEvaluation(
                    RefusalSummary.from_json(s["before"]),
                    RefusalSummary.from_json(s["after"]),
                    [
                        AnswerSample(**{k: str(v) for k, v in x.items()})
                        for x in s.get("samples", [])
                    ],
                )
                for name, s in data["sets"].items()
            }
            report = cls(
                model=str(data["model"]),
                steering=str(data["steering"]),
                mode=str(data["mode"]),
                judge=str(data["judge"]),
                decoding=str(data["decoding"]),
                max_new_tokens=_int(data["max_new_tokens"]),
                band=_float(data["band"]),
                sets=sets,
                kl={str(k): _float(v) for k, v in data["kl"].items()},
                gating=data.get("gating"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InputError(
                f"{where} is not a `steerbake evaluate` report ({type(e).__name__}: {e}); "
                "write one with `steerbake evaluate ... --report FILE`"
            ) from None
        numbers = [*report.kl.values()] + [
            x for s in report.sets.values() for x in (s.before.refusal_rate, s.after.refusal_rate)
        ]
        if not all(math.isfinite(x) for x in numbers):
            raise InputError(f"{where} holds NaN or Inf rates; evaluate again")
        return report
