"""Review-specific SQL: what to push, review links, reviews and their statistics.

Plain functions over a SQLAlchemy Session (the flows call them):

- `segmented_not_pushed(session, ...)`: segmented images whose latest segmentation
  has no review link for its model version yet;
- `push_for_review(session, client, project, ...) -> PushResult`: pushes them with
  `push_segmentations` and records a `review_links` row after every batch that
  landed (image status `segmented` -> `sent_for_review`); images that could not be
  sent stay `segmented` for the next run;
- `sync_reviews(client, project, session) -> SyncResult`: pulls finished annotations,
  stores them in `reviews` with their survival figures (image -> `reviewed`);
- `review_statistics(session)`: the figures `clasp report` prints.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from integrations.db.masks import decode_mask
from integrations.db.models import (
    REVIEWED,
    SEGMENTED,
    SENT_FOR_REVIEW,
    Image,
    Review,
    ReviewLink,
    SegmentRow,
    utcnow,
)
from integrations.db.models import Segmentation as SegmentationRow
from integrations.db.repository import _chunks, _finish
from integrations.label_studio.client import LabelStudioClient, LabelStudioUnavailable, Project
from integrations.label_studio.config import LabelingConfig
from integrations.label_studio.images import ImageResolver
from integrations.label_studio.predictions import RegionPolicy, model_version_from_diagnostics
from integrations.label_studio.push import PushItem, PushRecord, PushResult, push_segmentations
from integrations.label_studio.review import aggregate, regions_from_result, survival

log = logging.getLogger(__name__)


def segmentation_model_version(seg: SegmentationRow) -> str:
    d = dict(seg.diagnostics or {})
    d.setdefault("variant", seg.variant)
    return model_version_from_diagnostics(d)


def load_label_map(seg: SegmentationRow):
    return decode_mask(seg.mask, seg.mask_codec, seg.mask_height, seg.mask_width, seg.mask_dtype, seg.mask_stored_dtype)


def segmented_not_pushed(
    session: Session, *, model_version: str | None = None, variant: str | None = None, limit: int | None = None
) -> list[tuple[Image, SegmentationRow, str]]:
    """(image, its latest segmentation, model version) for segmented images without a review link."""
    latest = (
        select(SegmentationRow.image_id, func.max(SegmentationRow.id).label("sid"))
        .join(Image, Image.id == SegmentationRow.image_id)
        .where(Image.status == SEGMENTED)
    )
    if variant:
        latest = latest.where(SegmentationRow.variant == variant)
    latest = latest.group_by(SegmentationRow.image_id).subquery()
    rows = session.execute(
        select(Image, SegmentationRow)
        .join(latest, latest.c.image_id == Image.id)
        .join(SegmentationRow, SegmentationRow.id == latest.c.sid)
        .order_by(Image.id)
    ).all()
    linked = {(i, mv) for i, mv in session.execute(select(ReviewLink.image_id, ReviewLink.model_version))}
    out = []
    for image, seg in rows:
        mv = segmentation_model_version(seg)
        if model_version and mv != model_version:
            continue
        if (image.id, mv) in linked:
            continue
        out.append((image, seg, mv))
        if limit and len(out) >= limit:
            break
    return out


def push_items(session: Session, rows: list[tuple[Image, SegmentationRow, str]]) -> list[PushItem]:
    conf: dict[int, dict[int, float]] = {}  # segmentation id -> label -> confidence
    for chunk in _chunks([seg.id for _, seg, _ in rows]):
        for sid, lab, c in session.execute(
            select(SegmentRow.segmentation_id, SegmentRow.label, SegmentRow.confidence).where(
                SegmentRow.segmentation_id.in_(chunk)
            )
        ):
            conf.setdefault(sid, {})[int(lab)] = float(c)
    return [
        PushItem(image.id, image.uri, (lambda s=seg: load_label_map(s)), mv, conf.get(seg.id, {}), seg.id)
        for image, seg, mv in rows
    ]


def record_links(session: Session, records: list[PushRecord], *, commit: bool = True) -> None:
    """Insert or update the review link of every pushed (or found) task; images -> sent_for_review."""
    if not records:
        return
    now = utcnow()
    image_ids = sorted({r.image_id for r in records})
    links: dict[tuple[int, str], ReviewLink] = {}
    for chunk in _chunks(image_ids):
        for link in session.execute(select(ReviewLink).where(ReviewLink.image_id.in_(chunk))).scalars():
            links[(link.image_id, link.model_version)] = link
    for r in records:
        link = links.get((r.image_id, r.model_version))
        if link is None:
            link = links[(r.image_id, r.model_version)] = ReviewLink(
                image_id=r.image_id,
                segmentation_id=r.segmentation_id,
                ls_project_id=r.project_id,
                ls_task_id=r.task_id,
                ls_prediction_id=r.prediction_id,
                model_version=r.model_version,
                sent_at=now,
            )
            session.add(link)
        else:
            link.ls_project_id = r.project_id
            link.ls_task_id = r.task_id
            if r.prediction_id is not None:
                link.ls_prediction_id = r.prediction_id
            if r.segmentation_id is not None and link.segmentation_id is None:
                link.segmentation_id = r.segmentation_id
    session.execute(
        update(Image)
        .where(Image.id.in_(image_ids), Image.status == SEGMENTED)
        .values(status=SENT_FOR_REVIEW, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    _finish(session, commit)


def push_for_review(
    session: Session,
    client: LabelStudioClient,
    project: Project,
    *,
    model_version: str | None = None,
    variant: str | None = None,
    limit: int | None = None,
    labeling: LabelingConfig | None = None,
    policy: RegionPolicy | None = None,
    resolver: ImageResolver | None = None,
    batch_size: int = 50,
    retries: int = 4,
    backoff: float = 1.0,
) -> PushResult:
    rows = segmented_not_pushed(session, model_version=model_version, variant=variant, limit=limit)
    items = push_items(session, rows)
    session.commit()  # end the read transaction before talking to Label Studio (SQLite write lock)
    return push_segmentations(
        client,
        project,
        items,
        labeling=labeling,
        policy=policy,
        resolver=resolver,
        batch_size=batch_size,
        retries=retries,
        backoff=backoff,
        on_batch=lambda recs: record_links(session, recs),
    )


# --------------------------------------------------------------------------- reviews back


@dataclass
class SyncResult:
    project_id: int
    tasks_seen: int = 0
    reviews_new: int = 0
    reviews_updated: int = 0
    unchanged: int = 0
    unknown_tasks: list[int] = field(default_factory=list)  # annotated tasks with no review link
    cancelled: int = 0
    stats: dict[str, Any] = field(default_factory=dict)  # aggregate over the reviews seen now
    per_task: dict[int, dict[str, Any]] = field(default_factory=dict)  # task id -> survival (latest annotation)
    error: str | None = None
    exemplars: dict[str, Any] = field(default_factory=dict)  # issue 12: what the new reviews taught (ExemplarUpdate)

    def summary(self) -> dict[str, Any]:
        return {
            "project_id": self.project_id,
            "tasks_seen": self.tasks_seen,
            "reviews_new": self.reviews_new,
            "reviews_updated": self.reviews_updated,
            "unchanged": self.unchanged,
            "unknown_tasks": len(self.unknown_tasks),
            "cancelled": self.cancelled,
            "error": self.error,
            "survival": self.stats,
        }


def _reviewer(ann: dict) -> str | None:
    who = ann.get("completed_by")
    if isinstance(who, dict):
        return str(who.get("email") or who.get("username") or who.get("id"))[:200]
    return None if who is None else str(who)[:200]


def _when(ann: dict) -> dt.datetime | None:
    for k in ("updated_at", "created_at"):
        v = ann.get(k)
        if v:
            try:
                return dt.datetime.fromisoformat(str(v).replace("Z", "+00:00"))
            except ValueError:
                continue
    return None


def sync_reviews(
    client: LabelStudioClient,
    project: Project,
    session: Session,
    *,
    labeling: LabelingConfig | None = None,
    match_iou: float = 0.5,
) -> SyncResult:
    """Pull finished annotations, store them with survival figures, mark images reviewed."""
    labeling = labeling or LabelingConfig()
    result = SyncResult(project.id)
    try:
        tasks = client.annotated_tasks(project.id)
    except LabelStudioUnavailable as e:
        result.error = str(e)
        return result
    links = {
        l.ls_task_id: l
        for l in session.execute(select(ReviewLink).where(ReviewLink.ls_project_id == project.id)).scalars()
    }
    reviews: dict[int, Review] = {}  # annotation id -> stored review, for the annotations handled below
    ann_ids = [
        int(ann["id"])
        for task in tasks
        if int(task["id"]) in links
        for ann in task.get("annotations") or []
        if not ann.get("was_cancelled")
    ]
    for chunk in _chunks(ann_ids):
        for row in session.execute(select(Review).where(Review.ls_annotation_id.in_(chunk))).scalars():
            reviews[row.ls_annotation_id] = row
    seen_stats = []
    changed: list[Review] = []  # new or edited reviews: their exemplars are upserted after the commit
    reviewed_images: set[int] = set()
    for task in tasks:
        result.tasks_seen += 1
        tid = int(task["id"])
        link = links.get(tid)
        if link is None:
            result.unknown_tasks.append(tid)
            continue
        preds = [p for p in task.get("predictions") or [] if isinstance(p, dict)]
        if not preds:  # the export lists prediction ids only: read the task's predictions
            preds = client.task_predictions(tid)
        preds = [p for p in preds if p.get("model_version") == link.model_version]
        proposals = regions_from_result(preds[0].get("result", []), labeling.from_name) if preds else []
        for ann in sorted(task.get("annotations") or [], key=lambda a: a.get("id", 0)):
            if ann.get("was_cancelled"):
                result.cancelled += 1
                continue
            final = regions_from_result(ann.get("result", []), labeling.from_name)
            stats = survival(proposals, final, neutral_label=labeling.neutral_label, match_iou=match_iou)
            stats["model_version"] = link.model_version
            ann_id = int(ann["id"])
            row = reviews.get(ann_id)
            if row is None:
                reviews[ann_id] = Review(
                    review_link_id=link.id,
                    ls_annotation_id=ann_id,
                    result=ann.get("result", []),
                    reviewer=_reviewer(ann),
                    completed_at=_when(ann),
                    survival=stats,
                )
                session.add(reviews[ann_id])
                changed.append(reviews[ann_id])
                result.reviews_new += 1
            elif row.result != ann.get("result", []) or row.survival != stats:
                row.result = ann.get("result", [])
                row.survival = stats
                row.reviewer = _reviewer(ann)
                row.completed_at = _when(ann)
                changed.append(row)
                result.reviews_updated += 1
            else:
                result.unchanged += 1
            result.per_task[tid] = stats
            seen_stats.append(stats)
            reviewed_images.add(link.image_id)
    if reviewed_images:
        session.execute(
            update(Image)
            .where(Image.id.in_(reviewed_images), Image.status.in_((SENT_FOR_REVIEW, SEGMENTED)))
            .values(status=REVIEWED, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    session.commit()
    result.stats = aggregate(seen_stats)
    if changed:  # issue 12: learning from reviews (exemplars for label suggestions)
        from dataclasses import asdict

        from integrations.review.exemplars import exemplars_from_reviews

        result.exemplars = asdict(exemplars_from_reviews(session, changed, labeling=labeling, match_iou=match_iou))
    return result


def review_statistics(session: Session, *, model_version: str | None = None) -> dict[str, Any]:
    """Survival figures over the stored reviews (latest review per task), overall and per model version."""
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
    sent = dict(session.execute(links_q).all())
    per_mv: dict[str, list[dict]] = {}
    for (mv, _), (_, surv) in latest.items():
        per_mv.setdefault(mv, []).append(surv)
    by_version = {}
    for mv in sorted(set(sent) | set(per_mv)):
        agg = aggregate(per_mv.get(mv, []))
        by_version[mv] = {"tasks_sent": int(sent.get(mv, 0)), "tasks_reviewed": agg["tasks"], **agg}
    overall = aggregate([s for v in per_mv.values() for s in v])
    return {"tasks_sent": int(sum(sent.values())), "tasks_reviewed": overall["tasks"], **overall, "by_model_version": by_version}
