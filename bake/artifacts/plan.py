"""The steering plan: one typed object that drives hooks, bake, verify, GGUF and cards.

JSON on disk:
  {"format": "steerbake.plan/1",
   "vectors": {"path": "vectors.safetensors", "sha256": "..."},   # relative to the plan
   "layers": [1, 3, 4, 5], "alpha": -0.15, "layer_multipliers": {"3": 0.5},
   "site": "block_output",
   "model": {"architecture": "llama", "hidden_size": 64, "num_layers": 4},
   "provenance": {...}}
Layer l receives  v_l = alpha * m_l * s_l * u_l  (m_l = 1 unless a multiplier is set).

The intervention `kind` is `add` (the above), `ablate` or `both`. An ablation projects a unit
direction r_l out of what each plan block writes into the residual stream (attention output
and MLP down projections): y <- y - a r_l r_l^T y, folded as W <- (I - a r_l r_l^T) W; the
token embedding is a separate, optional entry (E <- E (I - a r r^T)). `both` ablates block l's
writers first and adds v_l at the block output afterwards. A plan that ablates is written as
format steerbake.plan/2, so an older steerbake refuses it instead of reading it as additive:
  {"format": "steerbake.plan/2", "kind": "ablate", "layers": [...],
   "ablation": {"strength": 1.0, "direction_layer": null,          # null: r_l = u_l per block
                "embed": {"direction_layer": 12, "strength": 1.0}}, # or null (default)
   ...}
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bake.artifacts.vectors import SITE_BLOCK_OUTPUT, SteeringVectors
from bake.errors import InputError, PlanMismatchError
from bake.files.fileio import atomic_write_path, sha256_file
from bake.files.jsonio import dumps, finite_json
from bake.model.fingerprint import Fingerprint

FORMAT = "steerbake.plan/1"
FORMAT_ABLATION = "steerbake.plan/2"  # plans whose kind is not `add`
KINDS = ("add", "ablate", "both")  # add v_l; project r_l out of the writers; both
MAX_STRENGTH = 2.0  # a = 2 reflects the direction; beyond, it would be amplified
ROUNDINGS = ("F32", "F16", "BF16")  # safetensors dtype tags the vectors may be rounded to


def parse_layers(text: str) -> list[int]:
    """'1,3-5' -> [1, 3, 4, 5] (0-based, ranges inclusive, sorted, unique)."""
    layers: set[int] = set()
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        try:
            if "-" in part[1:]:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                layers.update(range(lo, hi + 1))
            else:
                layers.add(int(part))
        except ValueError:
            raise InputError(
                f"bad layer list {text!r}: use numbers and inclusive ranges such as 1,3-5"
            ) from None
    if not layers:
        raise InputError("the layer list is empty: pass e.g. --layers 3-5")
    return sorted(layers)


def format_layers(layers: list[int]) -> str:
    """[1, 3, 4, 5] -> '1,3-5'."""
    parts, run = [], [layers[0]] if layers else []
    for layer in layers[1:]:
        if layer == run[-1] + 1:
            run.append(layer)
        else:
            parts.append(run)
            run = [layer]
    if run:
        parts.append(run)
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in parts)


@dataclass(frozen=True)
class EmbedAblation:
    """The token embedding's entry: E <- E (I - a r r^T), r = u of `direction_layer`."""

    direction_layer: int
    strength: float = 1.0


@dataclass(frozen=True)
class Ablation:
    """What an ablating plan removes: strength a (1 = full removal) in every plan block;
    r_l = u_l of the block itself, or u_L of one layer L everywhere (`direction_layer`, as in
    Arditi et al.); the embedding only when `embed` is set."""

    strength: float = 1.0
    direction_layer: int | None = None
    embed: EmbedAblation | None = None

    def to_json(self) -> dict[str, Any]:
        embed = self.embed
        return {
            "strength": self.strength,
            "direction_layer": self.direction_layer,
            "embed": (
                {"direction_layer": embed.direction_layer, "strength": embed.strength}
                if embed
                else None
            ),
        }

    @classmethod
    def from_json(cls, data: Any) -> Ablation:
        if not isinstance(data, dict):
            raise ValueError("ablation is not an object")
        embed = data.get("embed")
        layer = data.get("direction_layer")
        return cls(
            strength=_number(data.get("strength", 1.0), "strength"),
            direction_layer=None if layer is None else _integer(layer, "direction layer"),
            embed=(
                EmbedAblation(
                    _integer(embed["direction_layer"], "embedding direction layer"),
                    _number(embed.get("strength", 1.0), "embedding strength"),
                )
                if embed is not None
                else None
            ),
        )


@dataclass
class Plan:
    vectors_path: str
    vectors_sha256: str
    layers: list[int]
    alpha: float
    model: Fingerprint
    layer_multipliers: dict[int, float] = field(default_factory=dict)
    site: str = SITE_BLOCK_OUTPUT
    provenance: dict[str, Any] = field(default_factory=dict)
    base_dir: Path = field(default=Path("."), compare=False)  # folder the plan lives in
    rounding: str | None = None  # dtype tag every route rounds the vectors to (None: model's)
    kind: str = "add"  # add | ablate | both
    ablation: Ablation | None = None  # set exactly when kind is ablate or both

    def __post_init__(self) -> None:
        self.validate()

    @property
    def adds(self) -> bool:
        return self.kind in ("add", "both")

    @property
    def ablates(self) -> bool:
        return self.kind in ("ablate", "both")

    def vector_layers(self) -> list[int]:
        """The layers whose vectors the plan reads: added vectors and ablated directions."""
        needed = set(self.layers) if self.adds else set()
        if self.ablation is not None:
            a = self.ablation
            needed |= set(self.layers) if a.direction_layer is None else {a.direction_layer}
            needed |= {a.embed.direction_layer} if a.embed else set()
        return sorted(needed)

    def validate(self) -> None:
        n = self.model.num_layers
        if not self.layers:
            raise InputError("plan has no layers")
        if len(set(self.layers)) != len(self.layers):
            twice = sorted({x for x in self.layers if self.layers.count(x) > 1})
            raise InputError(f"plan layer(s) {twice} appear twice; list each layer once")
        bad = [layer for layer in self.layers if not 0 <= layer < n]
        if bad:
            raise InputError(f"plan layer(s) {bad} out of range: the model has layers 0-{n - 1}")
        values = [self.alpha, *self.layer_multipliers.values()]
        if not all(math.isfinite(float(v)) for v in values):
            raise InputError("plan alpha or a layer multiplier is NaN or Inf; use finite values")
        extra = sorted(set(self.layer_multipliers) - set(self.layers))
        if extra:
            raise InputError(f"layer multipliers for layers {extra} not in the plan's layers")
        if self.site != SITE_BLOCK_OUTPUT:
            raise InputError(f"unknown site {self.site!r}: only {SITE_BLOCK_OUTPUT!r} is supported")
        self._validate_kind()

    def _validate_kind(self) -> None:
        n = self.model.num_layers
        if self.kind not in KINDS:
            raise InputError(f"unknown plan kind {self.kind!r}: use one of {', '.join(KINDS)}")
        if not self.ablates:
            if self.ablation is not None:
                raise InputError("an `add` plan has no ablation entry; write it with --kind both")
            return
        if self.ablation is None:
            raise InputError(f"a {self.kind!r} plan needs its ablation entry (strength, ...)")
        if self.kind == "ablate" and (self.alpha != 0.0 or self.layer_multipliers):
            raise InputError("an `ablate` plan adds nothing: drop alpha, or use --kind both")
        a = self.ablation
        strengths = [a.strength] + ([a.embed.strength] if a.embed else [])
        if not all(math.isfinite(x) and 0.0 <= x <= MAX_STRENGTH for x in strengths):
            raise InputError(
                f"ablation strength {strengths} out of range: use 0 to {MAX_STRENGTH:g} "
                "(1 removes the direction)"
            )
        others = [a.direction_layer] + ([a.embed.direction_layer] if a.embed else [])
        bad = [x for x in others if x is not None and not 0 <= x < n]
        if bad:
            raise InputError(f"direction layer(s) {bad} out of range: the model has 0-{n - 1}")

    @property
    def vectors_file(self) -> Path:
        return (self.base_dir / self.vectors_path).resolve()

    def load_vectors(self) -> SteeringVectors:
        """The vector file, checked against the recorded sha256 and fingerprint."""
        path = self.vectors_file
        if not path.is_file():
            raise InputError(
                f"the plan's vector file {path} is missing; keep it beside the "
                "plan or rewrite the plan with `steerbake plan`"
            )
        digest = sha256_file(path)
        if digest != self.vectors_sha256:
            raise PlanMismatchError(
                f"{path} changed since the plan was written (sha256 "
                f"{digest[:12]} != {self.vectors_sha256[:12]}); rewrite "
                "the plan with `steerbake plan`"
            )
        vectors = SteeringVectors.load(path)
        vectors.fingerprint.check(self.model, f"vector file {path}")
        missing = [layer for layer in self.vector_layers() if layer not in vectors.directions]
        if missing:
            raise InputError(f"the vector file has no vectors for plan layers {missing}")
        return vectors

    def check_model(self, fingerprint: Fingerprint) -> None:
        self.model.check(fingerprint, "the plan")

    def to_json(self) -> dict[str, Any]:
        from bake import __version__

        added = {
            "alpha": self.alpha,
            "layer_multipliers": {str(k): v for k, v in sorted(self.layer_multipliers.items())},
        }
        return {
            "format": FORMAT if self.kind == "add" else FORMAT_ABLATION,
            "steerbake_version": __version__,
            "vectors": {"path": self.vectors_path, "sha256": self.vectors_sha256},
            **({"kind": self.kind} if self.kind != "add" else {}),
            "layers": self.layers,
            **(added if self.adds else {}),
            **({"ablation": self.ablation.to_json()} if self.ablation else {}),
            "site": self.site,
            **({"rounding": self.rounding} if self.rounding else {}),
            "model": {
                "architecture": self.model.architecture,
                "hidden_size": self.model.hidden_size,
                "num_layers": self.model.num_layers,
            },
            "provenance": finite_json(self.provenance),  # NaN -> null: plans are JSON
        }

    def save(self, path: Path) -> None:
        """Write the plan; the vector path is stored relative to the plan's folder."""
        path = Path(path)
        rel = os.path.relpath(self.vectors_file, path.resolve().parent)
        data = self.to_json()
        data["vectors"]["path"] = Path(rel).as_posix()
        with atomic_write_path(path) as tmp:
            tmp.write_text(dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Plan:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"plan {path} not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"plan {path} is not valid JSON ({e})") from None
        if not isinstance(data, dict) or data.get("format") not in (FORMAT, FORMAT_ABLATION):
            raise InputError(
                f"{path} is not a steerbake plan (format {FORMAT} or {FORMAT_ABLATION}); write "
                "one with `steerbake plan`"
            )
        kind = data.get("kind", "add") if data["format"] == FORMAT_ABLATION else "add"
        try:
            return cls(
                vectors_path=data["vectors"]["path"],
                vectors_sha256=data["vectors"]["sha256"],
                layers=[_integer(x, "layer") for x in data["layers"]],
                alpha=_number(data["alpha"] if kind != "ablate" else 0.0, "alpha"),
                model=Fingerprint(**data["model"]),
                layer_multipliers={
                    int(k): _number(v, "layer multiplier")
                    for k, v in data.get("layer_multipliers", {}).items()
                },
                site=data.get("site", SITE_BLOCK_OUTPUT),
                provenance=data.get("provenance", {}),
                base_dir=path.resolve().parent,
                rounding=_rounding(data.get("rounding")),
                kind=str(kind),
                ablation=Ablation.from_json(data["ablation"]) if kind != "add" else None,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(
                f"plan {path} is malformed ({type(e).__name__}: {e}); rewrite "
                "it with `steerbake plan`"
            ) from None


def _integer(value: Any, what: str) -> int:
    """A JSON integer (not 1.5, "1" or true)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} {value!r} is not an integer")
    return value


def _number(value: Any, what: str) -> float:
    """A JSON number (not a string or true)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} {value!r} is not a number")
    return float(value)


def _rounding(value: Any) -> str | None:
    """A recorded rounding dtype: one of the float tags steerbake writes, or absent."""
    if value is None:
        return None
    if value not in ROUNDINGS:
        raise ValueError(f"rounding {value!r} is not one of {', '.join(ROUNDINGS)}")
    return str(value)


def make_plan(
    vectors_path: Path,
    layers: list[int],
    alpha: float,
    layer_multipliers: dict[int, float] | None = None,
    provenance: dict[str, Any] | None = None,
    *,
    kind: str = "add",
    ablation: Ablation | None = None,
) -> Plan:
    """A plan over an existing vector file (its fingerprint and provenance carried over);
    an ablating kind without `ablation` removes each block's own direction at strength 1."""
    vectors_path = Path(vectors_path).resolve()
    vectors = SteeringVectors.load(vectors_path)
    if kind in ("ablate", "both") and ablation is None:
        ablation = Ablation()
    prov = {"method": vectors.method, **vectors.provenance, **(provenance or {})}
    plan = Plan(
        vectors_path=str(vectors_path),
        vectors_sha256=sha256_file(vectors_path),
        layers=layers,
        alpha=float(alpha),
        model=vectors.fingerprint,
        layer_multipliers=dict(layer_multipliers or {}),
        site=vectors.site,
        provenance=prov,
        base_dir=Path("/"),
        rounding=vectors.rounding,
        kind=kind,
        ablation=ablation,
    )
    missing = [layer for layer in plan.vector_layers() if layer not in vectors.directions]
    if missing:
        raise InputError(
            f"{vectors_path} has no vectors for layers {missing}; it has "
            f"{format_layers(vectors.layers)}"
        )
    return plan
