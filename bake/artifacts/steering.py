"""A plan bound to its vectors and its model: opened and checked once, then handed to every
stage that steers (hooks, bias bake, adapter, GGUF bake, GGUF patch, control vector, cards),
so no stage can skip a check or compute the steering its own way.

Opening checks: the plan's fingerprint against the model's (architecture, hidden size, layer
count), the vector file against the plan (sha256, fingerprint, a vector for every layer),
layers in range and finite values. Per steered layer l it then gives

    added[l]   = alpha * m_l * s_l * u_l            float64 (d,): the exact steering
    rounded[l] = added[l] rounded to `rounding`    float32 (d,): what a hook adds and what
                                                    every baked route stores

`rounding` is the dtype the vectors are rounded to (a safetensors tag), recorded in the
plan when it is made: the checkpoint's down_proj dtype, or F32 for a GGUF (llama.cpp adds
biases in F32). A plan without one takes the model's. Every route rounds to the plan's
dtype, so a GGUF patched from a bf16 model's plan holds the same values as the bf16 bake;
steering a model of another dtype is allowed, and says which rounding it uses.

The plan's kind says which intervention it is (bake.artifacts.plan): `add` gives the vectors
above; `ablate` and `both` also give, per plan block, the projection that the block's
residual writers fold (`projections`: unit r_l in float64 and strength a), and the
embedding's (`embed_projection`, or None). An ablate plan adds nothing (`added` is empty).

Candidates vary the configuration in memory, without reopening any file: `with_config`
(layers, alpha, multipliers; the kind kept), `with_ablation` (layers and strength, optionally
one direction everywhere, the embedding, and an alpha for `both`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np

from bake.artifacts.orthogonalise import Projection
from bake.artifacts.plan import Ablation, EmbedAblation, Plan, make_plan
from bake.artifacts.vectors import SteeringVectors
from bake.errors import InputError, PlanMismatchError, warn
from bake.files.tensor_bytes import round_to
from bake.model.arch import ArchSpec, arch_spec
from bake.model.checkpoint import Checkpoint
from bake.model.fingerprint import Fingerprint

KINDS = ("add", "ablate", "both")  # add v_l at block l's output; project r_l out; both


class SteerableModel(Protocol):
    """What a Steering needs to know about the model it is bound to."""

    @property
    def path(self) -> Path: ...

    @property
    def spec(self) -> ArchSpec: ...

    @property
    def fingerprint(self) -> Fingerprint: ...

    @property
    def dtype(self) -> str: ...  # safetensors tag of the block writers (F32 for a GGUF)


@dataclass(frozen=True)
class PlanModel:
    """The model as a plan describes it, where the model itself is not at hand (`cvec`
    without --model): its fingerprint and family; no checkpoint dtype, so F32."""

    path: Path
    spec: ArchSpec
    fingerprint: Fingerprint
    dtype: str = "F32"

    @classmethod
    def of(cls, plan: Plan) -> PlanModel:
        spec = arch_spec(plan.model.architecture)
        return cls(plan.base_dir, spec, plan.model, plan.rounding or "F32")


@dataclass(frozen=True)
class Steering:
    plan: Plan
    vectors: SteeringVectors
    model: SteerableModel
    plan_file: Path | None = None  # where the plan was read from (None: made in memory)

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, model: SteerableModel, plan: Path | Plan) -> Steering:
        """Load (when a path) and check the plan and its vectors against `model`."""
        plan_file = Path(plan) if not isinstance(plan, Plan) else None
        plan_obj = Plan.load(plan_file) if plan_file is not None else plan
        assert isinstance(plan_obj, Plan)
        plan_obj.check_model(model.fingerprint)
        plan_obj = _with_rounding(plan_obj, model)
        return cls(plan_obj, plan_obj.load_vectors(), model, plan_file)._checked()

    @classmethod
    def from_vectors(
        cls,
        model: SteerableModel,
        vectors_file: Path,
        layers: list[int],
        alpha: float,
        provenance: dict[str, Any] | None = None,
    ) -> Steering:
        """A plan made in memory over a vector file (what `tune` starts from); it records
        the vectors' rounding dtype, or else the model's."""
        plan = make_plan(vectors_file, layers, alpha, provenance=provenance)
        return cls.open(model, replace(plan, rounding=plan.rounding or model.dtype))

    def _checked(self) -> Steering:
        bad = [layer for layer, v in self.rounded.items() if not np.all(np.isfinite(v))]
        if bad:
            raise InputError(
                f"the steering vector of layer(s) {bad} is not finite in {self.rounding} "
                f"(alpha {self.plan.alpha:g} overflows it); use a smaller alpha"
            )
        return self

    def check_written(self, values: Mapping[str, np.ndarray], dtype: str) -> None:
        """Defence in depth at every writer: the values about to be stored (name -> array,
        as they will read back) are finite; a route that divides or adds to the vector, or
        stores it in a narrower dtype than the plan's, can still overflow."""
        bad = [name for name, v in values.items() if not np.all(np.isfinite(v))]
        if bad:
            raise InputError(
                f"{', '.join(bad[:3])} would hold NaN or Inf in {dtype} (alpha "
                f"{self.plan.alpha:g} overflows it); nothing was written: use a smaller alpha"
            )

    def rebind(self, model: SteerableModel) -> Steering:
        """The same plan and vectors bound to another copy of the model (e.g. its GGUF):
        the fingerprint is checked, nothing is reopened; values round to its dtype."""
        self.plan.check_model(model.fingerprint)
        plan = _with_rounding(self.plan, model)
        return Steering(plan, self.vectors, model, self.plan_file)._checked()

    # ------------------------------------------------------------------ candidates
    def with_config(
        self,
        layers: list[int],
        alpha: float,
        multipliers: dict[int, float] | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> Steering:
        """The same vectors, model and kind, other layers/alpha (and `provenance` merged into
        the plan's): checked, nothing reopened. An ablate plan keeps alpha 0."""
        return self._with(
            layers=list(layers),
            alpha=float(alpha),
            layer_multipliers=dict(multipliers or {}),
            provenance={**self.plan.provenance, **(provenance or {})},
        )

    def with_ablation(
        self,
        layers: list[int],
        strength: float = 1.0,
        *,
        direction_layer: int | None = None,
        embed_strength: float | None = None,
        embed_layer: int | None = None,
        alpha: float | None = None,
        multipliers: dict[int, float] | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> Steering:
        """An ablation candidate over the same vectors and model: kind `ablate`, or `both`
        when `alpha` is given (v_l added after the writers are orthogonalised). r_l = u_l of
        each block, or u of `direction_layer` everywhere; the embedding is ablated when
        `embed_strength` is given, along u of `embed_layer` (default: `direction_layer`, else
        the lowest plan layer). Checked, nothing reopened: as cheap as with_config."""
        embed = None
        if embed_strength is not None:
            source = embed_layer if embed_layer is not None else direction_layer
            embed = EmbedAblation(min(layers) if source is None else source, float(embed_strength))
        return self._with(
            layers=list(layers),
            alpha=0.0 if alpha is None else float(alpha),
            layer_multipliers=dict(multipliers or {}) if alpha is not None else {},
            provenance={**self.plan.provenance, **(provenance or {})},
            kind="ablate" if alpha is None else "both",
            ablation=Ablation(float(strength), direction_layer, embed),
        )

    def _with(self, **changes: Any) -> Steering:
        plan = replace(self.plan, **changes)
        missing = [x for x in plan.vector_layers() if x not in self.vectors.directions]
        if missing:
            raise InputError(f"the vector file has no vectors for layers {missing}")
        return Steering(plan, self.vectors, self.model, None)._checked()

    def with_vectors(self, vectors: SteeringVectors) -> Steering:
        """The same plan over other vectors held in memory (tune's fitted options), for the
        same model; the plan's file entry names no file until the vectors are saved."""
        vectors.fingerprint.check(self.model.fingerprint, "fitted vectors")
        layers = [layer for layer in self.plan.layers if layer in vectors.directions]
        layers = layers or vectors.layers[:1]  # a fitted option covers the ranked layers only
        plan = replace(
            self.plan,
            vectors_path="<memory>",
            vectors_sha256="",
            layers=layers,
            layer_multipliers={k: v for k, v in self.plan.layer_multipliers.items() if k in layers},
        )
        return Steering(plan, vectors, self.model, None)._with()

    # ------------------------------------------------------------------ values
    @property
    def kind(self) -> str:
        """add | ablate | both (the plan's)."""
        return self.plan.kind

    @property
    def layers(self) -> list[int]:
        return self.plan.layers

    @property
    def spec(self) -> ArchSpec:
        return self.model.spec

    @property
    def rounding(self) -> str:
        """The dtype (safetensors tag) every route rounds the added vectors to."""
        return self.plan.rounding or self.model.dtype

    @cached_property
    def added(self) -> Mapping[int, np.ndarray]:
        """layer -> alpha * m_l * s_l * u_l, float64 (d,); read-only; empty for `ablate`."""
        p = self.plan
        return MappingProxyType(
            {
                layer: p.alpha * p.layer_multipliers.get(layer, 1.0) * self.vectors.vector(layer)
                for layer in (p.layers if p.adds else [])
            }
        )

    @cached_property
    def projections(self) -> Mapping[int, Projection]:
        """layer -> the projection its residual writers fold (r_l float64 unit, a); empty
        unless the plan ablates; read-only."""
        a = self.plan.ablation
        if a is None:
            return MappingProxyType({})
        directions = self.vectors.directions
        return MappingProxyType(
            {
                layer: Projection.of(
                    directions[layer if a.direction_layer is None else a.direction_layer],
                    a.strength,
                )
                for layer in self.plan.layers
            }
        )

    @cached_property
    def embed_projection(self) -> Projection | None:
        """E <- E (I - a r r^T) for the token embedding, or None (not ablated)."""
        a = self.plan.ablation
        if a is None or a.embed is None:
            return None
        return Projection.of(self.vectors.directions[a.embed.direction_layer], a.embed.strength)

    @property
    def first_changed_block(self) -> int | None:
        """The lowest block whose computation the steering changes; None when the token
        embedding is ablated (then even block 0's input changes)."""
        return None if self.embed_projection is not None else min(self.plan.layers)

    @cached_property
    def rounded(self) -> Mapping[int, np.ndarray]:
        """layer -> added vector rounded to `rounding`, as float32 (d,); read-only."""
        return MappingProxyType(
            {layer: round_to(v, self.rounding) for layer, v in self.added.items()}
        )

    def scale(self, layer: int) -> float:
        """|added[layer]| / |u_l| = |alpha * m_l * s_l|."""
        return abs(self.plan.alpha * self.plan.layer_multipliers.get(layer, 1.0)) * float(
            self.vectors.scales[layer]
        )

    @property
    def vectors_file(self) -> Path:
        return self.plan.vectors_file

    @property
    def checkpoint(self) -> Checkpoint:
        """The Hugging Face checkpoint this steering is bound to (bake and verify need one)."""
        if not isinstance(self.model, Checkpoint):
            raise InputError(
                f"{self.model.path} is not a Hugging Face checkpoint folder and this step needs "
                f"one: convert the GGUF once (`steerbake convert {self.model.path.name} -o DIR`) "
                "and pass DIR"
            )
        return self.model


def _with_rounding(plan: Plan, model: SteerableModel) -> Plan:
    """The plan, after saying in one line when the dtype it records differs from the
    model's (a model of another dtype than the plan was made for)."""
    mismatch = plan.rounding and plan.rounding != model.dtype
    if mismatch and plan.adds and not isinstance(model, PlanModel):
        warn(
            f"{model.path.name} is {model.dtype} but the plan was made for {plan.rounding}: "
            f"its vectors are rounded to {plan.rounding}, as every route of this plan stores them"
        )
    return plan


def open_steering(model: str | Path | None, plan: Path | Plan) -> Steering:
    """MODEL (a folder, a .gguf file, a cached Hub id or toy-refuser) and PLAN, opened and
    checked. Without MODEL, the default (the embedded toy model), named in any mismatch."""
    from bake.model.resolve import TOY_NAME, open_model

    try:
        return Steering.open(open_model(model), plan)
    except PlanMismatchError as e:
        if model is not None:
            raise
        raise PlanMismatchError(
            f"no MODEL was given, so the default {TOY_NAME} (the embedded toy model) was "
            f"used: {e}; pass the model the plan is for"
        ) from None


def open_plan_only(plan: Path | Plan) -> Steering:
    """PLAN against the model it names, without the model (values rounded to F32)."""
    plan_obj = Plan.load(Path(plan)) if not isinstance(plan, Plan) else plan
    steering = Steering.open(PlanModel.of(plan_obj), plan_obj)
    return replace(steering, plan_file=Path(plan) if not isinstance(plan, Plan) else None)
