"""What the engine returns: a label map, its segments and the diagnostics that explain it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Segment:
    label: int
    area: int  # pixels at the original resolution
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive), original pixels
    confidence: float  # 0..1, mean soft-assignment probability of the segment's pixels


@dataclass
class Diagnostics:
    """Everything needed to explain (and reproduce) one segmentation.

    Keeps the paper's words: eigenvalues (λ1 ≥ λ2 ≥ …), eigengaps δi = λi − λi+1,
    the elbow, the silhouette of every candidate K, and which rule chose K.
    """

    k: int
    elbow_k: int | None
    k_rule: str  # "fixed" | "silhouette" | "elbow" | "single"
    eigenvalues: list[float]
    eigengaps: list[float]
    elbow_distances: list[float]  # perpendicular distance of each gap point to the chord
    silhouette: dict[int, float]  # candidate K -> mean silhouette
    backbone: str
    weights: str  # "pretrained:<source>" | "random" | "none"
    weights_sha256: str | None
    features: str
    variant: str
    width: int  # original image size
    height: int
    work_width: int  # size the backbone saw (multiple of the patch size)
    work_height: int
    grid: tuple[int, int]  # patch rows, patch columns
    patch_size: int
    device: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    engine_version: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    solver: str = ""  # eigensolver used: "dense-scipy" | "dense-torch" | "lanczos" | "lobpcg"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["silhouette"] = {str(k): float(v) for k, v in self.silhouette.items()}
        d["grid"] = list(self.grid)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Diagnostics":
        d = dict(d)
        d["silhouette"] = {int(k): float(v) for k, v in d.get("silhouette", {}).items()}
        d["grid"] = tuple(d["grid"])
        return cls(**d)


@dataclass
class Segmentation:
    labels: np.ndarray  # (H, W) at the original size, values 0..K-1, no empty label
    patch_labels: np.ndarray  # (rows, cols) on the patch grid
    segments: list[Segment]
    diagnostics: Diagnostics
    # (K, d) float32, row i = unit mean patch feature of segment i (clasp_engine.embed); None when not computed.
    region_embeddings: np.ndarray | None = None
    # patch-grid labels of the other candidate Ks of the search (K -> (rows, cols)), for coarser/finer views
    alternatives: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return self.diagnostics.k

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: diagnostics at the top level plus a `segments` list (no arrays)."""
        d = self.diagnostics.to_dict()
        d["segments"] = [asdict(s) for s in self.segments]
        return d
