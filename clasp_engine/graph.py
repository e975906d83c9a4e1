"""Affinity graph over patches and its normalised spectrum.

Convention (used everywhere in the engine): we work with the symmetric
normalised *affinity* ``A = D^-1/2 W D^-1/2`` and its LARGEST eigenvalues
``λ1 = 1 ≥ λ2 ≥ … ≥ λm``. This is the same spectrum as the normalised
Laplacian ``L = I − A`` read from the other end (``μi = 1 − λi`` are L's
smallest eigenvalues, same eigenvectors), so eigengaps are identical either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
#
# Batched candidates (issue 14), real graphs (classic features of COCO-Stuff
# photos), 20 pairs, ms per graph, this 2-core machine under heavy load from
# other work (load 10-20: read the ratios, not the times):
#
#     N      scipy dense  Lanczos  torch.eigh (batched)  subspace (batched)  torch.lobpcg
#     320       100         156         921                  212              3466
#     616       183         100        2020                  133               720
#     2520     1695         263       62044                 1097              3238
#
# So on CPU the SciPy solvers stay (dense up to DENSE_MAX_CPU, Lanczos above),
# one image at a time; all reached |dλ| <= 1.4e-6 against float64 numpy.eigh.
# On CUDA (never run here: no GPU was lent) the batched solvers are the only
# ones that keep the device busy: torch's batched eigh leaves cuSOLVER's batched
# routine above N = 32 and is O(N^3) per graph, while subspace iteration is a
# few dozen batched (N x N)(N x p) products. Dense stays for tiny graphs only;
# benchmarks/bench_batched.py --solvers (run by gpu_check.sh) times both on
# the GPU so this threshold can be set from a measurement.
DENSE_MAX_CUDA = 256

SOLVERS = ("auto", "dense", "lanczos", "lobpcg", "subspace")
# Block subspace iteration (batched): residual tolerance, Rayleigh-Ritz every few
# steps, extra block columns beyond m (they speed convergence of the m-th pair).
SUBSPACE_TOL = 1e-3
SUBSPACE_MAX_ITER = 300
SUBSPACE_CHECK_EVERY = 5
SUBSPACE_OVERSAMPLE = 10


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
    return affinity_batch(features[None])[0]


def affinity_batch(features: torch.Tensor) -> torch.Tensor:
    """Cosine affinities of a batch of images with the same patch count, as one batched product.

    Parameters
    ----------
    features : tensor (B, N, D) or (B, rows, cols, D)
        Patch features of B images; computed on their device, in float32.

    Returns
    -------
    W : tensor (B, N, N), float32; each W[b] as :func:`affinity` gives for image b.
    """
    if features.ndim == 4:
        features = features.reshape(features.shape[0], -1, features.shape[-1])
    if features.ndim != 3 or features.shape[1] < 1:
        raise ValueError(f"features must be (B, N, D) or (B, rows, cols, D); got shape {tuple(features.shape)}")
    x = torch.nn.functional.normalize(features.float(), dim=-1, eps=1e-12)
    w = torch.bmm(x, x.transpose(1, 2))
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
    solver : {"auto", "dense", "lanczos", "lobpcg", "subspace"}
        "auto" picks by size and device (thresholds measured, see module constants).
    seed : int
        Seeds the iterative solvers' start vectors, so results are reproducible.
    """
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"W must be square; got shape {tuple(W.shape)}")
    return leading_eigenpairs_batch(W[None], m, solver=solver, seed=seed)[0]


def normalised_affinity(W: torch.Tensor) -> torch.Tensor:
    """``D^-1/2 W D^-1/2`` for one (N, N) or a batch (B, N, N) of affinities (W is left untouched)."""
    inv_sqrt = W.sum(dim=-1).clamp_min(1e-12).rsqrt()
    # One new array, scaled in place. No explicit symmetrisation: W's float32
    # round-off asymmetry (~1e-7) is far below the solver tolerance, LAPACK's evr
    # reads one triangle only, and (A + A.T) / 2 cost two more N x N passes.
    A = W * inv_sqrt[..., :, None]
    A.mul_(inv_sqrt[..., None, :])
    return A


def choose_solver(solver: str, device: torch.device, n: int, m: int) -> str:
    """The solver "auto" (or an impossible explicit choice) resolves to, for N nodes and m pairs."""
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r}: choose one of {', '.join(SOLVERS)}")
    if solver == "auto":
        if device.type == "cuda":
            solver = "dense" if n <= DENSE_MAX_CUDA else "subspace"
        else:
            solver = "dense" if n <= DENSE_MAX_CPU else "lanczos"
    # ARPACK needs m < N; tiny graphs go dense, and so do graphs too small for a block.
    if solver == "lanczos" and m >= n - 1:
        solver = "dense"
    if solver in ("lobpcg", "subspace") and n < 3 * m:
        solver = "dense"
    return solver


def leading_eigenpairs_batch(W: torch.Tensor, m: int, *, solver: str = "auto", seed: int = 0) -> list[Spectrum]:
    """The ``m`` largest eigenpairs of each affinity in a batch (B, N, N).

    Dense on CUDA and "subspace" run the whole batch at once; the SciPy
    solvers (CPU) run image by image, where they measured faster (see the
    table above). Every image's result depends on that image and ``seed`` only,
    never on the rest of the batch.
    """
    if W.ndim != 3 or W.shape[1] != W.shape[2]:
        raise ValueError(f"W must be a batch of square matrices (B, N, N); got shape {tuple(W.shape)}")
    if m < 1:
        raise ValueError(f"m={m}: need at least one eigenpair")
    n = W.shape[1]
    m = min(m, n)
    device = W.device
    solver = choose_solver(solver, device, n, m)
    A = normalised_affinity(W)
    if solver == "dense" and device.type != "cpu":
        vals, vecs = torch.linalg.eigh(A)
        pairs = [(vals[b].flip(0)[:m], vecs[b].flip(1)[:, :m]) for b in range(A.shape[0])]
        name = "dense-torch"
    elif solver == "subspace":
        vals, vecs = subspace_iteration(A, m, seed=seed)
        pairs = [(vals[b], vecs[b]) for b in range(A.shape[0])]
        name = "subspace"
    else:
        pairs = [_solve_one(A[b], m, solver, seed) for b in range(A.shape[0])]
        name = {"dense": "dense-scipy"}.get(solver, solver)
    out = []
    for vals, vecs in pairs:
        if isinstance(vals, torch.Tensor):
            vals = vals.detach().cpu().numpy()
        if not isinstance(vecs, torch.Tensor):
            vecs = torch.from_numpy(np.ascontiguousarray(vecs)).to(device)
        out.append(Spectrum(eigenvalues=np.asarray(vals, dtype=np.float64).copy(),
                            eigenvectors=_fix_signs(vecs.float()), solver=name))
    return out


def _solve_one(A: torch.Tensor, m: int, solver: str, seed: int) -> tuple[Any, Any]:
    """One image's eigenpairs through SciPy (dense subset or Lanczos) or torch.lobpcg, largest first."""
    n = A.shape[0]
    if solver == "dense":
        import scipy.linalg

        a = A.detach().cpu().numpy()
        # Only the wanted subset: cheaper than a full decomposition.
        with threadpool_limits(limits=1):
            vals, vecs = scipy.linalg.eigh(a, subset_by_index=[n - m, n - 1], driver="evr")
        return vals[::-1], vecs[:, ::-1]
    if solver == "lanczos":
        import scipy.sparse.linalg

        a = A.detach().cpu().numpy()
        v0 = np.random.default_rng(seed).standard_normal(n).astype(a.dtype)
        # tol 1e-4 is far below the eigengaps and silhouettes that use these values
        # (differences of 1e-2 and more) and halves the iterations vs machine precision.
        with threadpool_limits(limits=1):
            vals, vecs = scipy.sparse.linalg.eigsh(a, k=m, which="LA", v0=v0, tol=1e-4)
        order = np.argsort(-vals, kind="stable")
        return vals[order], vecs[:, order]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x0 = torch.randn(n, m, generator=gen, dtype=A.dtype).to(A.device)
    vals, vecs = torch.lobpcg(A, k=m, X=x0, largest=True, tol=1e-4)
    order = torch.argsort(vals, descending=True)
    return vals[order], vecs[:, order]


def subspace_iteration(A: torch.Tensor, m: int, *, seed: int = 0, tol: float = SUBSPACE_TOL,
                       max_iter: int = SUBSPACE_MAX_ITER) -> tuple[torch.Tensor, torch.Tensor]:
    """Leading eigenpairs of a batch of symmetric matrices by block subspace iteration.

    Each step multiplies an orthonormal block (N, p), p = m + oversampling, by
    A (one batched matmul for the whole batch) and re-orthonormalises it (batched
    QR). Every few steps a Rayleigh-Ritz projection gives the current pairs; an
    image is done, and frozen, once all m residuals ``||A v - λ v||`` are below
    ``tol``. Freezing per image keeps every image's result independent of the
    batch it came in. Start block: seeded Gaussian, the same for every image.

    Returns
    -------
    eigenvalues : (B, m) descending; eigenvectors : (B, N, m), unit columns.
    """
    batch, n, _ = A.shape
    p = min(n, m + max(SUBSPACE_OVERSAMPLE, m // 2))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    start = torch.randn(n, p, generator=gen, dtype=torch.float64).to(A.dtype)
    Q = torch.linalg.qr(start.to(A.device).expand(batch, n, p)).Q
    vals_out = torch.zeros(batch, m, dtype=A.dtype, device=A.device)
    vecs_out = torch.zeros(batch, n, m, dtype=A.dtype, device=A.device)
    active = torch.arange(batch, device=A.device)
    A_active = A
    for step in range(1, max_iter + 1):
        Z = torch.bmm(A_active, Q)
        if step % SUBSPACE_CHECK_EVERY == 0 or step == max_iter:
            H = torch.bmm(Q.transpose(1, 2), Z)
            vals, S = torch.linalg.eigh((H + H.transpose(1, 2)) / 2)
            vals, S = vals.flip(-1)[:, :m], S.flip(-1)[:, :, :m]
            V, AV = torch.bmm(Q, S), torch.bmm(Z, S)
            residual = torch.linalg.vector_norm(AV - V * vals[:, None, :], dim=1).amax(dim=1)
            done = (residual <= tol) if step < max_iter else torch.ones_like(residual, dtype=torch.bool)
            if done.any():
                vals_out[active[done]] = vals[done]
                vecs_out[active[done]] = V[done]
                keep = ~done
                active, Z, A_active = active[keep], Z[keep], A_active[keep]
                if active.numel() == 0:
                    break
        Q = torch.linalg.qr(Z).Q
    return vals_out, vecs_out


def _fix_signs(vecs: torch.Tensor) -> torch.Tensor:
    # Eigenvectors are defined up to sign and different solvers pick differently;
    # making each column's largest-magnitude entry positive makes the embedding
    # (and anything printed from it) identical across solvers and runs.
    idx = vecs.abs().argmax(dim=0)
    signs = torch.sign(vecs[idx, torch.arange(vecs.shape[1], device=vecs.device)])
    signs[signs == 0] = 1
    return vecs * signs[None, :]
