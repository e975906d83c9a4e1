"""A small fake backbone shared by the engine and `clasp segment` tests (imported by tests/test_segmenter.py,
tests/test_cli_segment.py): no weights, no timm."""

from __future__ import annotations

import numpy as np
import torch

from clasp_engine.backbones.base import WeightsInfo


class FakeBackbone:
    """Per-patch mean colour and its complement (never a zero vector)."""

    name = "fake"
    patch_size = 8

    def __init__(self, kind: str = "none"):
        self.weights = WeightsInfo(kind)
        self.device = torch.device("cpu")
        self.calls: list[int] = []

    def patch_features(self, images):
        self.calls.append(len(images))
        out = []
        for im in images:
            h, w = im.shape[:2]
            p = self.patch_size
            m = im.reshape(h // p, p, w // p, p, 3).astype(np.float32).mean(axis=(1, 3)) / 255.0
            out.append(torch.from_numpy(np.concatenate([m, 1 - m], -1)))
        return out
