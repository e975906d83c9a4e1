"""Affinity graph and normalised spectrum."""

import numpy as np
import pytest
import torch

from clasp_engine import graph
from clasp_engine.graph import affinity, leading_eigenpairs


def _blocks(k: int, n_per: int = 40, d: int = 32, noise: float = 0.2, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    centres = np.eye(d)[:k] * 3.0
    x = np.repeat(centres, n_per, axis=0) + noise * rng.standard_normal((k * n_per, d))
    return torch.tensor(x, dtype=torch.float32)


def test_affinity_is_clipped_cosine():
    f = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.1], [3.0, 3.0]])
    w = affinity(f)
    assert w.shape == (4, 4) and w.dtype == torch.float32
    assert torch.allclose(w, w.T)
    assert torch.allclose(torch.diagonal(w), torch.ones(4))
    assert w.min() >= 0  # the (1,0)/(-1,0.1) cosine is negative: clipped
    assert w[0, 2] == 0
    assert w[0, 3] == pytest.approx(1 / np.sqrt(2), abs=1e-6)


def test_affinity_accepts_grid_and_rejects_bad_shapes():
    assert affinity(torch.rand(3, 4, 5)).shape == (12, 12)
    with pytest.raises(ValueError):
        affinity(torch.rand(5))


def test_leading_eigenpairs_descending_with_lambda1_one():
    s = leading_eigenpairs(affinity(_blocks(3)), 10)
    assert s.eigenvalues.shape == (10,) and s.eigenvectors.shape == (120, 10)
    assert np.all(np.diff(s.eigenvalues) <= 1e-6)
    assert s.eigenvalues[0] == pytest.approx(1.0, abs=1e-4)
    # three nearly disconnected blocks: three eigenvalues near 1, then a big drop
    assert s.eigenvalues[2] > 0.9 and s.eigenvalues[3] < 0.5


@pytest.mark.parametrize("solver", ["dense", "lanczos", "lobpcg"])
def test_solvers_agree(solver):
    w = affinity(_blocks(4, n_per=60))
    ref = leading_eigenpairs(w, 8, solver="dense")
    s = leading_eigenpairs(w, 8, solver=solver)
    np.testing.assert_allclose(s.eigenvalues, ref.eigenvalues, atol=2e-3)
    # same invariant subspace for the well separated leading 4
    proj = ref.eigenvectors[:, :4].T @ s.eigenvectors[:, :4]
    assert torch.linalg.svdvals(proj).min() > 0.99


def test_auto_solver_by_size(monkeypatch):
    small = leading_eigenpairs(affinity(torch.rand(50, 8)), 5)
    assert small.solver == "dense-scipy"
    monkeypatch.setattr(graph, "DENSE_MAX_CPU", 40)
    big = leading_eigenpairs(affinity(torch.rand(50, 8)), 5)
    assert big.solver == "lanczos"


def test_deterministic_and_sign_fixed():
    w = affinity(_blocks(3, n_per=200))  # 600 nodes: Lanczos
    a, b = leading_eigenpairs(w, 6, seed=0), leading_eigenpairs(w, 6, seed=0)
    assert a.solver == "lanczos"
    assert torch.equal(a.eigenvectors, b.eigenvectors)


def test_m_clipped_and_validation():
    w = affinity(torch.rand(5, 3))
    assert leading_eigenpairs(w, 20).eigenvalues.shape == (5,)
    with pytest.raises(ValueError):
        leading_eigenpairs(w, 0)
    with pytest.raises(ValueError):
        leading_eigenpairs(w, 3, solver="magic")
    with pytest.raises(ValueError):
        leading_eigenpairs(torch.rand(3, 4), 2)
