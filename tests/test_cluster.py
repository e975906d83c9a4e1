"""K-means on the spectral embedding."""

import numpy as np
import pytest
import torch

from clasp_engine.cluster import spectral_kmeans, unit_row_eigenvectors


def test_spectral_embedding_rows_unit_norm():
    v = torch.randn(50, 6)
    e = unit_row_eigenvectors(v, 4)
    assert e.shape == (50, 4) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    with pytest.raises(ValueError):
        unit_row_eigenvectors(v, 7)


def test_labels_first_occurrence_no_empty_and_soft():
    rng = np.random.default_rng(0)
    centres = np.eye(3)
    truth = np.array([2, 2, 0, 1, 0, 1] * 20)
    x = centres[truth] + 0.05 * rng.standard_normal((120, 3))
    c = spectral_kmeans(x, 3, seed=0)
    assert c.labels[:4].tolist() == [0, 0, 1, 2]  # numbered in order of first appearance
    assert set(c.labels.tolist()) == {0, 1, 2}
    np.testing.assert_allclose(c.probabilities.sum(1), 1, atol=1e-5)
    assert c.probabilities.shape == (120, 3) and c.probabilities.dtype == np.float32
    assert np.all(c.probabilities.argmax(1) == c.labels)
    assert c.probabilities.max(1).mean() > 0.9


def test_deterministic_and_empty_clusters_dropped():
    x = np.repeat(np.eye(2), 10, axis=0)  # only 2 distinct points, ask for 4
    c = spectral_kmeans(x, 4, seed=0)
    assert c.k == 2 and sorted(set(c.labels.tolist())) == [0, 1]
    rng = np.random.default_rng(1)
    y = rng.standard_normal((200, 5))
    a, b = spectral_kmeans(y, 5, seed=7), spectral_kmeans(y, 5, seed=7)
    assert np.array_equal(a.labels, b.labels)


def test_k_one_and_validation():
    c = spectral_kmeans(np.ones((4, 2)), 1)
    assert c.k == 1 and np.all(c.labels == 0) and np.allclose(c.probabilities, 1)
    with pytest.raises(ValueError):
        spectral_kmeans(np.ones((4, 2)), 5)


# ---------------------------------------------------------------- batched k-means against scikit-learn

from clasp_engine.cluster import (KMeansProblems, kmeans_batch, kmeans_plus_plus_batch, lloyd_batch,  # noqa: E402
                                  local_trials, problem_uniforms, unit_row_eigenvectors_torch)


def _unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("k", [2, 4, 7])
def test_lloyd_matches_sklearn_from_the_same_init(k):
    from sklearn.cluster import KMeans

    problems = [_unit_rows(300, 8, s) for s in range(3)]
    x = torch.from_numpy(np.stack(problems))
    ks = torch.tensor([k, k, k])
    u = torch.stack([problem_uniforms(s, k, 1, k, local_trials(k))[0] for s in range(3)])
    init = kmeans_plus_plus_batch(x, ks, u)
    labels, centres, inertia = lloyd_batch(x, init, ks)
    for b in range(3):
        km = KMeans(n_clusters=k, init=init[b].numpy(), n_init=1).fit(problems[b])
        assert float(inertia[b]) == pytest.approx(km.inertia_, rel=1e-4)
        assert (labels[b].numpy() == km.labels_).mean() > 0.99


def test_kmeans_plus_plus_is_greedy_d2_sampling():
    # Two tight far-apart groups: the second centre must land in the other group.
    x = np.concatenate([np.zeros((50, 2)), np.full((50, 2), 10.0)]) + 0.01 * np.random.default_rng(0).standard_normal((100, 2))
    xt = torch.from_numpy(x.astype(np.float32))[None]
    for seed in range(5):
        c = kmeans_plus_plus_batch(xt, torch.tensor([2]), problem_uniforms(seed, 2, 1, 2, local_trials(2))[0][None])
        assert abs(float(c[0, 0].sum() - c[0, 1].sum())) > 15


def test_kmeans_batch_mixed_k_padded_equals_alone():
    x = [torch.from_numpy(_unit_rows(200, 6, s)) for s in range(4)]
    ks = [2, 3, 5, 6]
    padded = torch.stack([unit_row_eigenvectors_torch(x[i], ks[i], 6) for i in range(4)])
    together, _ = kmeans_batch(KMeansProblems(points=padded, ks=torch.tensor(ks), seeds=[0] * 4, dims=torch.tensor(ks)))
    for i in range(4):
        points = unit_row_eigenvectors_torch(x[i], ks[i])[None]
        alone, _ = kmeans_batch(KMeansProblems(points=points, ks=torch.tensor([ks[i]]), seeds=[0]))
        assert torch.equal(alone[0], together[i])
        assert int(together[i].max()) < ks[i]


def test_kmeans_batch_best_restart_close_to_sklearn_inertia():
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(3)
    centres = rng.standard_normal((5, 6)) * 3
    x = (centres[rng.integers(0, 5, 400)] + rng.standard_normal((400, 6))).astype(np.float32)
    labels, cen = kmeans_batch(KMeansProblems(points=torch.from_numpy(x)[None], ks=torch.tensor([5]), seeds=[0]))
    lab = labels[0].numpy()
    ours = sum(((x[lab == j] - x[lab == j].mean(0)) ** 2).sum() for j in range(5))
    ref = KMeans(n_clusters=5, n_init=3, random_state=0).fit(x).inertia_
    assert ours <= ref * 1.01


def test_kmeans_batch_draws_sklearns_seeding_stream():
    # Same seed, same random stream as KMeans(random_state=seed): the same partitions as scikit-learn.
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    for seed in range(4):
        x = _unit_rows(400, 6, seed)
        for k in (2, 3, 5):
            ours, _ = kmeans_batch(KMeansProblems(points=torch.from_numpy(x)[None], ks=torch.tensor([k]), seeds=[seed]))
            ref = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(x).labels_
            assert adjusted_rand_score(ours[0].numpy(), ref) > 0.999
