"""Eigengap elbow, silhouette search and the chosen-K rule."""

import numpy as np
import pytest
import torch

from clasp_engine.graph import affinity, leading_eigenpairs
from clasp_engine.select_k import (candidate_window, eigengaps, elbow_k, select_k, silhouette_score_torch,
                                   silhouette_search)


def test_eigengaps():
    np.testing.assert_allclose(eigengaps([1.0, 0.9, 0.5, 0.45]), [0.1, 0.4, 0.05])
    with pytest.raises(ValueError):
        eigengaps([1.0])


def test_elbow_hand_computed_knee():
    # scaled: x = [0, .25, .5, .75, 1], y = (g - .02) / .38 = [1, .2105, .1053, .0526, 0]
    # chord x + y = 1, distance |x + y - 1| / sqrt(2)
    k, d = elbow_k([0.40, 0.10, 0.06, 0.04, 0.02])
    np.testing.assert_allclose(d, [0, 0.38152, 0.27910, 0.13955, 0], atol=1e-4)
    assert k == 2  # the farthest point is gap δ2 = λ2 − λ3 -> K = 2


def test_elbow_hand_computed_spike():
    # y = (g - .02) / .28 = [.1071, .0714, 1, .0357, 0]; chord y = .1071 (1 - x)
    # δ3 at x = .5: |-.1071 * .5 - (1 - .1071)| / hypot(1, .1071) = .9410
    k, d = elbow_k([0.05, 0.04, 0.30, 0.03, 0.02])
    assert k == 3
    assert d[2] == pytest.approx(0.94099, abs=1e-4)
    assert d[0] == 0 and d[-1] == pytest.approx(0, abs=1e-12)


def test_elbow_flat_and_short_curves():
    k, d = elbow_k([0.1, 0.1, 0.1, 0.1])
    assert k == 1 and np.all(d == 0)
    assert elbow_k([0.1, 0.3])[0] == 2


def test_candidate_window_clipping():
    assert candidate_window(5, 2, 2, 15) == [3, 4, 5, 6, 7]
    assert candidate_window(1, 2, 2, 15) == [2, 3]
    assert candidate_window(19, 2, 2, 15) == [13, 14, 15]
    assert candidate_window(4, 0, 2, 15) == [4]


def test_silhouette_matches_sklearn():
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 5)).astype(np.float32)
    labels = rng.integers(0, 4, 300)
    labels[0] = 3
    labels[1:3] = 5  # a tiny cluster; label 4 absent (empty)
    labels[3] = 6  # a singleton scores 0
    ours = silhouette_score_torch(torch.from_numpy(x), torch.from_numpy(labels))
    assert ours == pytest.approx(silhouette_score(x, labels), abs=1e-5)


def test_silhouette_subsample_is_deterministic_and_close():
    rng = np.random.default_rng(1)
    x = torch.tensor(np.vstack([rng.normal(0, 1, (600, 3)), rng.normal(4, 1, (600, 3))]), dtype=torch.float32)
    labels = torch.tensor([0] * 600 + [1] * 600)
    full = silhouette_score_torch(x, labels)
    a = silhouette_score_torch(x, labels, max_rows=400, seed=3)
    assert a == silhouette_score_torch(x, labels, max_rows=400, seed=3)
    assert a == pytest.approx(full, abs=0.03)


def synthetic_groups(k: int, n: int = 600, d: int = 64, noise: float = 0.5, seed: int = 0):
    """n patch features in k well separated groups (random centres, Gaussian noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d))
    labels = rng.integers(0, k, n)
    labels[:k] = np.arange(k)
    return torch.tensor(centres[labels] + noise * rng.standard_normal((n, d)), dtype=torch.float32), labels


@pytest.mark.parametrize("k", range(2, 9))
def test_k_recovered_on_separated_groups(k):
    from sklearn.metrics import adjusted_rand_score

    for seed in range(2):
        feats, truth = synthetic_groups(k, seed=seed)
        s = leading_eigenpairs(affinity(feats), 20)
        sel = select_k(s.eigenvalues, s.eigenvectors, k_min=2, k_max=15, window=2)
        assert sel.k == k, (seed, sel.elbow_k, sel.silhouette)
        assert sel.rule == "silhouette"
        assert adjusted_rand_score(truth, sel.clustering.labels) == pytest.approx(1.0)


def test_fixed_k_skips_search():
    feats, _ = synthetic_groups(3)
    s = leading_eigenpairs(affinity(feats), 20)
    sel = select_k(s.eigenvalues, s.eigenvectors, k=5)
    assert (sel.k, sel.rule, sel.silhouette, sel.clustering) == (5, "fixed", {}, None)
    assert sel.elbow_k == 3 and len(sel.eigengaps) == 19


def test_silhouette_search_keeps_clusterings_and_validates():
    feats, _ = synthetic_groups(3)
    s = leading_eigenpairs(affinity(feats), 20)
    kept = {}
    scores = silhouette_search(s.eigenvectors, [2, 3, 4], 0, eigenvalues=s.eigenvalues, clusterings=kept)
    assert set(scores) == set(kept) == {2, 3, 4}
    assert max(scores, key=scores.get) == 3
    with pytest.raises(ValueError):
        silhouette_search(s.eigenvectors, [1, 2])
    with pytest.raises(ValueError):
        silhouette_search(s.eigenvectors, [])


def test_tiny_graph_is_single():
    s = leading_eigenpairs(affinity(torch.rand(2, 3)), 20)
    sel = select_k(s.eigenvalues, s.eigenvectors)
    assert sel.k == 1 and sel.rule == "single"


def test_batched_silhouettes_equal_sklearn():
    from sklearn.metrics import silhouette_score

    from clasp_engine.select_k import silhouette_scores_batch

    rng = np.random.default_rng(0)
    space = rng.standard_normal((3, 150, 5)).astype(np.float32)
    labels = np.stack([np.stack([rng.integers(0, k, 150) for k in (2, 3, 6)]) for _ in range(3)])
    got = silhouette_scores_batch(torch.from_numpy(space), torch.from_numpy(labels), 6)
    for b in range(3):
        for c in range(3):
            assert got[b, c] == pytest.approx(silhouette_score(space[b], labels[b, c]), abs=1e-5)


def test_select_k_batch_equals_one_by_one():
    from clasp_engine.select_k import select_k_batch

    spectra = [leading_eigenpairs(affinity(torch.as_tensor(synthetic_groups(k, seed=s)[0])), 20)
               for k, s in ((3, 0), (4, 1), (5, 2))]
    together = select_k_batch([s.eigenvalues for s in spectra], [s.eigenvectors for s in spectra], seeds=[0, 0, 0])
    for s, t in zip(spectra, together):
        alone = select_k_batch([s.eigenvalues], [s.eigenvectors], seeds=[0])[0]
        assert (alone.k, alone.rule, alone.silhouette) == (t.k, t.rule, t.silhouette)
        assert np.array_equal(alone.clustering.labels, t.clustering.labels)
