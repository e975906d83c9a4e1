"""JSON columns that hold numpy values and non-finite floats (diagnostics, run configs)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def to_json(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars/arrays to Python, tuples to lists, and
    non-finite floats to the strings "NaN" / "Infinity" / "-Infinity"
    (PostgreSQL's JSONB refuses bare NaN). `from_json` reverses the floats."""
    if isinstance(obj, Mapping):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_json(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    return obj


def from_json(obj: Any) -> Any:
    """Inverse of `to_json` for the floats: "NaN" / "Infinity" / "-Infinity" back to floats."""
    if isinstance(obj, dict):
        return {k: from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_json(v) for v in obj]
    if isinstance(obj, str) and obj in _NONFINITE:
        return _NONFINITE[obj]
    return obj


__all__ = ["from_json", "to_json"]
