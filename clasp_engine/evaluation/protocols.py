"""Evaluation presets (``diffseg``, ``diffcut``, ``native``): how an image and its label maps are
cropped and resized before segmentation and scoring, so the same arrays reach the engine and the
metric whether the command runs the engine or scores existing predictions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def centre_square(height: int, width: int) -> tuple[int, int, int]:
    """(top, left, side) of the largest centred square, rounded as torchvision's CenterCrop."""
    side = min(height, width)
    top = int(round((height - side) / 2.0))
    left = int(round((width - side) / 2.0))
    return top, left, side


def crop_square(a: np.ndarray) -> np.ndarray:
    top, left, side = centre_square(a.shape[0], a.shape[1])
    return a[top : top + side, left : left + side]


def resize_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize to (height, width), sampling pixel centres (as PIL NEAREST)."""
    h, w = labels.shape[:2]
    oh, ow = size
    if (h, w) == (oh, ow):
        return labels
    rows = np.minimum(((np.arange(oh) + 0.5) * h / oh).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(ow) + 0.5) * w / ow).astype(np.int64), w - 1)
    return labels[rows[:, None], cols[None, :]]


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an (H, W, 3) uint8 image to (height, width)."""
    from PIL import Image

    if image.shape[:2] == tuple(size):
        return image
    pil = Image.fromarray(np.ascontiguousarray(image))
    return np.asarray(pil.resize((size[1], size[0]), Image.Resampling.BILINEAR))


@dataclass(frozen=True)
class Protocol:
    """How an image and its label maps are prepared before segmentation and scoring.

    * ``diffseg``: square centre crop, image resized (bilinear) to 512×512, labels
      and predictions resized by nearest neighbour to 512×512; the engine sees the
      512×512 crop.
    * ``diffcut``: square centre crop; the engine sees the crop; labels and
      predictions are scored at 128×128 (nearest neighbour).
    * ``native``: the full image, no crop, scored at the original size.
    """

    name: str
    crop: bool
    image_size: int | None  # side the image is resized to after the crop (None: keep)
    score_size: int | None  # side labels / predictions are scored at (None: as the engine input)
    description: str

    def engine_image(self, image: np.ndarray) -> np.ndarray:
        """The image the engine is run on."""
        if self.crop:
            image = crop_square(image)
        if self.image_size is not None:
            image = resize_image(image, (self.image_size, self.image_size))
        return image

    def scored_shape(self, height: int, width: int) -> tuple[int, int]:
        """Shape of the maps that are compared, for an original image of height × width."""
        if self.score_size is not None:
            return self.score_size, self.score_size
        return self.engine_shape(height, width)

    def engine_shape(self, height: int, width: int) -> tuple[int, int]:
        """Shape of the image the engine is run on (see `engine_image`)."""
        if self.image_size is not None:
            return self.image_size, self.image_size
        if self.crop:
            side = min(height, width)
            return side, side
        return height, width

    def labels(self, labels: np.ndarray) -> np.ndarray:
        """A ground-truth map at the original image size, prepared for scoring."""
        h, w = labels.shape
        if self.crop:
            labels = crop_square(labels)
        return resize_nearest(labels, self.scored_shape(h, w))

    def prediction(self, pred: np.ndarray, original_shape: tuple[int, int]) -> np.ndarray:
        """A predicted map, prepared for scoring.

        Accepts a prediction at the original image size (it is cropped and resized
        like the labels), at the engine input size or already at the scored size.
        """
        h, w = original_shape
        target = self.scored_shape(h, w)
        if pred.shape == tuple(target):
            return pred
        if pred.shape == tuple(self.engine_shape(h, w)):
            return resize_nearest(pred, target)
        if pred.shape == (h, w):
            if self.crop:
                pred = crop_square(pred)
            return resize_nearest(pred, target)
        raise ValueError(
            f"prediction of shape {pred.shape} fits neither the image ({h}×{w}), the {self.name} "
            f"engine input {self.engine_shape(h, w)} nor the scored size {target}"
        )


PROTOCOLS: dict[str, Protocol] = {
    "diffseg": Protocol(
        "diffseg", crop=True, image_size=512, score_size=None,
        description="square centre crop, image resized to 512×512 (bilinear), labels by nearest neighbour",
    ),
    "diffcut": Protocol(
        "diffcut", crop=True, image_size=None, score_size=128,
        description="square centre crop, labels and predictions scored at 128×128 (nearest neighbour)",
    ),
    "native": Protocol(
        "native", crop=False, image_size=None, score_size=None,
        description="full image, no crop, scored at the original size",
    ),
}
