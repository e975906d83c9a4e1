"""Exemplars from reviews: a reviewed region's final label on its proposal's embedding.

When a review is synced, every proposal (stored segment) of the reviewed
segmentation is matched to the reviewer's final regions by the same rule the
survival figures use (:func:`integrations.label_studio.review.survival`: an
exact mask is *kept*, else the final region with the best IoU >= ``match_iou``
*redrew* it, else it was *deleted*). A kept or redrawn proposal whose final
label is in the project's taxonomy and is not the neutral label becomes (or
updates) the exemplar of that segment; a deleted proposal, or one left neutral,
is no exemplar (an earlier exemplar of it is deactivated).

Never an error for the reviewer's input: a final region matching no proposal
and a label outside the config give a log line each.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from integrations.db.masks import decode_label_map
from integrations.db.models import Exemplar, Review, ReviewLink, SegmentationRecord, SegmentRow, utcnow
from integrations.db.vector import VectorDimensionError, vector_bytes
from integrations.label_studio.config import LabelingConfig
from integrations.label_studio.review import DEFAULT_MATCH_IOU, RegionMask, regions_from_result, survival

log = logging.getLogger(__name__)


@dataclass
class ExemplarUpdate:
    """What one sync did to the exemplars (JSON-ready through ``asdict``)."""

    added: int = 0
    relabelled: int = 0
    unchanged: int = 0
    deactivated: int = 0  # proposals deleted (or left neutral) in a later review
    unmatched_regions: int = 0  # final regions that match no proposal (drawn by hand)
    unknown_labels: dict[str, int] = field(default_factory=dict)  # label outside the config -> count
    no_embedding: int = 0  # matched proposals stored without an embedding (older segmentations)

    def merge(self, other: "ExemplarUpdate") -> None:
        for name in ("added", "relabelled", "unchanged", "deactivated", "unmatched_regions", "no_embedding"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for k, v in other.unknown_labels.items():
            self.unknown_labels[k] = self.unknown_labels.get(k, 0) + v


@dataclass(frozen=True)
class ProposalLabel:
    """The final label of one proposal (``None``: deleted, left neutral or unusable)."""

    segment_label: int
    label: str | None
    fate: str  # kept | redrawn | deleted


def proposal_labels(
    label_map: np.ndarray,
    final: list[RegionMask],
    labeling: LabelingConfig,
    *,
    match_iou: float = DEFAULT_MATCH_IOU,
    report: ExemplarUpdate | None = None,
    where: str = "review",
) -> list[ProposalLabel]:
    """Match every segment of ``label_map`` to the final regions; its final label or None.

    Parameters
    ----------
    label_map : ndarray (H, W)
        The stored segmentation (segment label per pixel).
    final : list of RegionMask
        The reviewer's final regions (decoded annotation).
    labeling : LabelingConfig
        The project's taxonomy; labels outside it are logged and ignored.
    match_iou : float
        The survival figures' matching threshold.
    report : ExemplarUpdate, optional
        Counts unmatched regions and unknown labels here.
    where : str
        Names the review in log lines.
    """
    report = report if report is not None else ExemplarUpdate()
    labels = np.asarray(label_map)
    present = [int(v) for v in np.unique(labels)]
    proposals = [RegionMask(str(v), labels == v) for v in present]
    final = [f for f in final if f.mask.shape == labels.shape] + [
        f for f in final if f.mask.shape != labels.shape and _log_shape(f, labels.shape, where)]
    stats = survival(proposals, final, neutral_label=labeling.neutral_label, match_iou=match_iou)
    unmatched = [i for i, iou in enumerate(stats["best_iou"]) if iou < match_iou]
    if unmatched:
        report.unmatched_regions += len(unmatched)
        log.info("%s: %d final region(s) match no proposal (IoU < %.2f): no exemplar from them",
                 where, len(unmatched), match_iou)
    out = []
    for seg_label, p in zip(present, stats["proposals"]):
        chosen = None
        for name in p["final_labels"]:
            if name == labeling.neutral_label:
                continue
            if name not in labeling.taxonomy:
                report.unknown_labels[name] = report.unknown_labels.get(name, 0) + 1
                log.info("%s: label %r is not in the project's config %s: ignored", where, name, labeling.labels)
                continue
            chosen = name
            break
        out.append(ProposalLabel(seg_label, chosen, p["fate"]))
    return out


def _log_shape(region: RegionMask, shape: tuple[int, ...], where: str) -> bool:
    log.info("%s: final region %s is %s, the proposal is %s: not matched", where, region.region_id,
             region.mask.shape, shape)
    return False


def exemplars_from_review(
    session: Session,
    review: Review,
    *,
    labeling: LabelingConfig | None = None,
    match_iou: float = DEFAULT_MATCH_IOU,
) -> ExemplarUpdate:
    """Upsert the exemplars one stored review implies (no commit)."""
    labeling = labeling or LabelingConfig()
    report = ExemplarUpdate()
    link = session.get(ReviewLink, review.review_link_id)
    where = f"review {review.id} (annotation {review.ls_annotation_id})"
    if link is None or link.segmentation_id is None:
        log.info("%s: no stored segmentation to learn from", where)
        return report
    seg = session.get(SegmentationRecord, link.segmentation_id)
    label_map = decode_label_map(seg.mask, seg.mask_codec, seg.mask_height, seg.mask_width, seg.mask_dtype,
                            seg.mask_stored_dtype)
    final = regions_from_result(review.result or [], labeling.from_name)
    matches = proposal_labels(label_map, final, labeling, match_iou=match_iou, report=report, where=where)
    rows = {r.label: r for r in session.execute(
        select(SegmentRow).where(SegmentRow.segmentation_id == seg.id)).scalars()}
    existing = {e.segment_id: e for e in session.execute(
        select(Exemplar).where(Exemplar.segment_id.in_([r.id for r in rows.values()]))).scalars()}
    now = utcnow()
    for m in matches:
        row = rows.get(m.segment_label)
        if row is None:
            continue
        ex = existing.get(row.id)
        if m.label is None:
            if ex is not None and ex.active:
                ex.active, ex.review_id, ex.updated_at = False, review.id, now
                report.deactivated += 1
            continue
        if row.embedding is None:
            report.no_embedding += 1
            continue
        if ex is None:
            _check_dimension(session, row.embedding_model, int(row.embedding_dim))
            session.add(Exemplar(segment_id=row.id, label=m.label, embedding=row.embedding,
                                 embedding_dim=row.embedding_dim, embedding_model=row.embedding_model,
                                 review_id=review.id, active=True, created_at=now, updated_at=now))
            report.added += 1
        elif ex.label != m.label or not ex.active:
            ex.label, ex.active, ex.review_id, ex.updated_at = m.label, True, review.id, now
            report.relabelled += 1
        else:
            report.unchanged += 1
    session.flush()
    return report


def exemplars_from_reviews(
    session: Session,
    reviews: Iterable[Review],
    *,
    labeling: LabelingConfig | None = None,
    match_iou: float = DEFAULT_MATCH_IOU,
    commit: bool = True,
) -> ExemplarUpdate:
    """Upsert the exemplars of several reviews, oldest annotation first (a later one wins)."""
    total = ExemplarUpdate()
    for review in sorted(reviews, key=lambda r: (r.ls_annotation_id, r.id or 0)):
        total.merge(exemplars_from_review(session, review, labeling=labeling, match_iou=match_iou))
    if commit:
        session.commit()
    return total


def _check_dimension(session: Session, model: str, dim: int) -> None:
    stored = session.execute(
        select(Exemplar.embedding_dim).where(Exemplar.embedding_model == model).limit(1)).scalar()
    if stored is not None and stored != dim:
        raise VectorDimensionError(
            f"embedding of dimension {dim} for model {model!r}, whose exemplars have dimension {stored}: "
            "the same backbone identity must always give the same dimension")


def insert_exemplars(
    session: Session,
    labels: list[str],
    embeddings: np.ndarray,
    model: str,
    *,
    segment_ids: list[int | None] | None = None,
    commit: bool = True,
) -> int:
    """Bulk-insert exemplars (one executemany); returns how many were written.

    Raises
    ------
    VectorDimensionError
        When ``embeddings`` is not 2-D, or its dimension differs from the exemplars
        already stored for ``model``.
    """
    emb = np.asarray(embeddings, dtype="<f4")
    if emb.ndim != 2 or len(emb) != len(labels):
        raise VectorDimensionError(f"embeddings {emb.shape} for {len(labels)} labels: expected (n, d)")
    dim = int(emb.shape[1])
    _check_dimension(session, model, dim)
    now = utcnow()
    segment_ids = segment_ids or [None] * len(labels)
    rows: list[dict[str, Any]] = [
        {"segment_id": s, "label": lab, "embedding": vector_bytes(v, dim), "embedding_dim": dim,
         "embedding_model": model, "active": True, "created_at": now, "updated_at": now}
        for s, lab, v in zip(segment_ids, labels, emb)
    ]
    if rows:
        session.execute(Exemplar.__table__.insert(), rows)
    if commit:
        session.commit()
    return len(rows)


def deactivate_exemplars(session: Session, ids: list[int], *, commit: bool = True) -> None:
    session.execute(update(Exemplar).where(Exemplar.id.in_(ids)).values(active=False, updated_at=utcnow())
                    .execution_options(synchronize_session=False))
    if commit:
        session.commit()
