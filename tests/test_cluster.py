"""K-means on the spectral embedding."""

import numpy as np
import pytest
import torch

from clasp_engine.cluster import spectral_embedding, spectral_kmeans


def test_spectral_embedding_rows_unit_norm():
    v = torch.randn(50, 6)
    e = spectral_embedding(v, 4)
    assert e.shape == (50, 4) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    with pytest.raises(ValueError):
        spectral_embedding(v, 7)


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
