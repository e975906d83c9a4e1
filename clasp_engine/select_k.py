"""Choosing K without tuning: eigengap elbow, then a silhouette search around it.

Index convention (1-based, as in the paper): eigenvalues λ1 ≥ λ2 ≥ … ≥ λm,
eigengaps δi = λi − λi+1 for i = 1..m−1. A large gap δi means the first i
eigenvectors span well separated groups, so **the gap δi votes for K = i
clusters**. In code the arrays are 0-based: ``gaps[j]`` is δ(j+1) and votes for
K = j + 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from clasp_engine.cluster import Clustering, spectral_embedding, spectral_kmeans

# Above this many points the silhouette averages over a fixed-seed sample of
# rows (distances still go to every point, so each sampled silhouette is exact
# and the mean is an unbiased estimate). 4096 x N float32 distances stay small.
SILHOUETTE_MAX_ROWS = 4096


def eigengaps(eigenvalues: np.ndarray) -> np.ndarray:
    """δi = λi − λi+1 for descending eigenvalues: (m−1,) array."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    if lam.ndim != 1 or lam.size < 2:
        raise ValueError(f"need at least 2 eigenvalues in a 1-d array; got shape {lam.shape}")
    return lam[:-1] - lam[1:]


def elbow_k(gaps: np.ndarray) -> tuple[int, np.ndarray]:
    """K at the elbow of the eigengap curve, and every gap point's distance to the chord.

    The curve is the points (i, δi), i = 1..m−1. The chord joins its first and
    last points; the elbow is the point farthest (perpendicular distance) from
    it, and gap δi gives K = i. Both axes are scaled to [0, 1] first (as in
    Kneedle) so distances are comparable between images; the scaling multiplies
    every vertical offset by the same factor, so the chosen point is the same as
    in raw units. Ties go to the smaller K.

    Returns
    -------
    k : int (1-based, = index of the farthest gap + 1)
    distances : (m−1,) float64 perpendicular distances in the scaled plot
    """
    g = np.asarray(gaps, dtype=np.float64)
    if g.ndim != 1 or g.size < 1:
        raise ValueError(f"need a non-empty 1-d array of gaps; got shape {g.shape}")
    n = g.size
    if n < 3:
        # With two points everything lies on the chord: take the largest gap.
        return int(np.argmax(g)) + 1, np.zeros(n)
    x = np.arange(n, dtype=np.float64) / (n - 1)
    span = g.max() - g.min()
    y = (g - g.min()) / span if span > 0 else np.zeros(n)
    dx, dy = x[-1] - x[0], y[-1] - y[0]
    distances = np.abs(dy * (x - x[0]) - dx * (y - y[0])) / np.hypot(dx, dy)
    return int(np.argmax(distances)) + 1, distances


def silhouette_score_torch(x: torch.Tensor, labels: torch.Tensor, *, seed: int = 0,
                           max_rows: int = SILHOUETTE_MAX_ROWS) -> float:
    """Mean silhouette (Euclidean), vectorised: one distance matrix, one matmul.

    Same definition as ``sklearn.metrics.silhouette_score`` (points alone in
    their cluster score 0), but without its chunked Python loop.
    """
    n = x.shape[0]
    labels = labels.to(x.device)
    k = int(labels.max()) + 1
    if k < 2 or n < 3:
        return -1.0
    rows = torch.arange(n, device=x.device)
    if n > max_rows:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        rows = torch.randperm(n, generator=gen)[:max_rows].sort().values.to(x.device)
    d = torch.cdist(x[rows], x)  # (r, N)
    onehot = torch.nn.functional.one_hot(labels, k).to(d.dtype)  # (N, K)
    sums = d @ onehot  # (r, K): distance sums to every cluster
    counts = onehot.sum(0)
    own = labels[rows]
    own_count = counts[own]
    a = sums.gather(1, own[:, None]).squeeze(1) / (own_count - 1).clamp_min(1)
    mean_to = sums / counts.clamp_min(1)[None, :]
    mean_to.scatter_(1, own[:, None], float("inf"))
    mean_to[:, counts == 0] = float("inf")
    b = mean_to.min(dim=1).values
    s = (b - a) / torch.maximum(a, b).clamp_min(1e-12)
    s = torch.where(own_count > 1, s, torch.zeros_like(s))
    return float(s.mean())


def scoring_embedding(eigenvectors: torch.Tensor | np.ndarray, eigenvalues: np.ndarray, dims: int) -> np.ndarray:
    """The one space all candidate K are scored in: first ``dims`` eigenvectors,
    each scaled by its eigenvalue, rows normalised to unit length.

    Why not score each K in its own K-dim embedding: row-normalised embeddings of
    few dimensions collapse onto few points, so small K wins trivially (on the
    synthetic 4-group test, K=2 beat K=4 in 3 of 21 runs that way). Silhouettes
    are only comparable in a shared space. The eigenvalue weights (diffusion-map
    style) keep eigenvectors with small λ, which carry no group structure, from
    swamping the distances once rows are normalised; unweighted, the shared
    space picked K+2 on 10 of 21 well-separated synthetic runs.
    """
    if isinstance(eigenvectors, torch.Tensor):
        eigenvectors = eigenvectors.detach().cpu().numpy()
    lam = np.clip(np.asarray(eigenvalues[:dims], dtype=np.float32), 0.0, None)
    return spectral_embedding(eigenvectors[:, :dims] * lam[None, :], dims)


def silhouette_search(embedding: torch.Tensor | np.ndarray, candidates: list[int], seed: int = 0, *,
                      eigenvalues: np.ndarray | None = None,
                      clusterings: dict[int, Clustering] | None = None) -> dict[int, float]:
    """Mean silhouette of the k-means partition for every candidate K.

    ``embedding`` holds the leading eigenvectors as columns (N, m). For each K
    the first K are row-normalised and clustered with k-means (Ng-Jordan-Weiss);
    every partition is then scored in the same space, :func:`scoring_embedding`
    of the largest candidate's dimension (``eigenvalues`` default to 1). Pass a
    dict as ``clusterings`` to keep each candidate's clustering (the segmenter
    reuses the winner instead of clustering again).
    """
    if not candidates:
        raise ValueError("silhouette_search needs at least one candidate K")
    m = embedding.shape[1]
    if max(candidates) > m or min(candidates) < 2:
        raise ValueError(f"candidates {candidates}: each K must be in 2..{m} (eigenvectors computed)")
    lam = np.ones(m) if eigenvalues is None else np.asarray(eigenvalues)
    space = torch.from_numpy(scoring_embedding(embedding, lam, max(candidates)))
    scores: dict[int, float] = {}
    for k in candidates:
        c = spectral_kmeans(spectral_embedding(embedding, k), k, seed=seed)
        if clusterings is not None:
            clusterings[k] = c
        scores[k] = silhouette_score_torch(space, torch.from_numpy(c.labels), seed=seed)
    return scores


@dataclass
class KSelection:
    k: int
    rule: str  # "fixed" | "silhouette" | "elbow" | "single"
    elbow_k: int | None
    eigengaps: np.ndarray
    elbow_distances: np.ndarray
    silhouette: dict[int, float] = field(default_factory=dict)
    clustering: Clustering | None = None  # the chosen K's clustering, when already computed
    candidates: dict[int, Clustering] = field(default_factory=dict)  # every searched K's clustering


def candidate_window(elbow: int, window: int, k_min: int, k_max: int) -> list[int]:
    """[elbow − w, elbow + w] clipped to [k_min, k_max]; never empty.

    If the whole window falls outside the bounds, it is re-centred on the elbow
    clipped into the bounds.
    """
    lo, hi = max(k_min, elbow - window), min(k_max, elbow + window)
    if lo > hi:
        centre = min(max(elbow, k_min), k_max)
        lo, hi = max(k_min, centre - window), min(k_max, centre + window)
    return list(range(lo, hi + 1))


def select_k(eigenvalues: np.ndarray, eigenvectors: torch.Tensor, *, k: int | None = None, k_min: int = 2,
             k_max: int = 15, window: int = 2, seed: int = 0) -> KSelection:
    """The chosen-K rule.

    - fixed ``k`` given: K = k, no search (rule "fixed"); gaps and elbow are still reported.
    - otherwise: elbow of the eigengap curve, then the best mean silhouette over
      K in [elbow − window, elbow + window] clipped to [k_min, k_max]; ties go
      to the smaller K (rule "silhouette", or "elbow" when one candidate remains).
    - fewer than 2 usable patches/eigenvectors: K = 1 (rule "single").
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    n_points, n_vecs = eigenvectors.shape
    gaps = eigengaps(lam) if lam.size >= 2 else np.zeros(0)
    elbow, distances = elbow_k(gaps) if gaps.size else (None, np.zeros(0))
    if k is not None:
        return KSelection(k=min(k, n_points), rule="fixed", elbow_k=elbow, eigengaps=gaps, elbow_distances=distances)
    upper = min(k_max, n_vecs, n_points - 1)
    if elbow is None or upper < max(2, k_min):
        return KSelection(k=1, rule="single", elbow_k=elbow, eigengaps=gaps, elbow_distances=distances)
    candidates = candidate_window(elbow, window, k_min, upper)
    clusterings: dict[int, Clustering] = {}
    scores = silhouette_search(eigenvectors, candidates, seed, eigenvalues=lam, clusterings=clusterings)
    chosen = max(candidates, key=lambda c: (scores[c], -c))
    rule = "elbow" if len(candidates) == 1 else "silhouette"
    return KSelection(k=chosen, rule=rule, elbow_k=elbow, eigengaps=gaps, elbow_distances=distances,
                      silhouette=scores, clustering=clusterings[chosen], candidates=clusterings)
