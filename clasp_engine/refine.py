"""From patch labels to pixel labels: nearest upsampling, or a fully connected DenseCRF.

The "patch" variant keeps the patch grid's blocky boundaries. The "pixel"
variant snaps them to image edges with DenseCRF2D (Krähenbühl & Koltun 2011):
unaries from the patch result's soft assignments, a Gaussian (smoothness)
kernel and a bilateral (appearance) kernel.
"""

from __future__ import annotations

import numpy as np
import torch

from clasp_engine.config import CRFConfig


def upsample_labels(patch_labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour upsampling of a (rows, cols) label grid to (height, width)."""
    rows, cols = patch_labels.shape
    # Index arithmetic rather than an image resize: exact, and no dtype round trip.
    ri = np.minimum((np.arange(height) * rows) // height, rows - 1)
    ci = np.minimum((np.arange(width) * cols) // width, cols - 1)
    return patch_labels[ri[:, None], ci[None, :]]


def upsample_probabilities(probabilities: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of (rows, cols, K) probabilities to (K, height, width) float32."""
    p = torch.from_numpy(np.ascontiguousarray(probabilities, dtype=np.float32)).permute(2, 0, 1)[None]
    up = torch.nn.functional.interpolate(p, size=(height, width), mode="bilinear", align_corners=False)[0]
    up = up.clamp_min_(0)
    up /= up.sum(0, keepdim=True).clamp_min(1e-12)
    return up.numpy()


def unary_probabilities(probabilities: np.ndarray, height: int, width: int, confidence: float) -> np.ndarray:
    """CRF unary probabilities (K, height, width): ``c · P_soft + (1 − c) / K``.

    ``c`` (config.crf.unary_confidence) is how much the unary trusts the patch
    result; the rest is spread evenly so that the pairwise terms can overturn
    the patch label near edges.
    """
    k = probabilities.shape[-1]
    p = upsample_probabilities(probabilities, height, width)
    return confidence * p + (1.0 - confidence) / k


def crf_labels(image: np.ndarray, probabilities: np.ndarray, crf: CRFConfig) -> np.ndarray:
    """DenseCRF labels at the image's size.

    Parameters
    ----------
    image : (H, W, 3) uint8 RGB
    probabilities : (rows, cols, K) soft assignments on the patch grid
    crf : CRFConfig; with ``max_side`` > 0 the CRF runs on a copy of the image
        whose long side is ``max_side`` and its marginals are upsampled (bilinear).
    """
    import pydensecrf.densecrf as dcrf

    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3); got shape {image.shape}")
    height, width = image.shape[:2]
    k = probabilities.shape[-1]
    if k < 2:
        return np.zeros((height, width), dtype=np.int64)
    work = image
    scale = 1.0
    if crf.max_side and max(height, width) > crf.max_side:
        scale = crf.max_side / max(height, width)
        wh, ww = max(1, round(height * scale)), max(1, round(width * scale))
        t = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None]
        work = torch.nn.functional.interpolate(t, size=(wh, ww), mode="area")[0].permute(1, 2, 0)
        work = work.round().clamp(0, 255).to(torch.uint8).numpy()
    h, w = work.shape[:2]
    unary = unary_probabilities(probabilities, h, w, crf.unary_confidence)
    # pydensecrf rejects anything but C-contiguous float32 unaries / uint8 images.
    energy = np.ascontiguousarray(-np.log(np.clip(unary, 1e-8, 1.0)).reshape(k, -1), dtype=np.float32)
    rgb = np.ascontiguousarray(work, dtype=np.uint8)
    if not rgb.flags.writeable:  # pydensecrf's memoryview wants a writeable buffer
        rgb = rgb.copy()
    d = dcrf.DenseCRF2D(w, h, k)
    d.setUnaryEnergy(energy)
    # Kernel widths are in pixels of the original image; shrink them with the image.
    d.addPairwiseGaussian(sxy=max(crf.gaussian_sxy * scale, 0.5), compat=crf.gaussian_compat)
    d.addPairwiseBilateral(sxy=max(crf.bilateral_sxy * scale, 0.5), srgb=crf.bilateral_srgb, rgbim=rgb,
                           compat=crf.bilateral_compat)
    q = np.asarray(d.inference(crf.iterations), dtype=np.float32).reshape(k, h, w)
    if (h, w) != (height, width):
        # Upsample the CRF's marginals, not its labels: edges land between the
        # reduced pixels instead of on a staircase of them.
        q = upsample_probabilities(q.transpose(1, 2, 0), height, width)
    return q.argmax(axis=0).astype(np.int64)
