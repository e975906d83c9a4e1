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

from clasp_engine.cluster import (Clustering, KMeansProblems, clustering_from_labels, kmeans_batch, torch_threads_for,
                                  unit_row_eigenvectors, unit_row_eigenvectors_torch)

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
    return unit_row_eigenvectors(eigenvectors[:, :dims] * lam[None, :], dims)


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
    vecs = torch.as_tensor(np.asarray(embedding)) if not isinstance(embedding, torch.Tensor) else embedding
    lam = np.ones(m) if eigenvalues is None else np.asarray(eigenvalues)
    labels = cluster_candidates([vecs], [list(candidates)], [seed])
    space = torch.from_numpy(scoring_embedding(vecs, lam, max(candidates)))[None]
    scores = silhouette_scores_batch(space, labels[0][None], max(candidates), seeds=[seed])[0]
    if clusterings is not None:
        for j, k in enumerate(candidates):
            clusterings[k] = clustering_from_labels(unit_row_eigenvectors(vecs, k), labels[0][j].cpu().numpy(), k)
    return {k: float(scores[j]) for j, k in enumerate(candidates)}


def cluster_candidates(eigenvectors: list[torch.Tensor], candidates: list[list[int]], seeds: list[int]
                       ) -> list[torch.Tensor]:
    """k-means labels for every candidate K of every image, as one batch of problems.

    Parameters
    ----------
    eigenvectors : per image (N, m), all with the same N and on one device.
    candidates : per image, the K to cluster at (may be empty).
    seeds : per image.

    Returns
    -------
    per image, (len(candidates), N) int64 labels (raw k-means numbering).
    """
    width = max((max(c) for c in candidates if c), default=0)
    if width == 0:
        return [torch.zeros(0, v.shape[0], dtype=torch.long) for v in eigenvectors]
    points, ks, problem_seeds = [], [], []
    for vecs, cands, seed in zip(eigenvectors, candidates, seeds):
        for k in cands:
            points.append(unit_row_eigenvectors_torch(vecs, k, width))
            ks.append(k)
            problem_seeds.append(seed)
    with torch_threads_for(points[0].device):
        labels, _ = kmeans_batch(KMeansProblems(points=torch.stack(points), ks=torch.tensor(ks),
                                                seeds=problem_seeds, dims=torch.tensor(ks)))
    out, start = [], 0
    for cands in candidates:
        out.append(labels[start:start + len(cands)])
        start += len(cands)
    return out


def silhouette_scores_batch(space: torch.Tensor, labels: torch.Tensor, kmax: int, *, seeds: list[int] | None = None,
                            max_rows: int = SILHOUETTE_MAX_ROWS) -> np.ndarray:
    """Mean silhouettes of C partitions of each of B images, in one batched pass.

    Parameters
    ----------
    space : (B, N, d) scoring embeddings (see :func:`scoring_embedding`; zero
        padding columns change no distance).
    labels : (B, C, N) int64 labels, each < ``kmax``.
    seeds : per image (default 0): above ``max_rows`` points, the rows scored
        are a sample drawn from the image's own seed.

    Returns
    -------
    (B, C) float64: each entry equal to :func:`silhouette_score_torch` of that
    partition (same row sample, same definition), -1 for a partition with
    fewer than 2 non-empty clusters or fewer than 3 points.
    """
    batch, n, _ = space.shape
    c = labels.shape[1]
    if c == 0:
        return np.zeros((batch, 0))
    labels = labels.to(space.device)
    seeds = [0] * batch if seeds is None else seeds
    if n > max_rows:
        rows = torch.stack([torch.randperm(n, generator=torch.Generator(device="cpu").manual_seed(s))[:max_rows]
                            .sort().values for s in seeds]).to(space.device)
    else:
        rows = torch.arange(n, device=space.device).expand(batch, n)
    with torch_threads_for(space.device):
        picked = space.gather(1, rows[..., None].expand(-1, -1, space.shape[2]))
        d = torch.cdist(picked, space)  # (B, r, N): shared by all C partitions
        offsets = (torch.arange(c, device=space.device) * kmax)[None, :, None]
        onehot = torch.zeros(batch, n, c * kmax, dtype=d.dtype, device=space.device)
        onehot.scatter_(2, (labels + offsets).transpose(1, 2), 1.0)  # (B, N, C*kmax)
        sums = torch.bmm(d, onehot).reshape(batch, -1, c, kmax).permute(0, 2, 1, 3)  # (B, C, r, kmax)
        counts = onehot.sum(1).reshape(batch, c, kmax)
        own = labels.gather(2, rows[:, None, :].expand(-1, c, -1))  # (B, C, r)
        own_count = counts.gather(2, own)
        a = sums.gather(3, own[..., None]).squeeze(3) / (own_count - 1).clamp_min(1)
        mean_to = sums / counts.clamp_min(1)[:, :, None, :]
        mean_to.scatter_(3, own[..., None], float("inf"))
        mean_to.masked_fill_((counts == 0)[:, :, None, :], float("inf"))
        b = mean_to.min(dim=3).values
        s = (b - a) / torch.maximum(a, b).clamp_min(1e-12)
        s = torch.where(own_count > 1, s, torch.zeros_like(s))
        scores = s.mean(2).double()
    scores[((counts > 0).sum(2) < 2) | (n < 3)] = -1.0
    return scores.cpu().numpy()


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
    """The chosen-K rule for one image (see :func:`select_k_batch`)."""
    return select_k_batch([np.asarray(eigenvalues)], [eigenvectors], k=k, k_min=k_min, k_max=k_max, window=window,
                          seeds=[seed], cluster_always=False)[0]


def select_k_batch(eigenvalues: list[np.ndarray], eigenvectors: list[torch.Tensor], *, k: int | None = None,
                   k_min: int = 2, k_max: int = 15, window: int = 2, seeds: list[int] | None = None,
                   cluster_always: bool = True) -> list[KSelection]:
    """The chosen-K rule for a batch of images with the same patch count, with their clusterings.

    - fixed ``k`` given: K = k, no search (rule "fixed"); gaps and elbow are still reported.
    - otherwise: elbow of the eigengap curve, then the best mean silhouette over
      K in [elbow − window, elbow + window] clipped to [k_min, k_max]; ties go
      to the smaller K (rule "silhouette", or "elbow" when one candidate remains).
    - fewer than 2 usable patches/eigenvectors: K = 1 (rule "single").

    Every candidate K of every image is clustered in one batch of k-means
    problems and scored in one batched silhouette pass; each image's result
    depends on its own data and seed only. With ``cluster_always`` the images
    whose K needs no search (fixed, single) are clustered in the same batch, so
    every selection carries its clustering; without, theirs is None.
    """
    seeds = [0] * len(eigenvectors) if seeds is None else list(seeds)
    plans = []
    for lam, vecs in zip(eigenvalues, eigenvectors):
        lam = np.asarray(lam, dtype=np.float64)
        n_points, n_vecs = vecs.shape
        gaps = eigengaps(lam) if lam.size >= 2 else np.zeros(0)
        elbow, distances = elbow_k(gaps) if gaps.size else (None, np.zeros(0))
        upper = min(k_max, n_vecs, n_points - 1)
        if k is not None:
            chosen = max(1, min(k, n_points, n_vecs))
            plans.append(("fixed", min(k, n_points), elbow, gaps, distances,
                          [chosen] if chosen > 1 and cluster_always else []))
        elif elbow is None or upper < max(2, k_min):
            plans.append(("single", 1, elbow, gaps, distances, []))
        else:
            cands = candidate_window(elbow, window, k_min, upper)
            plans.append(("silhouette" if len(cands) > 1 else "elbow", None, elbow, gaps, distances, cands))
    labels = cluster_candidates(list(eigenvectors), [p[5] for p in plans], seeds)
    searched = [i for i, p in enumerate(plans) if p[0] in ("silhouette", "elbow")]
    scores = np.zeros((len(plans), 0))
    if searched:
        dims = max(max(plans[i][5]) for i in searched)
        space = torch.stack([torch.nn.functional.pad(torch.from_numpy(scoring_embedding(
            eigenvectors[i], eigenvalues[i], max(plans[i][5]))), (0, dims - max(plans[i][5]))) for i in searched])
        width = max(len(plans[i][5]) for i in searched)
        # Images with fewer candidates repeat their first partition (its score is ignored).
        batch_labels = torch.stack([torch.cat([labels[i], labels[i][:1].expand(width - len(plans[i][5]), -1)])
                                    for i in searched])
        scores = silhouette_scores_batch(space.to(batch_labels.device), batch_labels, dims,
                                         seeds=[seeds[i] for i in searched])
    out = []
    for i, (rule, fixed_k, elbow, gaps, distances, cands) in enumerate(plans):
        vecs = eigenvectors[i]
        if rule == "single" or not cands:
            k_out = 1 if rule == "single" else fixed_k
            n = vecs.shape[0]
            clustering = (clustering_from_labels(np.ones((n, 1), np.float32), np.zeros(n, np.int64), 1)
                          if cluster_always else None)
            out.append(KSelection(k=k_out, rule=rule, elbow_k=elbow, eigengaps=gaps, elbow_distances=distances,
                                  clustering=clustering))
            continue
        clusterings = [clustering_from_labels(unit_row_eigenvectors(vecs, c), labels[i][j].cpu().numpy(), c)
                       for j, c in enumerate(cands)]
        if rule == "fixed":
            out.append(KSelection(k=fixed_k, rule=rule, elbow_k=elbow, eigengaps=gaps, elbow_distances=distances,
                                  clustering=clusterings[0]))
            continue
        row = scores[searched.index(i)]
        silhouette = {c: float(row[j]) for j, c in enumerate(cands)}
        chosen = max(cands, key=lambda c: (silhouette[c], -c))
        out.append(KSelection(k=chosen, rule=rule, elbow_k=elbow, eigengaps=gaps, elbow_distances=distances,
                              silhouette=silhouette, clustering=clusterings[cands.index(chosen)],
                              candidates=dict(zip(cands, clusterings))))
    return out
