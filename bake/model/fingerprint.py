"""What a plan, vector file or activation folder must agree with in a model: its
architecture (config `model_type`), hidden size and number of decoder blocks."""

from __future__ import annotations

from dataclasses import dataclass

from bake.errors import PlanMismatchError


@dataclass(frozen=True)
class Fingerprint:
    """What a plan or vector file must agree with in a model."""

    architecture: str  # config model_type
    hidden_size: int
    num_layers: int

    def check(self, other: Fingerprint, what: str) -> None:
        """Raise PlanMismatchError when `other` (the model) differs from self (the file)."""
        diffs = [
            f"{k} {getattr(self, k)} vs model's {getattr(other, k)}"
            for k in ("architecture", "hidden_size", "num_layers")
            if getattr(self, k) != getattr(other, k)
        ]
        if diffs:
            raise PlanMismatchError(
                f"{what} was made for another model ({'; '.join(diffs)}); "
                "use vectors fitted or imported for this model"
            )
