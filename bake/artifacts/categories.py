"""Prompt categories in vector files: one direction per category per layer, and the whitened
combination that turns a choice of categories and weights into one vector per layer.

A by-category vector file (`steerbake fit --by-category`) is an ordinary vector file (its
`direction.{l}` / `scale.{l}` are the vectors fitted on every category together, so it
plans, bakes and tunes like any other) with, beside them:
  category.{name}.direction.{l}  F32 (d,)    u_{c,l}: unit direction fitted within category c
  category.{name}.scale.{l}      F32 (1,)    that fit's scale
  whitening.gram.{l}             F64 (k, k)  G_l = U_l^T Sigma_l^-1 U_l, U_l = [u_1..u_k] (d, k)
and under the metadata key "categories": {"names": [...k, the order of G's rows],
"counts": {name: {...}}, "diagnostics": {name: {layer: {...}}}, "whitening": {...}}.
Sigma = Sigma_C + lambda I, Sigma_C the covariance of the compliant rows of all categories.

The whitened combination of categories S with weights w (DESIGN: one intervention in an
orthonormal basis of the whitened category directions):
  Q = Sigma^-1/2 U_S (U_S^T Sigma^-1 U_S)^-1/2     orthonormal (Q^T Q = I): the basis nearest
                                                   the whitened directions Sigma^-1/2 u_i, so
                                                   w_i stays attached to category i
  v = Sigma^1/2 Q w = U_S G_S^-1/2 w               G_S: G's rows and columns of S
  u = v / |v|,  s = the file's scale s_l           so alpha keeps its units
One category with weight 1 gives its own direction. Only G (k x k per layer) is needed, so
the file carries what the combination needs; no activations are read again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bake.artifacts.vectors import SteeringVectors, read_vector_file
from bake.errors import InputError
from bake.files.jsonio import dumps

if TYPE_CHECKING:
    from bake.artifacts.activations import ActivationSource

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_PREFIX = "category."
_GRAM = "whitening.gram."


def check_category_name(name: str) -> str:
    """A category name that can name tensors: letters, digits, '_' and '-'."""
    if not _NAME.fullmatch(name):
        raise InputError(
            f"category {name!r} cannot name a vector: use letters, digits, '_' and '-' "
            "(at most 64), starting with a letter or digit; rename it in the prompt file"
        )
    return name


# --------------------------------------------------------------------------- rows
def row_categories(acts: ActivationSource, scores_file: Path | None = None) -> dict[str, str]:
    """id -> category of each activation row: from the activation index, else from the
    scores file (`judge` copies the prompts' categories into it)."""
    from bake.artifacts.scores import load_score_categories

    per_row = getattr(acts, "categories", None)
    found = {i: c for i, c in zip(acts.ids, per_row or [], strict=False) if c is not None}
    if not found and scores_file is not None:
        found = load_score_categories(Path(scores_file))
    if not found:
        raise InputError(
            "neither the activations nor the scores carry prompt categories; give the "
            'prompts a "category" field, then collect (or generate and judge) again'
        )
    return found


def within_categories(
    scores: dict[str, float], categories: Mapping[str, str], names: Sequence[str]
) -> dict[str, float]:
    """The scores of the prompts whose category is one of `names`."""
    known = sorted(set(categories.values()))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(
            f"no prompt has category {unknown[0]!r}; the categories are {', '.join(known)}"
        )
    chosen = set(names)
    kept = {i: s for i, s in scores.items() if categories.get(i) in chosen}
    if not kept:
        raise InputError(
            f"no scored prompt has category {', '.join(names)}; score the prompts you collected"
        )
    return kept


# --------------------------------------------------------------------------- the file
@dataclass
class WhiteningStats:
    """What the whitened combination needs from the activations: per layer
    G_l = U_l^T Sigma_l^-1 U_l (k, k) over the categories `names`, in that order."""

    names: list[str]
    gram: dict[int, np.ndarray]  # layer -> (k, k) float64, symmetric positive definite
    info: dict[str, Any] = field(default_factory=dict)  # lambda, covariance rows

    def sub(self, layer: int, chosen: Sequence[str]) -> np.ndarray:
        """G's rows and columns of the categories `chosen`, at `layer`."""
        idx = [self.names.index(n) for n in chosen]
        return self.gram[layer][np.ix_(idx, idx)]


@dataclass
class CategoryVectors:
    """The vectors fitted on all categories together (`pooled`), one direction and scale
    per category and layer, and the whitening statistics of the combination."""

    pooled: SteeringVectors
    directions: dict[str, dict[int, np.ndarray]]  # category -> layer -> (d,) unit
    scales: dict[str, dict[int, float]]  # category -> layer -> s
    whitening: WhiteningStats
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    diagnostics: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.whitening.names)

    @property
    def layers(self) -> list[int]:
        return self.pooled.layers

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        from bake.files.fileio import atomic_write_path

        tensors: dict[str, np.ndarray] = {}
        for layer in self.layers:
            tensors[f"direction.{layer}"] = np.ascontiguousarray(
                self.pooled.directions[layer], np.float32
            )
            tensors[f"scale.{layer}"] = np.array([self.pooled.scales[layer]], np.float32)
            tensors[f"{_GRAM}{layer}"] = np.ascontiguousarray(
                self.whitening.gram[layer], np.float64
            )
            for name in self.names:
                tensors[f"{_PREFIX}{name}.direction.{layer}"] = np.ascontiguousarray(
                    self.directions[name][layer], np.float32
                )
                tensors[f"{_PREFIX}{name}.scale.{layer}"] = np.array(
                    [self.scales[name][layer]], np.float32
                )
        meta = self.pooled.metadata() | {
            "categories": {
                "names": self.names,
                "counts": self.counts,
                "diagnostics": {
                    n: {str(k): v for k, v in d.items()} for n, d in self.diagnostics.items()
                },
                "whitening": self.whitening.info,
            }
        }
        with atomic_write_path(Path(path)) as tmp:
            save_file(tensors, str(tmp), metadata={"steerbake": dumps(meta)})

    @classmethod
    def load(cls, path: Path) -> CategoryVectors:
        path = Path(path)
        pooled = SteeringVectors.load(path)
        raw_meta, arrays = read_vector_file(path)
        meta = json.loads(raw_meta or "{}").get("categories")
        if not isinstance(meta, dict):
            raise InputError(
                f"{path} holds no category directions; fit one with `steerbake fit "
                '--by-category` (prompts with a "category" field)'
            )
        try:
            names = [check_category_name(str(n)) for n in meta["names"]]
            layers = pooled.layers
            directions = {
                n: {lay: arrays[f"{_PREFIX}{n}.direction.{lay}"] for lay in layers} for n in names
            }
            scales = {
                n: {
                    lay: float(arrays[f"{_PREFIX}{n}.scale.{lay}"].reshape(-1)[0]) for lay in layers
                }
                for n in names
            }
            gram = {lay: arrays[f"{_GRAM}{lay}"].astype(np.float64) for lay in layers}
            if any(g.shape != (len(names), len(names)) for g in gram.values()):
                raise ValueError("a whitening matrix does not match the category count")
            diagnostics = {
                n: {int(k): v for k, v in d.items()}
                for n, d in (meta.get("diagnostics") or {}).items()
            }
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InputError(
                f"{path}: damaged category vectors ({type(e).__name__}: {e}); fit again "
                "with `steerbake fit --by-category`"
            ) from None
        return cls(
            pooled,
            directions,
            scales,
            WhiteningStats(names, gram, dict(meta.get("whitening") or {})),
            dict(meta.get("counts") or {}),
            diagnostics,
        )


def has_categories(path: Path) -> bool:
    """Whether a vector file holds category directions (written by fit --by-category)."""
    raw_meta, _ = read_vector_file(Path(path))
    try:
        return isinstance(json.loads(raw_meta or "{}").get("categories"), dict)
    except ValueError:
        return False


# --------------------------------------------------------------------------- combining
def parse_weights(items: Sequence[str]) -> dict[str, float]:
    """['harmful', 'privacy=0.5'] -> {'harmful': 1.0, 'privacy': 0.5} (weight 1 if none)."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            weight = float(value) if sep else 1.0
        except ValueError:
            raise InputError(
                f"bad --category {item!r}: use NAME or NAME=WEIGHT, e.g. privacy=0.5"
            ) from None
        if not np.isfinite(weight):
            raise InputError(f"--category {item!r}: the weight must be a finite number")
        if name in out:
            raise InputError(f"--category {name!r} is given twice; name each category once")
        out[check_category_name(name.strip())] = weight
    return out


def combine_categories(
    categories: CategoryVectors,
    whitening: WhiteningStats,
    weights: Mapping[str, float],
    *,
    layers: Sequence[int] | None = None,
) -> SteeringVectors:
    """One unit direction and scale per layer: v_l = U_S G_S^-1/2 w (module docstring), S the
    categories named in `weights` (in the file's order), w their weights. The scale is the
    file's s_l, so alpha keeps its units. This is what a search over w calls."""
    unknown = [n for n in weights if n not in whitening.names]
    if unknown:
        raise InputError(
            f"the vector file has no category {unknown[0]!r}; it has {', '.join(whitening.names)}"
        )
    chosen = [n for n in whitening.names if n in weights]
    w = np.array([float(weights[n]) for n in chosen], dtype=np.float64)  # (k,)
    if not chosen or not np.any(w):
        raise InputError("give at least one category a nonzero weight")
    raw = {}
    for layer in layers if layers is not None else categories.layers:
        u = np.stack([categories.directions[n][layer].astype(np.float64) for n in chosen], 1)
        raw[layer] = u @ (_inverse_sqrt(whitening.sub(layer, chosen)) @ w)  # (d,)
    combined = SteeringVectors.from_raw(
        raw,
        categories.pooled.fingerprint,
        site=categories.pooled.site,
        method="whitened-combination",
        provenance={
            **categories.pooled.provenance,
            "combination": {
                "kind": "whitened",
                "weights": {n: float(weights[n]) for n in chosen},
                "categories": categories.names,
            },
        },
        rounding=categories.pooled.rounding,
    )
    combined.scales = {layer: categories.pooled.scales[layer] for layer in raw}
    return combined


def _inverse_sqrt(g: np.ndarray) -> np.ndarray:
    """G^-1/2 of a symmetric positive definite (k, k) matrix, by its eigenvectors."""
    values, vectors = np.linalg.eigh((g + g.T) / 2)
    if values.min() <= values.max() * 1e-12:
        raise InputError(
            "the chosen category directions are (nearly) linearly dependent at some layer; "
            "leave one of them out"
        )
    return (vectors / np.sqrt(values)) @ vectors.T
