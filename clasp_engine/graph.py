"""Affinity graph over patches and its normalised spectrum.

Convention (used everywhere in the engine): we work with the symmetric
normalised *affinity* ``A = D^-1/2 W D^-1/2`` and its LARGEST eigenvalues
``λ1 = 1 ≥ λ2 ≥ … ≥ λm``. This is the same spectrum as the normalised
Laplacian ``L = I − A`` read from the other end (``μi = 1 − λi`` are L's
smallest eigenvalues, same eigenvectors), so eigengaps are identical either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from threadpoolctl import threadpool_limits

# Solver crossover on CPU, measured on this project's 2-core machine (float32,
# 20 leading eigenpairs of a dense normalised affinity, median of 3, ms; other
# work was running so read as rough):
#
#     N      torch.eigh  numpy.eigh  scipy.eigh(subset,evr)  eigsh (Lanczos)
#     200        1.7         3.1          1.2                   1.4
#     400       12.1        11.0          5.9                   5.0
#     600       12.3        25.8         14.4                   6.8
#     800       22.2        59.8         13.5                   7.9
#     1200      63.3       171.0         39.6                  36.3
#     2400     455.7      1259.0        330.9                 376.5 (tol 1e-4; ~190 quiet)
#
# Dense (scipy, only the wanted subset) wins or ties below ~400 patches and is
# exact and deterministic; Lanczos wins from ~400 on. torch.lobpcg was 2-20x
# slower than eigsh on CPU at every size and is used only on CUDA for huge graphs.
#
# NumPy/SciPy calls here run under threadpool_limits(1): once torch has used
# its OpenMP pool, its spinning threads starve OpenBLAS's, and a 1200x1200
# matvec went from 0.66 ms to 16 ms (eigsh on N=2400: 372 ms with 2 BLAS
# threads after torch, 109 ms with 1).
DENSE_MAX_CPU = 400
# On CUDA a dense eigh of a few thousand nodes takes milliseconds; beyond this
# the O(N^3) dense solve loses to LOBPCG's O(N^2 m) iterations.
DENSE_MAX_CUDA = 8192

SOLVERS = ("auto", "dense", "lanczos", "lobpcg")


@dataclass(frozen=True)
class Spectrum:
    """Leading eigenpairs of ``D^-1/2 W D^-1/2`` (largest first)."""

    eigenvalues: np.ndarray  # (m,) float64, descending
    eigenvectors: torch.Tensor  # (N, m) on the affinity's device, columns match eigenvalues
    solver: str  # "dense-scipy" | "dense-torch" | "lanczos" | "lobpcg"


def affinity(features: torch.Tensor) -> torch.Tensor:
    """Cosine affinity between patch features, negatives clipped to 0.

    Parameters
    ----------
    features : tensor (rows, cols, D) or (N, D)
        Patch features; computed on their device, in float32.

    Returns
    -------
    W : tensor (N, N), float32, symmetric, entries in [0, 1], diagonal 1.
    """
    if not isinstance(features, torch.Tensor):
        features = torch.as_tensor(np.asarray(features))
    if features.ndim == 3:
        features = features.reshape(-1, features.shape[-1])
    if features.ndim != 2 or features.shape[0] < 1:
        raise ValueError(f"features must be (N, D) or (rows, cols, D); got shape {tuple(features.shape)}")
    x = torch.nn.functional.normalize(features.float(), dim=1, eps=1e-12)
    w = x @ x.T
    w.clamp_(min=0.0)
    return w


def leading_eigenpairs(W: torch.Tensor, m: int, *, solver: str = "auto", seed: int = 0) -> Spectrum:
    """The ``m`` largest eigenpairs of the symmetric normalised affinity.

    Parameters
    ----------
    W : tensor (N, N)
        Non-negative symmetric affinity (see :func:`affinity`).
    m : int
        Number of eigenpairs; clipped to N.
    solver : {"auto", "dense", "lanczos", "lobpcg"}
        "auto" picks by size and device (thresholds measured, see module constants).
    seed : int
        Seeds the iterative solvers' start vectors, so results are reproducible.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r}: choose one of {', '.join(SOLVERS)}")
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"W must be square; got shape {tuple(W.shape)}")
    n = W.shape[0]
    if m < 1:
        raise ValueError(f"m={m}: need at least one eigenpair")
    m = min(m, n)
    device = W.device
    inv_sqrt = W.sum(dim=1).clamp_min(1e-12).rsqrt()
    # One new N x N array, scaled in place (W stays untouched for the caller). No
    # explicit symmetrisation: W's float32 round-off asymmetry (~1e-7) is far
    # below the solver tolerance, LAPACK's evr reads one triangle only, and
    # (A + A.T) / 2 cost two more N x N passes.
    A = W * inv_sqrt[:, None]
    A.mul_(inv_sqrt[None, :])

    if solver == "auto":
        if device.type == "cuda":
            solver = "dense" if n <= DENSE_MAX_CUDA else "lobpcg"
        else:
            solver = "dense" if n <= DENSE_MAX_CPU else "lanczos"
    # ARPACK needs m < N; tiny graphs go dense.
    if solver == "lanczos" and m >= n - 1:
        solver = "dense"
    if solver == "lobpcg" and n < 3 * m:
        solver = "dense"

    if solver == "dense":
        if device.type == "cuda":
            vals, vecs = torch.linalg.eigh(A)
            vals, vecs = vals.flip(0)[:m], vecs.flip(1)[:, :m]
            name = "dense-torch"
        else:
            import scipy.linalg

            a = A.detach().cpu().numpy()
            # Only the wanted subset: cheaper than a full decomposition.
            with threadpool_limits(limits=1):
                vals, vecs = scipy.linalg.eigh(a, subset_by_index=[n - m, n - 1], driver="evr")
            vals, vecs = vals[::-1], vecs[:, ::-1]
            name = "dense-scipy"
    elif solver == "lanczos":
        import scipy.sparse.linalg

        a = A.detach().cpu().numpy()
        v0 = np.random.default_rng(seed).standard_normal(n).astype(a.dtype)
        # tol 1e-4 is far below the eigengaps and silhouettes that use these values
        # (differences of 1e-2 and more) and halves the iterations vs machine precision.
        with threadpool_limits(limits=1):
            vals, vecs = scipy.sparse.linalg.eigsh(a, k=m, which="LA", v0=v0, tol=1e-4)
        order = np.argsort(-vals, kind="stable")
        vals, vecs = vals[order], vecs[:, order]
        name = "lanczos"
    else:  # lobpcg
        gen = torch.Generator(device="cpu").manual_seed(seed)
        x0 = torch.randn(n, m, generator=gen, dtype=A.dtype).to(device)
        vals, vecs = torch.lobpcg(A, k=m, X=x0, largest=True, tol=1e-4)
        order = torch.argsort(vals, descending=True)
        vals, vecs = vals[order], vecs[:, order]
        name = "lobpcg"

    if isinstance(vals, torch.Tensor):
        vals = vals.detach().cpu().numpy()
    if not isinstance(vecs, torch.Tensor):
        vecs = torch.from_numpy(np.ascontiguousarray(vecs)).to(device)
    vecs = _fix_signs(vecs.float())
    return Spectrum(eigenvalues=np.asarray(vals, dtype=np.float64).copy(), eigenvectors=vecs, solver=name)


def _fix_signs(vecs: torch.Tensor) -> torch.Tensor:
    # Eigenvectors are defined up to sign and different solvers pick differently;
    # making each column's largest-magnitude entry positive makes the embedding
    # (and anything printed from it) identical across solvers and runs.
    idx = vecs.abs().argmax(dim=0)
    signs = torch.sign(vecs[idx, torch.arange(vecs.shape[1], device=vecs.device)])
    signs[signs == 0] = 1
    return vecs * signs[None, :]
