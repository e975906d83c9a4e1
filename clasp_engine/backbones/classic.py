"""A weight-free backbone: hand-made colour, texture and position features per 8x8 patch.

Used when no pretrained ViT weights are available (and as a fast baseline).
Per patch it measures

  colour    CIELAB mean (3) and spread (standard deviation, 3);
  texture   Sobel structure tensor of the lightness, at the patch (8 px) and at
            a 3x3-patch neighbourhood (24 px) scale: log gradient energy and
            two orientation components (cos 2θ, sin 2θ weighted by coherence),
            plus the neighbourhood's lightness contrast (7 values);
  position  the patch centre (y, x), divided by the grid's long side (2).

The downstream graph takes the cosine similarity of L2-normalised features and
clips negatives, so the features must be centred and balanced per image: each
column is centred on the image's mean and divided by its standard deviation
(with a floor in raw units, so a flat image does not blow noise up), then each
group is scaled by w_g / sqrt(n_g) (n_g = its columns), so that group g
contributes about w_g^2 to the squared norm. The cosine of two patches is then
a weighted correlation across groups: colour dominant, texture next, position
weak (`GROUP_WEIGHTS`). Patches with similar colour point the same way; clearly
different ones get negative cosines, which the graph clips to zero.

(Random Fourier features of each group, which turn the cosine into a sum of
Gaussian kernels, were tried and did worse on the development images: k-means
Hungarian accuracy 0.44 vs 0.51.)

Output: (rows, cols, FEATURE_DIM) float32, deterministic, computed vectorised in
numpy: ~15-20 ms for a 448x448 image on the 2-core dev machine (Lab conversion ~7 ms).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from clasp_engine.backbones.base import WeightsInfo

PATCH_SIZE = 8
# Group weights: colour dominant, position weak. Each group adds ~weight^2 to the squared norm.
GROUP_WEIGHTS = {"colour": 1.0, "spread": 0.5, "texture": 0.7, "position": 0.5}
# Lower bound of each column's per-image standard deviation, in raw units
# (Lab units; log-energy / orientation units; fraction of the long side).
_STD_FLOOR = {"colour": 3.0, "spread": 1.5, "texture": 0.1, "position": 0.05}
GROUP_DIMS = {"colour": 3, "spread": 3, "texture": 7, "position": 2}
FEATURE_DIM = sum(GROUP_DIMS.values())  # 15


class ClassicBackbone:
    """Weight-free patch features (colour, texture, position); patch size 8, D = FEATURE_DIM."""

    def __init__(self, device: torch.device | str = "cpu", name: str = "classic", warnings: list[str] | None = None):
        self.name = name
        self.patch_size = PATCH_SIZE
        self.weights = WeightsInfo(kind="none")
        self.device = torch.device(device)
        self.feature_dim = FEATURE_DIM
        self.warnings: list[str] = list(warnings or [])

    def patch_features(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """(rows, cols, FEATURE_DIM) float32 features per image on `device`."""
        out = []
        for i, img in enumerate(images):
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(f"image {i}: expected (H, W, 3) uint8, got {img.shape} {img.dtype}")
            if img.shape[0] % PATCH_SIZE or img.shape[1] % PATCH_SIZE or 0 in img.shape[:2]:
                raise ValueError(f"image {i}: {img.shape[0]}x{img.shape[1]} is not a multiple of {PATCH_SIZE}; "
                                 "use clasp_engine.images.resize_to_grid")
            out.append(torch.from_numpy(classic_features(img)).to(self.device))
        return out

    def batch_features(self, batch: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 images of one size -> (B, rows, cols, FEATURE_DIM) float32 on `device`."""
        return torch.stack(self.patch_features(list(batch)))


def classic_features(image: np.ndarray) -> np.ndarray:
    """(rows, cols, FEATURE_DIM) float32 standardised, weighted features of one (H, W, 3) uint8 image.

    Columns, in order: colour L, a, b means; their spreads; texture (log
    energy, cos 2θ, sin 2θ at 8 px; the same at 24 px; 24 px lightness
    contrast); position y, x.
    """
    groups = patch_descriptors(image)
    rows, cols = groups["colour"].shape[:2]
    parts = []
    for g, weight in GROUP_WEIGHTS.items():
        x = groups[g].reshape(rows * cols, -1)
        std = np.maximum(x.std(axis=0), _STD_FLOOR[g])
        parts.append((x - x.mean(axis=0)) / std * (weight / np.sqrt(x.shape[1])))
    return np.concatenate(parts, axis=1).reshape(rows, cols, FEATURE_DIM).astype(np.float32)


def patch_descriptors(image: np.ndarray, patch: int = PATCH_SIZE) -> dict[str, np.ndarray]:
    """Raw per-patch descriptors before standardisation: name -> (rows, cols, n) float array."""
    h, w = image.shape[:2]
    rows, cols = h // patch, w // patch
    lab = rgb_to_lab(image).astype(np.float64)  # float64 sums: E[x^2] - E[x]^2 stays exact enough

    starts_r, starts_c = np.arange(0, h, patch), np.arange(0, w, patch)

    def pool(x: np.ndarray) -> np.ndarray:  # (H, W, n) -> per-patch mean (rows, cols, n)
        # add.reduceat over contiguous runs is ~3x faster than a strided reshape-mean.
        return np.add.reduceat(np.add.reduceat(x, starts_r, axis=0), starts_c, axis=1) / (patch * patch)

    mean = pool(lab)
    spread = np.sqrt(np.maximum(pool(lab**2) - mean**2, 0.0))

    light = lab[:, :, 0]
    gy = ndimage.sobel(light, axis=0, mode="nearest") / 8.0
    gx = ndimage.sobel(light, axis=1, mode="nearest") / 8.0
    tensor = pool(np.stack([gx * gx, gy * gy, gx * gy], axis=2))  # structure tensor per patch
    wide = ndimage.uniform_filter(tensor, size=(3, 3, 1), mode="nearest")
    wide_l = ndimage.uniform_filter(mean[:, :, :1], size=(3, 3, 1), mode="nearest")
    wide_l2 = ndimage.uniform_filter(pool(light[:, :, None] ** 2), size=(3, 3, 1), mode="nearest")
    contrast = np.sqrt(np.maximum(wide_l2 - wide_l**2, 0.0))
    texture = np.concatenate([_tensor_features(tensor), _tensor_features(wide), np.log1p(contrast)], axis=2)

    long_side = max(rows, cols)
    yy, xx = np.meshgrid(np.arange(rows) + 0.5, np.arange(cols) + 0.5, indexing="ij")
    position = np.stack([yy, xx], axis=2) / long_side
    return {"colour": mean, "spread": spread, "texture": texture, "position": position}


def rgb_to_lab(image: np.ndarray) -> np.ndarray:
    """sRGB uint8 (H, W, 3) -> CIELAB (D65) float32, L in 0..100.

    Written out in numpy because scikit-image is not a dependency: sRGB gamma
    expansion, the sRGB->XYZ matrix (IEC 61966-2-1), then the CIE 1976 L*a*b*
    formulas with the D65 white point.
    """
    linear = _SRGB_TO_LINEAR[image]  # gamma expansion by table lookup (256 entries)
    m = np.array([[0.4124564, 0.3575761, 0.1804375],
                  [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]], dtype=np.float32)
    xyz = linear @ (m.T / np.array([0.95047, 1.0, 1.08883], dtype=np.float32)[None, :])
    eps = (6 / 29) ** 3
    f = np.where(xyz > eps, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1
    )


_U = np.arange(256, dtype=np.float64) / 255.0
_SRGB_TO_LINEAR = np.where(_U <= 0.04045, _U / 12.92, ((_U + 0.055) / 1.055) ** 2.4).astype(np.float32)


def _tensor_features(t: np.ndarray) -> np.ndarray:
    """Structure tensor (Jxx, Jyy, Jxy) -> log energy, coherence-weighted (cos 2θ, sin 2θ)."""
    jxx, jyy, jxy = t[..., 0], t[..., 1], t[..., 2]
    energy = jxx + jyy
    orient = np.stack([jxx - jyy, 2 * jxy], axis=-1) / (energy[..., None] + 1e-3)  # |.| = coherence <= 1
    return np.concatenate([np.log1p(energy)[..., None], orient], axis=-1)
