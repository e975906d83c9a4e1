"""Region embeddings: one vector per segment, the mean of its patch features.

Self-supervised ViT features transfer labels well by nearest neighbours; the
mean feature of a segment's patches, L2-normalised, is the region's descriptor
(`integrations.review` stores it and votes over reviewed exemplars with it).
Pure array code: patch features and patch labels in, one row per segment out.
"""

from __future__ import annotations

import numpy as np


def region_embeddings(features: np.ndarray, patch_labels: np.ndarray, k: int | None = None) -> np.ndarray:
    """Mean patch feature of every segment, L2-normalised.

    Parameters
    ----------
    features : ndarray, shape (rows, cols, d)
        The backbone's patch features (any float dtype; a torch tensor is accepted
        through ``np.asarray``).
    patch_labels : ndarray, shape (rows, cols)
        Segment label of every patch, integers ``>= 0``. Labels ``>= k`` are ignored
        (the segmenter numbers segments that vanished at pixel level after the last one).
    k : int, optional
        Number of segments; default ``patch_labels.max() + 1``.

    Returns
    -------
    ndarray, shape (k, d), float32
        Row ``i`` is the unit-length mean feature of segment ``i``; a segment with
        no patch (it exists only at pixel level) or a zero mean gets a zero row.

    Raises
    ------
    ValueError
        When the grids of ``features`` and ``patch_labels`` differ, or a label is negative.
    """
    feats = np.asarray(features, dtype=np.float32)
    labels = np.asarray(patch_labels)
    if feats.ndim != 3:
        raise ValueError(f"features must be (rows, cols, d), got shape {feats.shape}")
    if labels.shape != feats.shape[:2]:
        raise ValueError(f"patch labels {labels.shape} and features {feats.shape[:2]} are not on the same grid")
    flat = labels.reshape(-1).astype(np.int64)
    if flat.size and flat.min() < 0:
        raise ValueError("patch labels must be >= 0")
    if k is None:
        k = int(flat.max()) + 1 if flat.size else 0
    d = feats.shape[2]
    keep = flat < k
    onehot = np.zeros((k, int(keep.sum())), dtype=np.float32)  # (k, patches): one matrix product sums them
    onehot[flat[keep], np.arange(onehot.shape[1])] = 1.0
    sums = (onehot @ feats.reshape(-1, d)[keep]).astype(np.float64)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)  # the mean's norm is this / count: same direction
    out = np.zeros((k, d), dtype=np.float32)
    nz = norms[:, 0] > 0
    out[nz] = (sums[nz] / norms[nz]).astype(np.float32)
    return out
