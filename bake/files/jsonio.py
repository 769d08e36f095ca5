"""JSON that is JSON: NaN and infinities (which Python's json writes as the bare words
NaN and Infinity, which no other JSON reader accepts) become null when a plan, report or
record is written. Readers of fields that may be null turn them back into NaN."""

from __future__ import annotations

import json
import math
from typing import Any


def finite_json(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (dicts, lists, tuples walked)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        return finite_json(value.item())  # a numpy scalar
    return value


def dumps(value: Any, **kw: Any) -> str:
    """json.dumps of finite_json(value); never writes NaN or Infinity."""
    return json.dumps(finite_json(value), allow_nan=False, **kw)


def nan_if_none(value: Any) -> float:
    """A float field read back: null (a NaN when written) -> NaN."""
    return math.nan if value is None else float(value)
