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


# ---------------------------------------------------------------- batched


def _real_graph(max_side: int = 96) -> torch.Tensor:
    """Affinity of the classic features of a real photo (scikit-learn's bundled sample)."""
    from sklearn.datasets import load_sample_image

    from clasp_engine.backbones.classic import ClassicBackbone
    from clasp_engine.images import resize_to_grid

    work = resize_to_grid(load_sample_image("china.jpg"), max_side, 8)
    return affinity(ClassicBackbone().patch_features([work])[0])


def _dense_reference(W: torch.Tensor, m: int) -> tuple[np.ndarray, np.ndarray]:
    A = graph.normalised_affinity(W.double()).numpy()
    vals, vecs = np.linalg.eigh(A)
    return vals[::-1][:m], vecs[:, ::-1][:, :m]


def test_affinity_batch_is_one_product_per_image():
    f = torch.randn(3, 4, 5, 6)
    W = graph.affinity_batch(f)
    assert W.shape == (3, 20, 20)
    for b in range(3):
        torch.testing.assert_close(W[b], affinity(f[b]))
    with pytest.raises(ValueError):
        graph.affinity_batch(torch.rand(4, 5))


@pytest.mark.parametrize("solver", ["auto", "dense", "lanczos", "subspace", "lobpcg"])
@pytest.mark.parametrize("kind", ["random", "real"])
def test_batched_eigenpairs_match_dense_numpy(solver, kind):
    if kind == "random":
        W = graph.affinity_batch(torch.randn(3, 150, 16, generator=torch.Generator().manual_seed(1)))
    else:
        one = _real_graph()
        W = torch.stack([one, one.flip(0).flip(1)])  # the same photo, patches in reverse order
    m = 10
    spectra = graph.leading_eigenpairs_batch(W, m, solver=solver, seed=0)
    assert len(spectra) == W.shape[0]
    for b, s in enumerate(spectra):
        ref_vals, ref_vecs = _dense_reference(W[b], m)
        np.testing.assert_allclose(s.eigenvalues, ref_vals, atol=2e-3)
        # each pair is an eigenpair of A to the solver's tolerance
        A = graph.normalised_affinity(W[b].double())
        v = s.eigenvectors.double()
        residual = torch.linalg.vector_norm(A @ v - v * torch.from_numpy(s.eigenvalues.copy())[None, :], dim=0)
        assert float(residual.max()) < 5e-3
        # the well separated leading directions span the reference's
        lead = 3
        proj = torch.from_numpy(ref_vecs[:, :lead].copy()).T @ v[:, :lead]
        assert torch.linalg.svdvals(proj).min() > 0.99


def test_subspace_is_batch_invariant_and_seeded():
    W = graph.affinity_batch(torch.randn(4, 120, 8, generator=torch.Generator().manual_seed(2)))
    together = graph.leading_eigenpairs_batch(W, 6, solver="subspace", seed=3)
    for b in range(4):
        alone = graph.leading_eigenpairs_batch(W[b:b + 1], 6, solver="subspace", seed=3)[0]
        np.testing.assert_allclose(alone.eigenvalues, together[b].eigenvalues, atol=1e-6)
        torch.testing.assert_close(alone.eigenvectors, together[b].eigenvectors, atol=1e-5, rtol=0)
    assert together[0].solver == "subspace"


def test_batched_validation():
    with pytest.raises(ValueError):
        graph.leading_eigenpairs_batch(torch.rand(3, 4), 2)
    with pytest.raises(ValueError):
        graph.leading_eigenpairs_batch(torch.rand(1, 4, 4), 0)
    with pytest.raises(ValueError):
        graph.leading_eigenpairs_batch(torch.rand(1, 4, 4), 2, solver="magic")
