"""Segmentations -> Label Studio pre-annotations (one brush region per segment).

Each region carries a neutral proposal label (`region-1` .. `region-6`, one colour
each), chosen by greedy colouring of the region adjacency graph so that touching
regions are drawn in different colours; the reviewer only has to pick a moderation
label (or delete, merge, redraw). Very small segments are merged
into their neighbour with the longest shared border, or dropped; the number of
regions per task is capped the same way (the editor gets slow with many brush
regions). The prediction has `model_version` (engine version, backbone, config
hash); with the engine's per-segment confidences, every region carries its own score
(the area-weighted confidence of its segments) and the prediction their mean; without
them no score is sent (a constant 1.00 would tell the reviewer nothing).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np

from integrations.label_studio.config import LabelingConfig
from integrations.label_studio.rle import label_map_rles

MODEL_VERSION_MAX = 100  # the review_links.model_version column


def config_hash(config: dict[str, Any]) -> str:
    """Same recipe as `SegmenterConfig.fingerprint()`: sha256 of the sorted JSON, 12 hex."""
    blob = json.dumps(config, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def model_version(engine_version: str, backbone: str, config: dict[str, Any] | str, variant: str | None = None) -> str:
    """`clasp-<engine version>/<backbone>[/<variant>]/<config hash>`, e.g. `clasp-0.1.0/vit_small_dino8/pixel/3f2a9c0d1e4b`."""
    h = config if isinstance(config, str) else config_hash(config)
    parts = [f"clasp-{engine_version or 'unknown'}", backbone or "unknown"]
    if variant:
        parts.append(variant)
    parts.append(h)
    mv = "/".join(parts)
    if len(mv) > MODEL_VERSION_MAX:
        raise ValueError(f"model_version {mv!r} is longer than {MODEL_VERSION_MAX} characters")
    return mv


SUGGESTED_SEPARATOR = "+"  # `<base model version>+<exemplar set version>` when labels were suggested


def base_model_version(model_version: str) -> str:
    """The engine's model version of a pushed prediction, without the exemplar set's suffix.

    A prediction with suggested labels is pushed as `<base>+<exemplar version>`; the task key,
    the "what is unsent" query and the sync's prediction filter compare the base, so that a
    new exemplar set neither duplicates a task nor hides its prediction.
    """
    return str(model_version).split(SUGGESTED_SEPARATOR, 1)[0]


def model_version_from_diagnostics(diagnostics: dict[str, Any]) -> str:
    return model_version(
        diagnostics.get("engine_version", ""),
        diagnostics.get("backbone", ""),
        diagnostics.get("config", {}),
        diagnostics.get("variant"),
    )


@dataclass(frozen=True)
class RegionPolicy:
    min_area: int = 0  # pixels; smaller segments are merged or dropped
    min_area_fraction: float = 0.0  # of the image; the larger of the two limits applies
    small: Literal["merge", "drop"] = "merge"
    max_regions: int = 40  # per task; the smallest beyond the cap are merged or dropped

    def __post_init__(self) -> None:
        if self.small not in ("merge", "drop"):
            raise ValueError(f"small={self.small!r}: must be 'merge' or 'drop'")
        if self.max_regions < 1:
            raise ValueError("max_regions must be >= 1")
        if self.min_area < 0 or not 0.0 <= self.min_area_fraction < 1.0:
            raise ValueError("min_area must be >= 0 and min_area_fraction in [0, 1)")

    def limit(self, n_pixels: int) -> int:
        return max(self.min_area, int(np.ceil(self.min_area_fraction * n_pixels)))


@dataclass
class Region:
    region_id: str
    labels: tuple[int, ...]  # segment labels covered by this region (several when merged)
    area: int
    score: float


@dataclass
class BuiltPrediction:
    prediction: dict[str, Any]  # {"model_version", "score", "result": [...]}
    regions: list[Region]
    dropped: list[int] = field(default_factory=list)  # segment labels left out
    merged: dict[int, int] = field(default_factory=dict)  # segment label -> label it was merged into
    width: int = 0
    height: int = 0

    @property
    def score(self) -> float | None:
        return self.prediction.get("score")


def region_adjacency(labels: np.ndarray, k: int) -> np.ndarray:
    """Shared-border counts between labels (4-neighbourhood), k x k symmetric."""
    adj = np.zeros((k, k), dtype=np.int64)
    for a, b in ((labels[:, 1:], labels[:, :-1]), (labels[1:, :], labels[:-1, :])):
        diff = a != b
        if diff.any():
            np.add.at(adj, (a[diff], b[diff]), 1)
    return adj + adj.T


def plan_regions(labels: np.ndarray, policy: RegionPolicy) -> tuple[np.ndarray, list[int], dict[int, int]]:
    """Group segment labels into regions. Returns (group of each label, -1 = dropped), dropped, merged."""
    k = int(labels.max()) + 1 if labels.size else 0
    area = np.bincount(labels.ravel(), minlength=k).astype(np.int64)
    alive = area > 0
    group = np.arange(k)
    limit = policy.limit(labels.size)
    dropped: list[int] = []
    merged: dict[int, int] = {}

    def too_small(i: int) -> bool:
        return area[i] < limit

    if policy.small == "drop":
        order = [i for i in np.argsort(-area, kind="stable") if alive[i]]
        keep = [i for i in order if not too_small(i)][: policy.max_regions]
        keep_set = set(keep)
        for i in order:
            if i not in keep_set:
                group[i] = -1
                dropped.append(int(i))
        return group, sorted(dropped), merged

    adj = region_adjacency(labels, k) if k > 1 else np.zeros((k, k), dtype=np.int64)
    while True:
        live = np.flatnonzero(alive)
        if live.size <= 1:
            break
        smallest = int(live[np.argmin(area[live])])
        if not too_small(smallest) and live.size <= policy.max_regions:
            break
        contacts = adj[smallest].copy()
        contacts[smallest] = 0
        if contacts.max() <= 0:  # no neighbour (cannot happen on a connected image; be safe)
            alive[smallest] = False
            group[group == smallest] = -1
            dropped.append(smallest)
            continue
        into = int(np.argmax(contacts))
        group[group == smallest] = into
        for lab in np.flatnonzero(group == into):
            if lab != into:
                merged[int(lab)] = into
        area[into] += area[smallest]
        area[smallest] = 0
        alive[smallest] = False
        adj[into] += adj[smallest]
        adj[:, into] += adj[:, smallest]
        adj[into, into] = 0
        adj[smallest] = 0
        adj[:, smallest] = 0
    return group, sorted(dropped), merged


def colour_regions(label_map: np.ndarray, values: list[int], n_colours: int) -> dict[int, int]:
    """A colour index (0..n_colours-1) for every region value, touching regions (4-connectivity) apart.

    Greedy colouring in smallest-last order (repeatedly set aside a region of least
    remaining degree, colour in reverse): a planar adjacency graph has a region of
    degree <= 5, so 6 colours always suffice for regions that are connected. When no
    colour is free (disconnected regions can make the graph non-planar), the colour
    sharing the shortest border with already coloured neighbours is taken. Ties go to
    the least used colour, so colours spread over the image.
    """
    values = [int(v) for v in values]
    if not values:
        return {}
    if n_colours < 1:
        raise ValueError("n_colours must be >= 1")
    index = {v: i for i, v in enumerate(values)}
    k = int(max(values)) + 1
    lut = np.full(max(k, int(label_map.max()) + 1 if label_map.size else 1), -1, dtype=np.int64)
    for v, i in index.items():
        lut[v] = i
    border = region_adjacency(np.where(lut[label_map] >= 0, lut[label_map], len(values)), len(values) + 1)[:-1, :-1]
    np.fill_diagonal(border, 0)
    n = len(values)
    degree = (border > 0).sum(1)
    removed = np.zeros(n, bool)
    order: list[int] = []
    for _ in range(n):
        live = np.flatnonzero(~removed)
        i = int(live[np.argmin(degree[live])])
        order.append(i)
        removed[i] = True
        degree -= border[i] > 0
    colour = np.full(n, -1, dtype=np.int64)
    used = np.zeros(n_colours, dtype=np.int64)
    for i in reversed(order):
        conflict = np.zeros(n_colours, dtype=np.int64)
        nb = np.flatnonzero((border[i] > 0) & (colour >= 0))
        np.add.at(conflict, colour[nb], border[i, nb])
        free = np.flatnonzero(conflict == 0)
        pool = free if free.size else np.flatnonzero(conflict == conflict.min())
        c = int(pool[np.argmin(used[pool])])
        colour[i] = c
        used[c] += 1
    return {v: int(colour[index[v]]) for v in values}


GRANULARITIES = ("coarser", "finer")


def granularity_alternatives(segmentation) -> dict[str, tuple[int, np.ndarray]]:
    """The coarser and finer partitions the K search also computed: name -> (K, label map at full size).

    `coarser` is the largest searched K below the chosen one, `finer` the smallest above
    (either may be missing, e.g. with a fixed K). The alternatives are patch-level
    clusterings upsampled to the image (no CRF), so their borders are blockier than the
    chosen partition's.
    """
    k = segmentation.k
    alts = getattr(segmentation, "alternatives", None) or {}
    lower = [c for c in alts if c < k]
    upper = [c for c in alts if c > k]
    grids = {name: (pick, alts[pick]) for name, pick in (("coarser", max(lower) if lower else None),
                                                        ("finer", min(upper) if upper else None)) if pick is not None}
    return alternatives_at_size(grids, *segmentation.labels.shape)


def alternatives_at_size(grids: dict[str, tuple[int, np.ndarray]], height: int, width: int
                         ) -> dict[str, tuple[int, np.ndarray]]:
    """name -> (K, patch-grid label map) -> name -> (K, label map of ``height`` x ``width``), labels
    renumbered 0..K-1 (K as drawn: a cluster no pixel falls in is not counted)."""
    from clasp_engine.refine import upsample_labels

    out: dict[str, tuple[int, np.ndarray]] = {}
    for name, (_, grid) in grids.items():
        full = upsample_labels(np.asarray(grid), height, width)
        compact = np.unique(full, return_inverse=True)[1].reshape(height, width).astype(np.int32)
        out[name] = (int(compact.max()) + 1, compact)
    return out


def alternative_model_version(base: str, name: str, k: int) -> str:
    """`<model version>/<coarser|finer>-k<K>`, within the 100-character column."""
    suffix = f"/{name}-k{k}"
    return base[: MODEL_VERSION_MAX - len(suffix)] + suffix


def region_masks(labels: np.ndarray, regions: list[Region]) -> list[np.ndarray]:
    return [np.isin(labels, r.labels) for r in regions]


def build_prediction(
    labels: np.ndarray,
    confidences: dict[int, float] | None,
    *,
    model_version: str,
    config: LabelingConfig | None = None,
    policy: RegionPolicy | None = None,
    label: str | None = None,
    encoder: Callable[[np.ndarray], list[int]] | None = None,
) -> BuiltPrediction:
    """One brush region per segment (after merging/dropping small ones).

    `encoder` (mask -> RLE) defaults to one pass over the label map for all regions
    (`label_map_rles`, byte-identical to the SDK's `mask2rle` of each region's mask).
    """
    config = config or LabelingConfig()
    policy = policy or RegionPolicy()
    if label is not None and label not in config.taxonomy:
        from integrations.label_studio.config import LabelConfigError

        raise LabelConfigError(f"label {label!r} is not in the taxonomy {config.labels}")
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 2-D integer label map, got {labels.dtype} {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels must be >= 0")
    h, w = labels.shape
    scored = bool(confidences)
    confidences = confidences or {}
    group, dropped, merged = plan_regions(labels, policy)
    k = group.size
    area = np.bincount(labels.ravel(), minlength=k)
    lut = np.where(group >= 0, group, k).astype(np.int64)
    grouped = lut[labels] if k else labels
    regions: list[Region] = []
    result: list[dict[str, Any]] = []
    wanted = sorted({int(x) for x in group if x >= 0})
    codes = label_map_rles(grouped, wanted) if encoder is None else None
    if label is None and config.palette:
        names = config.proposal_labels
        colours = colour_regions(grouped, wanted, len(names))
        label_of = {g: names[c] for g, c in colours.items()}
    else:
        label_of = {g: label or config.neutral_label for g in wanted}
    for g in wanted:
        members = tuple(int(i) for i in np.flatnonzero(group == g) if area[i] > 0)
        a = int(sum(area[i] for i in members))
        if a == 0:
            continue
        score = float(sum(area[i] * float(confidences.get(i, 1.0)) for i in members) / a)
        rid = f"clasp-{g}"
        regions.append(Region(rid, members, a, score))
        region = {
            "id": rid,
            "from_name": config.from_name,
            "to_name": config.to_name,
            "type": "brushlabels",
            "original_width": int(w),
            "original_height": int(h),
            "image_rotation": 0,
            "value": {"format": "rle", "rle": codes[g] if codes is not None else encoder(grouped == g),
                      "brushlabels": [label_of[g]]},
        }
        if scored:
            region["score"] = round(score, 6)
        result.append(region)
    total = sum(r.area for r in regions)
    task_score = float(sum(r.area * r.score for r in regions) / total) if total else 0.0
    prediction = {"model_version": model_version, "result": result}
    if scored:
        prediction["score"] = round(task_score, 6)
    return BuiltPrediction(prediction, regions, dropped, merged, int(w), int(h))
