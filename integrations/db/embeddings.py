"""Region embeddings of stored segments: which model made them, and attaching them to rows.

The *embedding model* is the identity of the features an embedding came from:
backbone name, weights (kind and source), the weights' sha256 and the ViT
feature kind. Embeddings of different identities never meet: exemplars and
suggestions are always filtered on it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from integrations.db.vector import vector_bytes


def embedding_model(diagnostics: Any) -> str:
    """``backbone|weights|sha256 prefix|features`` from a Diagnostics object or its dict."""
    d = diagnostics if isinstance(diagnostics, dict) else diagnostics.to_dict()
    sha = (d.get("weights_sha256") or "-")[:16]
    return f"{d.get('backbone', '?')}|{d.get('weights', '?')}|{sha}|{d.get('features', '?')}"[:300]


def attach_embeddings(segment_rows: list[Any], seg: Any) -> None:
    """Copy ``seg.region_embeddings`` (engine result) onto its SegmentRow objects, by label.

    Rows whose embedding is all zeros (a segment with no patch) stay NULL. Does
    nothing when the result carries no embeddings.
    """
    emb = getattr(seg, "region_embeddings", None)
    if emb is None:
        return
    emb = np.asarray(emb, dtype=np.float32)
    model = embedding_model(seg.diagnostics)
    for row in segment_rows:
        if 0 <= row.label < len(emb) and np.any(emb[row.label]):
            vector_bytes(emb[row.label], emb.shape[1], what=f"segment {row.label} embedding")  # checks it
            row.embedding = emb[row.label].copy()
            row.embedding_dim = int(emb.shape[1])
            row.embedding_model = model
