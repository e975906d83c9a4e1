"""K-means on the spectral embedding (Ng, Jordan & Weiss), with soft assignments."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

# 3 restarts buy robustness cheaply: sklearn KMeans (k-means++, Lloyd) on
# unit-norm rows took 1.5 ms (n_init=1) / 3.9 ms (n_init=3) at N=600, K=4 on this
# 2-core CPU. The engine's own batched k-means below replaced it (same algorithm,
# every candidate of every image in one batch, on any device): 40 problems
# (N=600, K 2..6, n_init 3) took 0.47 s batched vs 1.17 s through sklearn one by
# one, both on one thread on the loaded machine.
N_INIT = 3


@dataclass(frozen=True)
class Clustering:
    labels: np.ndarray  # (N,) int64, 0..K-1, relabelled by first occurrence, none empty
    centroids: np.ndarray  # (K, K) in the embedding
    probabilities: np.ndarray  # (N, K) float32 soft assignments, rows sum to 1

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])


def unit_row_eigenvectors(eigenvectors: torch.Tensor | np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` eigenvectors with every row scaled to unit length: (N, k) float32 (Ng-Jordan-Weiss).

    Named for what it returns; it is not scikit-learn's ``spectral_embedding``.
    """
    if not isinstance(eigenvectors, torch.Tensor):
        eigenvectors = torch.from_numpy(np.asarray(eigenvectors))
    if not 1 <= k <= eigenvectors.shape[1]:
        raise ValueError(f"k={k}: need 1 <= k <= {eigenvectors.shape[1]} (eigenvectors computed)")
    return np.ascontiguousarray(unit_row_eigenvectors_torch(eigenvectors.detach(), k).cpu().numpy())


def spectral_kmeans(embedding: np.ndarray, k: int, *, seed: int = 0, n_init: int = N_INIT) -> Clustering:
    """K-means on an (N, d) embedding; deterministic for a given seed (one problem of :func:`kmeans_batch`).

    Labels are renumbered by first occurrence in row order (raster order on
    the patch grid), so the same partition always gets the same numbers, and
    any cluster k-means left empty is dropped (K may then shrink).
    """
    x = np.ascontiguousarray(embedding, dtype=np.float32)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k={k}: need 1 <= k <= N = {n}")
    if k == 1:
        labels = np.zeros(n, dtype=np.int64)
    else:
        points = torch.from_numpy(x)[None]
        with torch_threads_for(points.device):
            found, _ = kmeans_batch(KMeansProblems(points=points, ks=torch.tensor([k]), seeds=[seed]), n_init=n_init)
        labels = found[0].numpy()
    return clustering_from_labels(x, labels, k)


@contextlib.contextmanager
def torch_threads_for(device: torch.device) -> Iterator[None]:
    """One torch thread for the small batched ops of the K search on CPU; nothing on other devices.

    Measured on this project's 2-core machine while other work ran (120 k-means
    problems, N=600, K 2..6, d=6): k-means++ and Lloyd took 0.12 s + 0.35 s
    with one thread and 3.0 s + 8.3 s with two (OpenMP threads spinning
    against each other on tiny kernels).
    """
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def soft_assignments(embedding: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Softmax of negative squared distances to the centroids.

    The temperature is the mean squared distance of points to their own
    centroid: a point as far from its centroid as is typical keeps a clear
    majority, while points between clusters get split probabilities. This makes
    the probabilities scale-free (no tuned constant) across images and K.
    """
    d2 = ((embedding[:, None, :] - centroids[None, :, :]) ** 2).sum(-1)
    own = d2[np.arange(len(labels)), labels]
    temperature = max(float(own.mean()), 1e-3)
    logits = -d2 / temperature
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    return p.astype(np.float32)


def _relabel_first_occurrence(labels: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _, first = np.unique(labels, return_index=True)
    order = labels[np.sort(first)]  # old labels in order of first appearance; empties vanish
    mapping = np.full(centroids.shape[0], -1, dtype=np.int64)
    mapping[order] = np.arange(len(order))
    return mapping[labels], centroids[order]


# ---------------------------------------------------------------- batched k-means (torch)
#
# Every candidate K of every image of a batch is one k-means problem; they all
# run together as batched tensor operations on the configured device (zero-
# padded to the largest K: padded embedding columns add nothing to distances,
# padded centroids are masked out). Written here rather than calling
# scikit-learn because sklearn fits one problem per call on the CPU only; the
# algorithm is sklearn's (greedy k-means++ with 2 + log K local trials, Lloyd
# iterations until the centre shift falls below tol x mean feature variance,
# best of n_init restarts by inertia), and the tests compare it against
# sklearn on the same data.
KMEANS_MAX_ITER = 300
KMEANS_TOL = 1e-4


@dataclass(frozen=True)
class KMeansProblems:
    """A batch of k-means problems: P embeddings zero-padded to d columns, each with its own K."""

    points: torch.Tensor  # (P, N, d) float32
    ks: torch.Tensor  # (P,) int64, 1 <= k <= d
    seeds: list[int]  # one per problem: its random numbers depend on it (and K) only
    # (P,) columns of each problem before zero padding (None: all d). The
    # convergence threshold averages the feature variance over these only.
    dims: torch.Tensor | None = None


def unit_row_eigenvectors_torch(eigenvectors: torch.Tensor, k: int, width: int | None = None) -> torch.Tensor:
    """First ``k`` of (..., N, m) eigenvectors, rows scaled to unit length, zero-padded to ``width`` columns."""
    u = eigenvectors[..., :k].float()
    u = u / torch.linalg.vector_norm(u, dim=-1, keepdim=True).clamp_min(1e-12)
    if width is not None and width > k:
        u = torch.nn.functional.pad(u, (0, width - k))
    return u


def local_trials(k: int) -> int:
    """Candidates drawn per k-means++ step: sklearn's 2 + floor(ln K)."""
    return 2 + int(np.log(k))


def problem_uniforms(seed: int, k: int, n_init: int, kmax: int, trials: int) -> torch.Tensor:
    """(n_init, kmax, trials) float64 uniforms for one problem, drawn from its own generator.

    The numbers are those ``KMeans(n_clusters=k, n_init=n_init,
    random_state=seed)`` draws for its k-means++ seeding, in its order
    (``numpy.random.RandomState(seed)``: per restart one for the first centre,
    then :func:`local_trials` (K) for each further centre), so the same seed
    picks the same starting centres as scikit-learn did before this batched
    version replaced it. Row 0 holds the first centre's draw in column 0; extra
    columns repeat column 0 (a repeated candidate never wins the argmin over
    the original), rows >= K are unused.
    """
    own = local_trials(k)
    stream = np.random.RandomState(int(seed))
    out = np.zeros((n_init, kmax, trials), dtype=np.float64)
    for r in range(n_init):
        out[r, 0, :] = stream.random_sample()
        if k > 1:
            draws = stream.random_sample((k - 1) * own).reshape(k - 1, own)
            out[r, 1:k, :own] = draws
            out[r, 1:k, own:] = draws[:, :1]
    return torch.from_numpy(out)


def kmeans_plus_plus_batch(x: torch.Tensor, ks: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Greedy k-means++ centres for P problems at once (sklearn's ``_kmeans_plusplus`` rule).

    Parameters
    ----------
    x : (P, N, d) points; ks : (P,) centres wanted per problem;
    uniforms : (P, kmax, trials) float64 in [0, 1): the first draws the first
        centre, each later row draws ``trials`` candidates by D^2 weighting.

    Returns
    -------
    centres : (P, kmax, d); rows >= K of a problem are zero.
    """
    p, n, d = x.shape
    kmax, trials = uniforms.shape[1], uniforms.shape[2]
    rows = torch.arange(p, device=x.device)
    u = uniforms.to(x.device)
    centres = torch.zeros(p, kmax, d, dtype=x.dtype, device=x.device)
    first = (u[:, 0, 0] * n).long().clamp_(max=n - 1)
    centres[:, 0] = x[rows, first]
    closest = ((x - centres[:, :1]) ** 2).sum(-1).double()  # (P, N)
    for c in range(1, kmax):
        live = ks > c
        if not bool(live.any()):
            break
        cumulative = closest.cumsum(-1)  # (P, N)
        targets = u[:, c, :] * cumulative[:, -1:]
        cand = torch.searchsorted(cumulative, targets.contiguous()).clamp_(max=n - 1)  # (P, trials)
        cand_points = x[rows[:, None], cand]  # (P, trials, d)
        d2 = torch.cdist(cand_points.double(), x.double()) ** 2  # (P, trials, N)
        new_closest = torch.minimum(closest[:, None, :], d2)
        best = new_closest.sum(-1).argmin(-1)  # (P,)
        chosen = cand[rows, best]
        centres[live, c] = x[rows, chosen][live]
        closest = torch.where(live[:, None], new_closest[rows, best], closest)
    return centres


def _assign(x: torch.Tensor, centres: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest valid centre for every point: labels (P, N) and squared distances (P, N)."""
    d2 = (x * x).sum(-1, keepdim=True) - 2 * torch.bmm(x, centres.transpose(1, 2)) + (centres * centres).sum(-1)[:, None, :]
    d2 = d2.masked_fill(~valid[:, None, :], float("inf"))
    best, labels = d2.min(-1)
    return labels, best.clamp_min(0)


def lloyd_batch(x: torch.Tensor, centres: torch.Tensor, ks: torch.Tensor, *, dims: torch.Tensor | None = None,
                max_iter: int = KMEANS_MAX_ITER, tol: float = KMEANS_TOL
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lloyd iterations for P problems from the given centres.

    A problem stops (and is frozen) when its squared centre shift is at most
    ``tol`` times the mean per-feature variance of its points (sklearn's rule;
    ``dims`` gives each problem's columns before zero padding);
    freezing per problem keeps each result independent of the others in the
    batch. A cluster left empty keeps its centre.

    Returns
    -------
    labels : (P, N) int64; centres : (P, kmax, d); inertia : (P,) float64
    """
    p, n, d = x.shape
    kmax = centres.shape[1]
    valid = torch.arange(kmax, device=x.device)[None, :] < ks[:, None]
    used = torch.full((p,), d, device=x.device) if dims is None else dims.to(x.device)
    threshold = tol * x.var(dim=1, unbiased=False).sum(-1) / used  # (P,): zero padding adds no variance
    centres = centres.clone()
    active = torch.ones(p, dtype=torch.bool, device=x.device)
    for _ in range(max_iter):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        everyone = idx.numel() == p
        xa, ca, va = (x, centres, valid) if everyone else (x[idx], centres[idx], valid[idx])
        labels, _ = _assign(xa, ca, va)
        onehot = torch.zeros(labels.shape[0], n, kmax, dtype=x.dtype, device=x.device)
        onehot.scatter_(2, labels[..., None], 1.0)  # (A, N, kmax)
        counts = onehot.sum(1)  # (A, kmax)
        sums = torch.bmm(onehot.transpose(1, 2), xa)
        new = torch.where(counts[..., None] > 0, sums / counts.clamp_min(1)[..., None], ca)
        shift = ((new - ca) ** 2).sum((1, 2))
        if everyone:
            centres = new
            active = shift > threshold
        else:
            centres[idx] = new
            active[idx] = shift > threshold[idx]
    labels, d2 = _assign(x, centres, valid)
    return labels, centres, d2.double().sum(-1)


def kmeans_batch(problems: KMeansProblems, *, n_init: int = N_INIT) -> tuple[torch.Tensor, torch.Tensor]:
    """Best-of-``n_init`` k-means (k-means++ then Lloyd) for every problem at once.

    Returns
    -------
    labels : (P, N) int64 on the points' device; centres : (P, kmax, d).
    """
    x, ks = problems.points, problems.ks.to(problems.points.device)
    p, n, d = x.shape
    kmax = int(ks.max())
    trials = local_trials(kmax)
    uniforms = torch.stack([problem_uniforms(s, int(k), n_init, kmax, trials)
                            for s, k in zip(problems.seeds, ks.tolist())])  # (P, n_init, kmax, trials)
    # Restarts become more problems: (P * n_init, ...), restart-major within a problem.
    xr = x.repeat_interleave(n_init, dim=0)
    kr = ks.repeat_interleave(n_init)
    init = kmeans_plus_plus_batch(xr, kr, uniforms.reshape(p * n_init, kmax, trials))
    dims = None if problems.dims is None else problems.dims.to(x.device).repeat_interleave(n_init)
    labels, centres, inertia = lloyd_batch(xr, init, kr, dims=dims)
    # sklearn's rule: a later restart replaces the best so far only if its inertia
    # is lower AND its partition differs (the same partition reached twice can
    # differ in inertia by round-off only, and must not swap the label order).
    labels, centres, inertia = (t.reshape(p, n_init, *t.shape[1:]) for t in (labels, centres, inertia))
    canonical = first_occurrence_labels(labels.reshape(p * n_init, n)).reshape(p, n_init, n)
    rows = torch.arange(p, device=x.device)
    best = torch.zeros(p, dtype=torch.long, device=x.device)
    for r in range(1, n_init):
        better = (inertia[:, r] < inertia[rows, best]) & (canonical[:, r] != canonical[rows, best]).any(-1)
        best = torch.where(better, torch.full_like(best, r), best)
    return labels[rows, best], centres[rows, best]


def first_occurrence_labels(labels: torch.Tensor) -> torch.Tensor:
    """(P, N) labels renumbered 0, 1, ... in order of first appearance along each row."""
    p, n = labels.shape
    kmax = int(labels.max()) + 1 if labels.numel() else 1
    positions = torch.arange(n, device=labels.device).expand(p, n)
    first = torch.full((p, kmax), n, dtype=torch.long, device=labels.device)
    first.scatter_reduce_(1, labels, positions, reduce="amin")
    rank = first.argsort(dim=1).argsort(dim=1)  # label -> its order of first appearance
    return rank.gather(1, labels)


def clustering_from_labels(embedding: np.ndarray, labels: np.ndarray, k: int) -> Clustering:
    """A :class:`Clustering` (first-occurrence numbering, empties dropped, soft assignments) from k-means labels."""
    x = np.ascontiguousarray(embedding, dtype=np.float32)
    labels = labels.astype(np.int64)
    onehot = np.zeros((x.shape[0], k), dtype=np.float64)
    onehot[np.arange(x.shape[0]), labels] = 1
    counts = onehot.sum(0)
    centroids = ((onehot.T @ x) / np.maximum(counts, 1)[:, None]).astype(np.float32)
    labels, centroids = _relabel_first_occurrence(labels, centroids)
    return Clustering(labels=labels, centroids=centroids, probabilities=soft_assignments(x, centroids, labels))
