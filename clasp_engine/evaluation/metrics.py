"""Segmentation quality the way the field measures it. Pure functions over arrays.

Two families:

* **Class datasets** (COCO-Stuff 27, ADE20K 150, CamVid 11): per image, a
  contingency table with one row per class of the dataset and
  ``max(n_classes, K)`` columns for the predicted segments; a Hungarian
  assignment of columns to rows maximising the matched pixels; per class
  TP = matched cell, FN = row total − TP, FP = matched column total − TP.
  TP/FP/FN are summed over the dataset; IoU per class = TP/(TP+FP+FN); mIoU is
  the mean over classes with a non-zero denominator; pixel accuracy =
  ΣTP / all labelled pixels.
* **Class-agnostic datasets** (BSDS500): the BSDS500 benchmark's region
  measures for one segmentation per image (``match_segmentations2`` and
  ``match_segmentations`` of the BSDS bench code): Rand index and variation of
  information (bits) per annotator from the contingency table, averaged over
  the image's annotators then over images (PRI, VI); segmentation covering
  pooled over every region of every annotator of every image.

The evaluation presets that say how an image and its labels are cropped and
resized before scoring live in :mod:`clasp_engine.evaluation.protocols`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

IGNORE = 255


# --------------------------------------------------------------------------- helpers


def _as_label_array(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D label map, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        if np.issubdtype(a.dtype, np.floating) and np.all(np.mod(a, 1) == 0):
            a = a.astype(np.int64)
        else:
            raise ValueError(f"{name}: expected integer labels, got {a.dtype}")
    return a


def _check_same_shape(gt: np.ndarray, pred: np.ndarray) -> None:
    if gt.shape != pred.shape:
        raise ValueError(
            f"prediction shape {pred.shape} does not match ground-truth shape {gt.shape}; "
            "resize the prediction (nearest neighbour) to the label map first"
        )


def contingency(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    """Table ``t[i, j]`` = number of positions with ``rows == i`` and ``cols == j``.

    ``rows`` and ``cols`` are 1-D arrays of indices already in ``0..n-1``.
    """
    rows = np.asarray(rows, dtype=np.int64).ravel()
    cols = np.asarray(cols, dtype=np.int64).ravel()
    flat = np.bincount(rows * n_cols + cols, minlength=n_rows * n_cols)
    return flat.reshape(n_rows, n_cols)


# --------------------------------------------------------------------------- class datasets


@dataclass
class ClassScores:
    """One image scored against a class dataset (the inputs to the dataset sums)."""

    tp: np.ndarray  # (n_classes,) int64
    fp: np.ndarray
    fn: np.ndarray
    n_labelled: int  # non-ignored pixels
    k: int  # predicted segments (distinct labels) over the labelled pixels
    # predicted label -> class it was matched to (segments left unmatched are absent)
    segment_to_class: dict[int, int] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return int(self.tp.shape[0])

    @property
    def present(self) -> np.ndarray:
        """Classes that occur in this image's ground truth."""
        return (self.tp + self.fn) > 0

    @property
    def n_gt_classes(self) -> int:
        return int(self.present.sum())

    @property
    def iou(self) -> np.ndarray:
        """Per-class IoU for this image; NaN where TP+FP+FN = 0."""
        return _iou(self.tp, self.fp, self.fn)

    @property
    def miou(self) -> float:
        """The image's own mIoU: mean IoU over the classes present in its ground truth.

        Used to rank images (sorted plot, best / worst grid); the dataset mIoU
        is computed from the summed TP/FP/FN instead (`ClassTotals`).
        """
        present = self.present
        if not present.any():
            return float("nan")
        return float(np.mean(self.iou[present]))

    @property
    def pixel_accuracy(self) -> float:
        if self.n_labelled == 0:
            return float("nan")
        return float(self.tp.sum() / self.n_labelled)


def _iou(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denom = (tp + fp + fn).astype(np.float64)
    out = np.full(tp.shape, np.nan, dtype=np.float64)
    nz = denom > 0
    out[nz] = tp[nz] / denom[nz]
    return out


def class_scores(gt: np.ndarray, pred: np.ndarray, n_classes: int, ignore: int = IGNORE) -> ClassScores:
    """Score one predicted label map against one class label map (Hungarian matching).

    ``gt`` holds class ids ``0..n_classes-1`` and ``ignore``; ``pred`` holds any
    integer segment ids (they need not be contiguous). Both have the same shape.
    """
    gt = _as_label_array(gt, "ground truth")
    pred = _as_label_array(pred, "prediction")
    _check_same_shape(gt, pred)
    if n_classes < 1:
        raise ValueError(f"n_classes={n_classes}: need at least one class")
    valid = gt != ignore
    g = gt[valid].astype(np.int64)
    if g.size and (g.min() < 0 or g.max() >= n_classes):
        bad = sorted(set(np.unique(g[(g < 0) | (g >= n_classes)]).tolist()))[:5]
        raise ValueError(
            f"ground truth holds class ids {bad} outside 0..{n_classes - 1} (ignore value {ignore})"
        )
    seg_ids, p = np.unique(pred[valid], return_inverse=True)
    k = int(seg_ids.size)
    n_cols = max(n_classes, k)
    table = contingency(g, p, n_classes, n_cols)

    rows, cols = linear_sum_assignment(table, maximize=True)
    matched_col = np.empty(n_classes, dtype=np.int64)
    matched_col[rows] = cols
    row_total = table.sum(axis=1)
    col_total = table.sum(axis=0)
    tp = table[np.arange(n_classes), matched_col].astype(np.int64)
    fn = (row_total - tp).astype(np.int64)
    fp = (col_total[matched_col] - tp).astype(np.int64)
    seg_to_class = {int(seg_ids[c]): int(r) for r, c in zip(rows, cols) if c < k}
    return ClassScores(tp=tp, fp=fp, fn=fn, n_labelled=int(valid.sum()), k=k, segment_to_class=seg_to_class)


@dataclass
class ClassTotals:
    """TP / FP / FN per class summed over a dataset."""

    n_classes: int
    tp: np.ndarray = None  # type: ignore[assignment]
    fp: np.ndarray = None  # type: ignore[assignment]
    fn: np.ndarray = None  # type: ignore[assignment]
    n_labelled: int = 0
    n_images: int = 0

    def __post_init__(self) -> None:
        for name in ("tp", "fp", "fn"):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(self.n_classes, dtype=np.int64))

    def add(self, scores: ClassScores) -> None:
        if scores.n_classes != self.n_classes:
            raise ValueError(f"scores for {scores.n_classes} classes added to totals for {self.n_classes}")
        self.tp += scores.tp
        self.fp += scores.fp
        self.fn += scores.fn
        self.n_labelled += scores.n_labelled
        self.n_images += 1

    @property
    def iou(self) -> np.ndarray:
        """Per-class IoU over the dataset; NaN where TP+FP+FN = 0 (class never seen nor predicted)."""
        return _iou(self.tp, self.fp, self.fn)

    @property
    def miou(self) -> float:
        iou = self.iou
        scored = ~np.isnan(iou)
        return float(iou[scored].mean()) if scored.any() else float("nan")

    @property
    def pixel_accuracy(self) -> float:
        return float(self.tp.sum() / self.n_labelled) if self.n_labelled else float("nan")


def aggregate_class(scores: list[ClassScores], n_classes: int) -> ClassTotals:
    totals = ClassTotals(n_classes)
    for s in scores:
        totals.add(s)
    return totals


# --------------------------------------------------------------------------- region measures (BSDS500)


def rand_index(table: np.ndarray) -> float:
    """Rand index from a contingency table, as BSDS500's ``rand_index``.

    RI = 1 − (Σ a_i²/2 + Σ b_j²/2 − Σ n_ij²) / (N(N−1)/2), with a, b the row and
    column totals: the fraction of pixel pairs on which both partitions agree.
    """
    n = np.asarray(table, dtype=np.float64)
    total = n.sum()
    if total < 2:
        return 1.0
    a = n.sum(axis=1)
    b = n.sum(axis=0)
    pairs = total * (total - 1) / 2
    return float(1.0 - ((a * a).sum() / 2 + (b * b).sum() / 2 - (n * n).sum()) / pairs)


def variation_of_information(table: np.ndarray) -> float:
    """VI = H(A) + H(B) − 2 I(A; B) in bits, as BSDS500's ``variation_of_information``."""
    n = np.asarray(table, dtype=np.float64)
    total = n.sum()
    if total == 0:
        return 0.0
    joint = n / total
    pa = joint.sum(axis=1)
    pb = joint.sum(axis=0)

    def entropy(p: np.ndarray) -> float:
        p = p[p > 0]
        return float(-(p * np.log2(p)).sum())

    nz = joint > 0
    outer = np.outer(pa, pb)
    mi = float((joint[nz] * np.log2(joint[nz] / outer[nz])).sum())
    return max(0.0, entropy(pa) + entropy(pb) - 2 * mi)


def _dense(labels: np.ndarray) -> tuple[np.ndarray, int]:
    ids, inv = np.unique(labels, return_inverse=True)
    return inv.reshape(-1), int(ids.size)


def covering_terms(table: np.ndarray) -> tuple[float, int]:
    """(Σ_R |R| · max_S IoU(R, S), Σ_R |R|) over the regions R of one annotator.

    ``table`` is the contingency table of the annotator's regions (rows) against
    the predicted segments (columns) over the same (already masked) pixels.
    """
    if table.size == 0:
        return 0.0, 0
    table = np.asarray(table, dtype=np.float64)
    area_g = table.sum(axis=1)
    area_p = table.sum(axis=0)
    union = area_g[:, None] + area_p[None, :] - table
    iou = np.where(union > 0, table / np.maximum(union, 1), 0.0)
    best = iou.max(axis=1)
    return float((area_g * best).sum()), int(area_g.sum())


@dataclass
class RegionScores:
    """One image scored against all its annotators."""

    ri: list[float]  # per annotator
    vi_per_annotator: list[float]
    covering_num: float  # Σ |R| · best IoU over every region of every annotator
    covering_den: int  # Σ |R|
    k: int  # predicted segments
    n_gt_regions: list[int]  # regions per annotator

    @property
    def pri(self) -> float:
        return float(np.mean(self.ri)) if self.ri else float("nan")

    @property
    def vi(self) -> float:
        return float(np.mean(self.vi_per_annotator)) if self.vi_per_annotator else float("nan")

    @property
    def covering(self) -> float:
        return self.covering_num / self.covering_den if self.covering_den else float("nan")

    @property
    def n_gt_classes(self) -> float:
        """Mean number of regions per annotator (the class-agnostic 'number of GT classes')."""
        return float(np.mean(self.n_gt_regions)) if self.n_gt_regions else float("nan")


def region_scores(pred: np.ndarray, gts: list[np.ndarray], ignore: int | None = IGNORE) -> RegionScores:
    """PRI / VI / covering terms of one segmentation against each annotator's regions.

    BSDS500 has no ignored pixels; pixels equal to ``ignore`` in an annotator's
    map (when given) are left out of that annotator's table.
    """
    pred = _as_label_array(pred, "prediction")
    if not gts:
        raise ValueError("region_scores needs at least one ground-truth segmentation")
    ri, vi, n_regions = [], [], []
    cov_num, cov_den = 0.0, 0
    for i, gt in enumerate(gts):
        gt = _as_label_array(gt, f"ground truth #{i}")
        _check_same_shape(gt, pred)
        valid = gt != ignore if ignore is not None else np.ones(gt.shape, dtype=bool)
        g, ng = _dense(gt[valid])
        p, npred = _dense(pred[valid])
        table = contingency(g, p, ng, npred)
        ri.append(rand_index(table))
        vi.append(variation_of_information(table))
        num, den = covering_terms(table)
        cov_num += num
        cov_den += den
        n_regions.append(ng)
    k = int(np.unique(pred).size)
    return RegionScores(ri=ri, vi_per_annotator=vi, covering_num=cov_num, covering_den=cov_den, k=k,
                        n_gt_regions=n_regions)


@dataclass
class RegionTotals:
    pri: float
    vi: float
    covering: float
    n_images: int


def aggregate_region(scores: list[RegionScores]) -> RegionTotals:
    """PRI and VI: mean over images of the per-image means; covering: pooled over all regions."""
    if not scores:
        return RegionTotals(float("nan"), float("nan"), float("nan"), 0)
    num = sum(s.covering_num for s in scores)
    den = sum(s.covering_den for s in scores)
    return RegionTotals(
        pri=float(np.mean([s.pri for s in scores])),
        vi=float(np.mean([s.vi for s in scores])),
        covering=num / den if den else float("nan"),
        n_images=len(scores),
    )


def finite_or_none(x: float) -> float | None:
    """JSON-friendly float: NaN / inf become None."""
    return None if x is None or not math.isfinite(x) else float(x)


def region_match(pred: np.ndarray, gt: np.ndarray, ignore: int | None = IGNORE) -> dict[int, int]:
    """Predicted segment id -> ground-truth region id, one to one, maximising the overlap (Hungarian).

    For colouring region figures: segments left without a region are absent from the result.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    valid = gt != ignore if ignore is not None else np.ones(gt.shape, dtype=bool)
    seg_ids, p = np.unique(pred[valid], return_inverse=True)
    gt_ids, g = np.unique(gt[valid], return_inverse=True)
    if seg_ids.size == 0:
        return {}
    table = contingency(p, g, seg_ids.size, gt_ids.size)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return {int(seg_ids[r]): int(gt_ids[c]) for r, c in zip(rows, cols) if table[r, c] > 0}
