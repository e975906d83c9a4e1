"""How much of a proposal survived review: pure figures over region masks.

For one task, given the proposed regions (our prediction) and the reviewer's final
regions (the annotation):
- `best_iou`: for every final region, the IoU with its best-matching proposal;
- a proposal is *kept unchanged* when a final region has exactly its mask (the
  label may have changed: that is the point of review, counted as `relabelled`);
- *redrawn* when its best final region overlaps it with IoU >= `match_iou` but
  not exactly;
- *deleted* when no final region reaches `match_iou` with it;
- final regions that match no proposal (IoU < `match_iou`) are *added* (drawn by hand).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from integrations.label_studio.config import is_proposal_label
from integrations.label_studio.rle import decode_mask

DEFAULT_MATCH_IOU = 0.5


@dataclass
class RegionMask:
    region_id: str | None
    mask: np.ndarray  # bool (H, W)
    labels: tuple[str, ...] = ()


def regions_from_result(result: Iterable[dict[str, Any]], from_name: str | None = None) -> list[RegionMask]:
    """Decode the brush regions of a Label Studio result list (prediction or annotation)."""
    out: list[RegionMask] = []
    for r in result or []:
        if r.get("type", "").lower() != "brushlabels" or (from_name and r.get("from_name") != from_name):
            continue
        value = r.get("value") or {}
        rle = value.get("rle")
        if rle is None:
            continue
        h, w = int(r["original_height"]), int(r["original_width"])
        out.append(RegionMask(r.get("id"), decode_mask(rle, h, w), tuple(value.get("brushlabels") or ())))
    return out


def _iou_matrix(a: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
    if not a or not b:
        return np.zeros((len(a), len(b)))
    A = np.stack([m.ravel() for m in a]).astype(np.float32)
    B = np.stack([m.ravel() for m in b]).astype(np.float32)
    inter = A @ B.T
    union = A.sum(1)[:, None] + B.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def survival(
    proposals: list[RegionMask],
    final: list[RegionMask],
    *,
    neutral_label: str = "region",
    match_iou: float = DEFAULT_MATCH_IOU,
) -> dict[str, Any]:
    """Survival figures for one task (JSON-ready)."""
    iou = _iou_matrix([p.mask for p in final], [p.mask for p in proposals])  # final x proposals
    n_p, n_f = len(proposals), len(final)
    best_iou = iou.max(axis=1) if n_p else np.zeros(n_f)
    kept = redrawn = deleted = relabelled = 0
    per_proposal = []
    for j, p in enumerate(proposals):
        col = iou[:, j] if n_f else np.zeros(0)
        exact = [i for i in range(n_f) if final[i].mask.shape == p.mask.shape and np.array_equal(final[i].mask, p.mask)]
        if exact:
            fate, i_best = "kept", exact[0]
            kept += 1
        elif n_f and col.max() >= match_iou:
            fate, i_best = "redrawn", int(np.argmax(col))
            redrawn += 1
        else:
            fate, i_best = "deleted", None
            deleted += 1
        final_labels = list(final[i_best].labels) if i_best is not None else []
        if i_best is not None and final_labels and not all(is_proposal_label(lab, neutral_label) for lab in final_labels):
            relabelled += 1
        per_proposal.append(
            {
                "region_id": p.region_id,
                "fate": fate,
                "best_iou": round(float(col.max()) if n_f else 0.0, 6),
                "final_labels": final_labels,
            }
        )
    added = int((best_iou < match_iou).sum()) if n_f else 0
    label_counts: dict[str, int] = {}
    for f in final:
        for lab in f.labels:
            lab = neutral_label if is_proposal_label(lab, neutral_label) else lab  # region-3 counts as `region`
            label_counts[lab] = label_counts.get(lab, 0) + 1
    share = (lambda n: round(n / n_p, 6)) if n_p else (lambda n: 0.0)
    return {
        "n_proposals": n_p,
        "n_final": n_f,
        "best_iou": [round(float(x), 6) for x in best_iou],
        "mean_best_iou": round(float(best_iou.mean()), 6) if n_f else None,
        "kept": kept,
        "redrawn": redrawn,
        "deleted": deleted,
        "added": added,
        "relabelled": relabelled,
        "share_kept": share(kept),
        "share_redrawn": share(redrawn),
        "share_deleted": share(deleted),
        "match_iou": match_iou,
        "labels": label_counts,
        "proposals": per_proposal,
    }


def aggregate(stats: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Totals over many tasks: proposal-weighted shares, mean of per-region best IoU."""
    stats = [s for s in stats if s]
    n_p = sum(s["n_proposals"] for s in stats)
    ious = [x for s in stats for x in s.get("best_iou", [])]
    keys = ("kept", "redrawn", "deleted", "added", "relabelled")
    tot = {k: sum(s.get(k, 0) for s in stats) for k in keys}
    labels: dict[str, int] = {}
    for s in stats:
        for k, v in s.get("labels", {}).items():
            labels[k] = labels.get(k, 0) + v
    return {
        "tasks": len(stats),
        "n_proposals": n_p,
        "n_final": sum(s["n_final"] for s in stats),
        **tot,
        "share_kept": round(tot["kept"] / n_p, 4) if n_p else 0.0,
        "share_redrawn": round(tot["redrawn"] / n_p, 4) if n_p else 0.0,
        "share_deleted": round(tot["deleted"] / n_p, 4) if n_p else 0.0,
        "mean_best_iou": round(float(np.mean(ious)), 4) if ious else None,
        "labels": labels,
    }
