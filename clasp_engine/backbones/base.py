"""The small protocol every feature extractor follows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch


@dataclass(frozen=True)
class WeightsInfo:
    kind: str  # "pretrained" | "random" | "none" (classic: no weights)
    source: str | None = None  # file path or "timm:<name>"
    sha256: str | None = None

    def describe(self) -> str:
        if self.kind == "pretrained":
            return f"pretrained:{self.source}"
        return self.kind


@runtime_checkable
class Backbone(Protocol):
    name: str  # e.g. "dino_vits16", "classic"
    patch_size: int
    weights: WeightsInfo
    device: torch.device

    def patch_features(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """Patch features for a batch of RGB uint8 images (H, W, 3).

        Each image's H and W are multiples of `patch_size`. Returns, per image, a
        float32 tensor (rows, cols, D) on `device`, rows = H // patch_size.
        Images of equal size share one forward pass.
        """
        ...
