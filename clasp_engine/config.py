"""One typed configuration for the engine, with defaults and validation.

A plain frozen dataclass: the engine reads no environment. The product's
settings object (`integrations.settings.Settings`, CLI flags and `CLASP_*`
variables) builds it; its `__post_init__` checks the values either way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from clasp_engine.errors import ConfigError

BACKBONES = (
    "auto",
    "classic",
    "dino_vits8",
    "dino_vits16",
    "dino_vitb8",
    "dino_vitb16",
    "dinov2_vits14",
    "dinov2_vits14_reg",
)
VARIANTS = ("patch", "pixel")
FEATURES = ("tokens", "keys")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class CRFConfig:
    """Fully connected DenseCRF (Krähenbühl & Koltun) parameters for the pixel variant.

    Defaults measured on /work/shared/data (53 images: cocostuff 15, ade20k 8,
    camvid 15, bsds500 15; classic backbone, max_side 448, K by the engine;
    mean boundary F at 2 px over the 4 sets, Hungarian mIoU coco/ade/camvid,
    covering on BSDS):
      patch variant (no CRF)              BF .237  mIoU .296/.171/.244  cov .453
      old defaults (compat 5, conf .7)    BF .352       .318/.182/.258      .474
      bilateral_compat 10                 BF .372       .323/.183/.256      .476
      + unary_confidence .5               BF .375       .323/.183/.255      .476
      + max_side 320, marginals upsampled BF .375       .322/.182/.254      .475  (chosen)
        (same at max_side 400: BF .376; nearest-upsampled labels at 320: BF .372)
      + iterations 10 (instead)           BF .380       .323/.184/.252      .479  (2x CRF time)
    Also tried, no better: bilateral_srgb 8/20, bilateral_sxy 30/80,
    gaussian_compat 1, bilateral_compat 3/15, unary_confidence .3/.9,
    iterations 3 (BF .340). max_side 320 costs nothing measurable here, runs
    the CRF on 2.3x (481x321) to 4x (640x480) fewer pixels, and bounds its
    time on large photos.
    """

    iterations: int = 5
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 50.0
    bilateral_srgb: float = 13.0
    bilateral_compat: float = 10.0
    # CRF unary = c * (soft patch assignment, bilinear) + (1 - c) / K.
    unary_confidence: float = 0.5
    # Long side (pixels) at which the CRF runs; its marginals are upsampled to
    # the original size. 0 means the original size.
    max_side: int = 320


@dataclass(frozen=True)
class SegmenterConfig:
    backbone: str = "auto"
    # None: look for local weights, then timm's download; a path: load that file;
    # "random": random init, for speed measurement only (marked in diagnostics).
    weights: str | None = None
    features: str = "tokens"
    max_side: int = 448
    variant: str = "pixel"
    # Fixed K skips the search. None: eigengap elbow + silhouette search.
    k: int | None = None
    k_min: int = 2
    k_max: int = 15
    n_eigen: int = 20  # m: leading eigenvalues whose gaps are considered
    silhouette_window: int = 2  # candidates elbow-w .. elbow+w (clipped to bounds)
    device: str = "auto"
    seed: int = 0
    crf: CRFConfig = field(default_factory=CRFConfig)
    # Where local weights files are looked for (None: the backbone's default). Where the
    # weights are found, not which: left out of to_dict(), the fingerprint and equality,
    # so run records and model-version names do not depend on it.
    weights_dir: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone={self.backbone!r}: choose one of {', '.join(BACKBONES)}")
        if self.variant not in VARIANTS:
            raise ConfigError(f"variant={self.variant!r}: choose 'patch' or 'pixel'")
        if self.features not in FEATURES:
            raise ConfigError(f"features={self.features!r}: choose 'tokens' or 'keys'")
        if self.device not in DEVICES:
            raise ConfigError(f"device={self.device!r}: choose auto, cpu or cuda")
        if not 32 <= self.max_side <= 4096:
            raise ConfigError(f"max_side={self.max_side}: use a long side between 32 and 4096 pixels")
        if not 2 <= self.k_min <= self.k_max:
            raise ConfigError(f"k_min={self.k_min}, k_max={self.k_max}: need 2 <= k_min <= k_max")
        if self.k is not None and not 1 <= self.k <= 255:
            raise ConfigError(f"k={self.k}: a fixed K must be between 1 and 255")
        if self.n_eigen < self.k_max + 1:
            raise ConfigError(f"n_eigen={self.n_eigen}: must be at least k_max+1 = {self.k_max + 1}")
        if self.silhouette_window < 0:
            raise ConfigError(f"silhouette_window={self.silhouette_window}: must be >= 0")
        if self.crf.iterations < 1:
            raise ConfigError(f"crf.iterations={self.crf.iterations}: must be >= 1")
        if not 0.0 < self.crf.unary_confidence < 1.0:
            raise ConfigError(f"crf.unary_confidence={self.crf.unary_confidence}: must be in (0, 1)")
        # pydensecrf divides by the kernel widths: zero or nan there is a segmentation fault.
        for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):
            value = getattr(self.crf, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"crf.{name}={value}: must be a finite number > 0")
        for name in ("gaussian_compat", "bilateral_compat"):
            value = getattr(self.crf, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"crf.{name}={value}: must be a finite number >= 0")
        if self.crf.max_side < 0:
            raise ConfigError(f"crf.max_side={self.crf.max_side}: must be >= 0 (0: the original size)")

    def to_dict(self) -> dict[str, Any]:
        """The configuration's identity, JSON-ready (without `weights_dir`)."""
        data = dataclasses.asdict(self)
        data.pop("weights_dir")
        return data

    def fingerprint(self) -> str:
        """Short stable hash of the config (names a model version)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def replace(self, **changes: Any) -> "SegmenterConfig":
        crf_changes = {k[4:]: changes.pop(k) for k in list(changes) if k.startswith("crf_")}
        crf = dataclasses.replace(self.crf, **crf_changes) if crf_changes else self.crf
        return dataclasses.replace(self, crf=crf, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SegmenterConfig":
        data = dict(data)
        crf = CRFConfig(**data.pop("crf", {}))
        return cls(crf=crf, **data)
