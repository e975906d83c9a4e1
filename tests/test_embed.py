"""Region embeddings: the mean patch feature of each segment, L2-normalised."""

from __future__ import annotations

import numpy as np
import pytest
from engine_support import FakeBackbone

from clasp_engine import Segmenter, SegmenterConfig
from clasp_engine.embed import region_embeddings


def test_region_embedding_is_the_unit_mean_of_its_patches(rng):
    feats = rng.normal(size=(4, 5, 6)).astype(np.float32)
    labels = rng.integers(0, 3, size=(4, 5))
    labels[0, 0], labels[0, 1], labels[0, 2] = 0, 1, 2
    emb = region_embeddings(feats, labels)
    assert emb.shape == (3, 6) and emb.dtype == np.float32
    for k in range(3):
        mean = feats[labels == k].mean(axis=0)
        np.testing.assert_allclose(emb[k], mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
        assert np.linalg.norm(emb[k]) == pytest.approx(1.0, abs=1e-5)


def test_labels_beyond_k_are_ignored_and_empty_segments_are_zero():
    feats = np.ones((2, 2, 3), dtype=np.float32)
    feats[1, 1] = [0, 0, 5]
    labels = np.array([[0, 0], [0, 3]])  # label 3 >= k (vanished at pixel level); segments 1, 2 have no patch
    emb = region_embeddings(feats, labels, k=3)
    np.testing.assert_allclose(emb[0], np.ones(3) / np.sqrt(3), rtol=1e-6)
    assert not emb[1].any() and not emb[2].any()


def test_grid_mismatch_and_negative_labels_are_clear_errors():
    with pytest.raises(ValueError, match="same grid"):
        region_embeddings(np.zeros((2, 3, 4)), np.zeros((3, 2), dtype=int))
    with pytest.raises(ValueError, match=">= 0"):
        region_embeddings(np.zeros((1, 2, 4)), np.array([[0, -1]]))


def test_segmenter_returns_one_unit_embedding_per_segment():
    image = np.zeros((64, 96, 3), dtype=np.uint8)
    image[:, :48] = (200, 30, 30)
    image[:, 48:] = (30, 30, 200)
    result = Segmenter(SegmenterConfig(variant="patch", max_side=96, k=2), backbone=FakeBackbone())(image)
    emb = result.region_embeddings
    assert emb.shape == (result.k, 6)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    # the red half and the blue half point in different directions
    red = int(result.labels[10, 10])
    blue = int(result.labels[10, 80])
    assert emb[red] @ emb[blue] < 0.9
    assert emb[red][0] > emb[red][2]
