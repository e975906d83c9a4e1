"""The coarser and finer partitions of a stored segmentation (the granularity option).

The engine's K search clusters every candidate K; `Segmentation.alternatives` keeps
their patch-grid label maps (K -> rows x cols). The largest K below the chosen one
("coarser") and the smallest above it ("finer") are stored with the segmentation, in
its diagnostics JSON under ``alternatives`` (a patch grid is a few hundred to a few
thousand labels, a few hundred bytes compressed: no column or migration needed), so that
a push from the database can offer them as extra predictions
(`CLASP_LABEL_STUDIO_GRANULARITY=true`).
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import numpy as np

from integrations.db.masks import decode_label_map, encode_label_map

log = logging.getLogger(__name__)

KEY = "alternatives"  # in the stored diagnostics JSON (not a field of the engine's Diagnostics)


def pick_granularities(k: int, candidates) -> dict[str, int]:
    """name -> K: ``coarser`` the largest candidate below ``k``, ``finer`` the smallest above (each if any)."""
    ks = [int(c) for c in candidates]
    out = {}
    lower, upper = [c for c in ks if c < k], [c for c in ks if c > k]
    if lower:
        out["coarser"] = max(lower)
    if upper:
        out["finer"] = min(upper)
    return out


def encode_alternatives(k: int, alternatives: dict[int, np.ndarray] | None) -> dict[str, Any]:
    """``{"alternatives": {name: {k, rows, cols, codec, dtype, stored_dtype, data}}}`` for the
    diagnostics JSON, or ``{}`` when the engine kept no other candidate K (e.g. a fixed K)."""
    alternatives = alternatives or {}
    out = {}
    for name, c in pick_granularities(k, alternatives).items():
        grid = np.asarray(alternatives[c])
        if grid.ndim != 2 or grid.size == 0:
            continue
        m = encode_label_map(grid)
        out[name] = {"k": int(c), "rows": int(m.height), "cols": int(m.width), "codec": m.codec,
                     "dtype": m.dtype, "stored_dtype": m.stored_dtype,
                     "data": base64.b64encode(m.data).decode("ascii")}
    return {KEY: out} if out else {}


def decode_alternatives(diagnostics: dict[str, Any] | None) -> dict[str, tuple[int, np.ndarray]]:
    """name -> (K, patch-grid label map) from stored diagnostics; ``{}`` when none were stored.
    An unreadable entry is logged and left out (the push then sends the chosen partition only)."""
    out = {}
    for name, e in ((diagnostics or {}).get(KEY) or {}).items():
        try:
            grid = decode_label_map(base64.b64decode(e["data"]), e["codec"], int(e["rows"]), int(e["cols"]),
                                    e["dtype"], e["stored_dtype"])
            out[str(name)] = (int(e["k"]), grid)
        except (KeyError, TypeError, ValueError) as exc:
            log.info("stored %s partition unreadable (%s): not offered", name, exc)
    return out


def split_diagnostics(stored: dict[str, Any]) -> tuple[dict[str, Any], dict[int, np.ndarray]]:
    """(the engine's diagnostics fields, K -> patch grid of the stored alternatives) of a stored JSON."""
    d = dict(stored or {})
    d.pop(KEY, None)
    return d, {k: grid for k, grid in decode_alternatives(stored).values()}


__all__ = ["KEY", "decode_alternatives", "encode_alternatives", "pick_granularities", "split_diagnostics"]
