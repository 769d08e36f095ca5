"""`steerbake plan`: a plan written by hand over a vector file: which layers, how strong."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bake.artifacts.plan import Plan, make_plan, parse_layers
from bake.errors import InputError
from bake.options import opt


@dataclass(frozen=True)
class PlanOptions:
    """A plan by hand: which layers, how strong."""

    layers: str = opt(help="0-based blocks, ranges inclusive: 1,3-5.")
    alpha: float = opt(
        help="Strength as a fraction of a typical residual norm; <0 removes refusal."
    )
    multipliers: tuple[str, ...] = opt(
        (),
        "Per-layer multiplier on alpha (repeatable).",
        flags=("--multiplier",),
        metavar="LAYER=M",
        multiple=True,
    )


def parse_multipliers(items: Sequence[str]) -> dict[int, float]:
    """['3=0.5', '4=2'] -> {3: 0.5, 4: 2.0}."""
    out: dict[int, float] = {}
    for item in items:
        try:
            k, v = item.split("=", 1)
            out[int(k)] = float(v)
        except ValueError:
            raise InputError(f"bad --multiplier {item!r}: use LAYER=VALUE, e.g. 3=0.5") from None
    return out


def run_plan(
    vectors_file: Path,
    layers: str,
    alpha: float,
    output: Path,
    multipliers: Sequence[str] = (),
) -> Plan:
    """Write PLAN over VECTORS: layers ('1,3-5'), alpha and per-layer multipliers."""
    plan = make_plan(vectors_file, parse_layers(layers), alpha, parse_multipliers(multipliers))
    plan.save(Path(output))
    return plan
