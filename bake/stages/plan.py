"""`steerbake plan`: a plan written by hand over a vector file: which layers, how strong,
and which intervention (add the vectors, ablate their directions, or both)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bake.artifacts.plan import (
    KINDS,
    Ablation,
    EmbedAblation,
    Plan,
    format_layers,
    make_plan,
    parse_layers,
)
from bake.errors import InputError
from bake.options import opt


@dataclass(frozen=True)
class PlanOptions:
    """A plan by hand: which layers, how strong."""

    layers: str = opt(help="0-based blocks, ranges inclusive: 1,3-5.")
    alpha: float | None = opt(
        None,
        "Strength as a fraction of a typical residual norm; <0 removes refusal (--kind add "
        "and both; required there).",
    )
    multipliers: tuple[str, ...] = opt(
        (),
        "Per-layer multiplier on alpha (repeatable).",
        flags=("--multiplier",),
        metavar="LAYER=M",
        multiple=True,
    )
    categories: tuple[str, ...] = opt(
        (),
        "Steer along this category of a by-category vector file (repeatable; several are "
        "combined in a whitened basis, weight 1 unless given); written beside the plan.",
        flags=("--category",),
        metavar="NAME[=WEIGHT]",
        multiple=True,
    )


@dataclass(frozen=True)
class KindOptions:
    """Which intervention the plan makes, and the ablation's settings."""

    kind: str = opt(
        "add",
        "add: v_l at each block's output; ablate: project u_l out of what each block writes "
        "(W <- (I - a u u^T) W); both: ablate, then add.",
        choices=KINDS,
    )
    strength: float = opt(1.0, "Ablation strength a (1 removes the direction; 0 to 2).")
    direction_layer: int | None = opt(
        None,
        "Ablate this layer's direction in every block (Arditi et al.) [default: each block's own].",
        metavar="LAYER",
    )
    embed: bool = opt(
        False,
        "Also ablate the token embedding (E <- E (I - a u u^T)), along --direction-layer's "
        "direction, else the lowest plan layer's.",
    )

    def ablation(self, layers: list[int]) -> Ablation | None:
        if self.kind == "add":
            changed = self.strength != 1.0 or self.direction_layer is not None or self.embed
            if changed:
                raise InputError(
                    "--strength, --direction-layer and --embed apply to --kind ablate or both"
                )
            return None
        source = self.direction_layer if self.direction_layer is not None else min(layers)
        embed = EmbedAblation(source, self.strength) if self.embed else None
        return Ablation(self.strength, self.direction_layer, embed)


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
    alpha: float | None,
    output: Path,
    multipliers: Sequence[str] = (),
    categories: Sequence[str] = (),
    kind: KindOptions | None = None,
) -> Plan:
    """Write PLAN over VECTORS: layers ('1,3-5'), alpha and per-layer multipliers; with
    categories (NAME or NAME=WEIGHT), over their combination, written beside the plan."""
    chosen, per_layer, record = parse_layers(layers), parse_multipliers(multipliers), None
    if categories:
        from bake.artifacts.categories import parse_weights
        from bake.stages.fit_categories import write_combination

        vectors_file, record = write_combination(vectors_file, parse_weights(categories), output)
    kind = kind or KindOptions()
    plan = make_plan(
        vectors_file,
        chosen,
        _alpha(alpha, kind.kind),
        per_layer,
        record,
        kind=kind.kind,
        ablation=kind.ablation(chosen),
    )
    plan.save(Path(output))
    return plan


def _alpha(alpha: float | None, kind: str) -> float:
    """alpha for the plan's kind: required to add, absent for a pure ablation."""
    if kind == "ablate":
        if alpha is not None:
            raise InputError("--kind ablate adds nothing: drop --alpha, or use --kind both")
        return 0.0
    if alpha is None:
        raise InputError(f"--kind {kind} needs --alpha (e.g. --alpha -0.15)")
    return alpha


def describe_plan(plan: Plan) -> str:
    """One line: kind, layers and strengths, e.g. 'ablate layers 2-5, strength 1, each
    block's own direction, embedding along layer 2's at 1'."""
    text = f"layers {format_layers(plan.layers)}"
    if plan.adds:
        text += f", alpha {plan.alpha:g}"
    a = plan.ablation
    if a is None:
        return text
    where = "each block's own" if a.direction_layer is None else f"layer {a.direction_layer}'s"
    text = f"{plan.kind} {text}, strength {a.strength:g}, {where} direction"
    if a.embed is not None:
        text += f", embedding along layer {a.embed.direction_layer}'s at {a.embed.strength:g}"
    return text
