"""Patch labels to pixels: nearest upsampling and DenseCRF."""

import numpy as np
import pytest

from clasp_engine.config import CRFConfig
from clasp_engine.refine import crf_labels, unary_probabilities, upsample_labels, upsample_probabilities


def test_upsample_labels_nearest():
    grid = np.array([[0, 1], [2, 3]])
    up = upsample_labels(grid, 4, 6)
    assert up.shape == (4, 6)
    assert up[0].tolist() == [0, 0, 0, 1, 1, 1] and up[3].tolist() == [2, 2, 2, 3, 3, 3]
    assert upsample_labels(grid, 1, 1).tolist() == [[0]]


def test_unary_probabilities_mix_and_normalise():
    p = np.zeros((2, 2, 3), np.float32)
    p[..., 0] = 1
    u = unary_probabilities(p, 8, 8, confidence=0.7)
    assert u.shape == (3, 8, 8) and u.dtype == np.float32
    np.testing.assert_allclose(u.sum(0), 1, atol=1e-5)
    np.testing.assert_allclose(u[0], 0.7 + 0.1, atol=1e-6)
    assert upsample_probabilities(p, 5, 7).shape == (3, 5, 7)


def circle_scene(size: int = 160, patch: int = 16, seed: int = 0):
    """A yellow disc on a blue background, and blocky patch labels for it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    truth = ((yy - 77) ** 2 + (xx - 83) ** 2 < 50**2).astype(np.int64)
    image = np.where(truth[..., None] == 1, [230, 200, 40], [30, 60, 190]).astype(np.float64)
    image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
    rows = size // patch
    centres = (np.arange(rows) + 0.5) * patch
    grid = (((centres[:, None] - 77) ** 2 + (centres[None, :] - 83) ** 2) < 50**2).astype(np.int64)
    probs = np.where(grid[..., None] == np.arange(2), 0.9, 0.1).astype(np.float32)
    return image, truth, grid, probs


def _band(truth: np.ndarray, width: int = 8) -> np.ndarray:
    from scipy.ndimage import binary_dilation, binary_erosion

    disc = truth.astype(bool)
    return binary_dilation(disc, iterations=width) & ~binary_erosion(disc, iterations=width)


def test_crf_snaps_blocky_labels_to_the_edge():
    image, truth, grid, probs = circle_scene()
    blocky = upsample_labels(grid, *truth.shape)
    refined = crf_labels(image, probs, CRFConfig())
    band = _band(truth)
    blocky_acc = (blocky == truth)[band].mean()
    crf_acc = (refined == truth)[band].mean()
    assert crf_acc > blocky_acc + 0.05, (blocky_acc, crf_acc)
    assert (refined == truth).mean() > 0.98


def test_crf_at_reduced_size_returns_full_size():
    image, truth, grid, probs = circle_scene()
    refined = crf_labels(image, probs, CRFConfig(max_side=80))
    assert refined.shape == truth.shape
    assert (refined == truth).mean() > (upsample_labels(grid, *truth.shape) == truth).mean()


def test_crf_single_label_and_bad_image():
    image, truth, grid, probs = circle_scene()
    assert np.all(crf_labels(image, probs[..., :1], CRFConfig()) == 0)
    with pytest.raises(ValueError):
        crf_labels(image[..., 0], probs, CRFConfig())
