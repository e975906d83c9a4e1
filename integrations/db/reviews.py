"""The review tables in SQL: which results wait for review, links to Label Studio tasks,
stored reviews and their survival figures. SQL only: talking to Label Studio and
computing the figures is `integrations.review`'s job.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any, Protocol

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from integrations.db.batching import chunks, commit_or_flush
from integrations.db.models import (
    REVIEWED,
    SEGMENTED,
    SENT_FOR_REVIEW,
    Image,
    Review,
    ReviewLink,
    SegmentationRecord,
    SegmentRow,
    utcnow,
)


class LinkedTask(Protocol):
    """What `record_links` needs of a pushed task (integrations.label_studio's PushRecord has it)."""

    image_id: int
    segmentation_id: int | None
    model_version: str
    project_id: int
    task_id: int
    prediction_id: int | None


# --------------------------------------------------------------------------- before a push


def latest_segmented(session: Session, *, variant: str | None = None) -> list[tuple[Image, SegmentationRecord]]:
    """(image, its latest segmentation) for every image in status `segmented`, by image id."""
    latest = (
        select(SegmentationRecord.image_id, func.max(SegmentationRecord.id).label("sid"))
        .join(Image, Image.id == SegmentationRecord.image_id)
        .where(Image.status == SEGMENTED)
    )
    if variant:
        latest = latest.where(SegmentationRecord.variant == variant)
    latest = latest.group_by(SegmentationRecord.image_id).subquery()
    rows = session.execute(
        select(Image, SegmentationRecord)
        .join(latest, latest.c.image_id == Image.id)
        .join(SegmentationRecord, SegmentationRecord.id == latest.c.sid)
        .order_by(Image.id)
    ).all()
    return [(image, seg) for image, seg in rows]


def linked_keys(session: Session) -> set[tuple[int, str]]:
    """(image id, model version) of every review link: what was already pushed."""
    return {(i, mv) for i, mv in session.execute(select(ReviewLink.image_id, ReviewLink.model_version))}


def segment_confidences(session: Session, segmentation_ids: Iterable[int]) -> dict[int, dict[int, float]]:
    """segmentation id -> segment label -> confidence, in one query per chunk of ids."""
    conf: dict[int, dict[int, float]] = {}
    for chunk in chunks(list(segmentation_ids)):
        for sid, lab, c in session.execute(
            select(SegmentRow.segmentation_id, SegmentRow.label, SegmentRow.confidence).where(
                SegmentRow.segmentation_id.in_(chunk)
            )
        ):
            conf.setdefault(sid, {})[int(lab)] = float(c)
    return conf


# --------------------------------------------------------------------------- after a push


def record_links(session: Session, records: list[LinkedTask], *, commit: bool = True) -> None:
    """Insert or update the review link of every pushed (or found) task; images -> sent_for_review."""
    if not records:
        return
    now = utcnow()
    image_ids = sorted({r.image_id for r in records})
    links: dict[tuple[int, str], ReviewLink] = {}
    for chunk in chunks(image_ids):
        for link in session.execute(select(ReviewLink).where(ReviewLink.image_id.in_(chunk))).scalars():
            links[(link.image_id, link.model_version)] = link
    for r in records:
        link = links.get((r.image_id, r.model_version))
        if link is None:
            link = links[(r.image_id, r.model_version)] = ReviewLink(
                image_id=r.image_id, model_version=r.model_version, sent_at=now
            )
            session.add(link)
        link.ls_project_id = r.project_id
        link.ls_task_id = r.task_id
        if r.prediction_id is not None:  # known once the push has read the prediction ids back
            link.ls_prediction_id = r.prediction_id
        if r.segmentation_id is not None and link.segmentation_id is None:
            link.segmentation_id = r.segmentation_id
    session.execute(
        update(Image)
        .where(Image.id.in_(image_ids), Image.status == SEGMENTED)
        .values(status=SENT_FOR_REVIEW, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    commit_or_flush(session, commit)


# --------------------------------------------------------------------------- reviews back


def project_links(session: Session, project_id: int) -> dict[int, ReviewLink]:
    """Label Studio task id -> review link, for one project."""
    stmt = select(ReviewLink).where(ReviewLink.ls_project_id == project_id)
    return {link.ls_task_id: link for link in session.execute(stmt).scalars()}


def reviews_by_annotation(session: Session, annotation_ids: Iterable[int]) -> dict[int, Review]:
    """Label Studio annotation id -> stored review, for those already stored."""
    out: dict[int, Review] = {}
    for chunk in chunks(list(annotation_ids)):
        for row in session.execute(select(Review).where(Review.ls_annotation_id.in_(chunk))).scalars():
            out[row.ls_annotation_id] = row
    return out


def save_review(
    session: Session,
    stored: dict[int, Review],
    link: ReviewLink,
    annotation_id: int,
    result: Any,
    *,
    reviewer: str | None,
    completed_at: dt.datetime | None,
    survival: dict[str, Any],
) -> str:
    """Store or update one annotation's review; `stored` (annotation id -> Review) is
    updated in place. Returns "new", "updated" or "unchanged". Does not commit."""
    row = stored.get(annotation_id)
    if row is None:
        stored[annotation_id] = Review(
            review_link_id=link.id,
            ls_annotation_id=annotation_id,
            result=result,
            reviewer=reviewer,
            completed_at=completed_at,
            survival=survival,
        )
        session.add(stored[annotation_id])
        return "new"
    if row.result != result or row.survival != survival:
        row.result = result
        row.survival = survival
        row.reviewer = reviewer
        row.completed_at = completed_at
        return "updated"
    return "unchanged"


def mark_reviewed(session: Session, image_ids: Iterable[int]) -> None:
    """Images sent for review (or segmented) -> reviewed. Does not commit."""
    ids = list(image_ids)
    if ids:
        session.execute(
            update(Image)
            .where(Image.id.in_(ids), Image.status.in_((SENT_FOR_REVIEW, SEGMENTED)))
            .values(status=REVIEWED, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )


def stored_survivals(
    session: Session, *, model_version: str | None = None
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    """The survival figures of the latest review of every task, by model version, and
    the number of tasks sent per model version (`model_version` keeps only that one)."""
    q = select(ReviewLink.model_version, ReviewLink.ls_task_id, Review.survival, Review.id).join(
        Review, Review.review_link_id == ReviewLink.id
    )
    if model_version:
        q = q.where(ReviewLink.model_version == model_version)
    latest: dict[tuple[str, int], tuple[int, dict]] = {}
    for mv, tid, surv, rid in session.execute(q):
        if surv and ((mv, tid) not in latest or rid > latest[(mv, tid)][0]):
            latest[(mv, tid)] = (rid, surv)
    links_q = select(ReviewLink.model_version, func.count(ReviewLink.id)).group_by(ReviewLink.model_version)
    if model_version:
        links_q = links_q.where(ReviewLink.model_version == model_version)
    sent = {mv: int(n) for mv, n in session.execute(links_q).all()}
    per_mv: dict[str, list[dict[str, Any]]] = {}
    for (mv, _), (_, surv) in latest.items():
        per_mv.setdefault(mv, []).append(surv)
    return per_mv, sent


__all__ = [
    "LinkedTask",
    "latest_segmented",
    "linked_keys",
    "mark_reviewed",
    "project_links",
    "record_links",
    "reviews_by_annotation",
    "save_review",
    "segment_confidences",
    "stored_survivals",
]
