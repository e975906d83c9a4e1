"""Status and dashboard queries: images per status, K chosen, throughput, failure reasons.
Read-only; `clasp status` and the flows' summaries print them."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Integer, cast, func, select
from sqlalchemy.orm import Session

from integrations.db.dialect import dialect_name
from integrations.db.models import FAILED, IMAGE_STATUSES, FailureRecord, Image, SegmentationRecord


def counts_by_status(session: Session) -> dict[str, int]:
    """Number of images in each status (every status present, zeros included)."""
    counts = dict.fromkeys(IMAGE_STATUSES, 0)
    for status, n in session.execute(select(Image.status, func.count()).group_by(Image.status)):
        counts[status] = int(n)
    return counts


def k_distribution(session: Session, *, run_id: int | None = None, variant: str | None = None) -> dict[int, int]:
    """How many segmentations chose each K."""
    stmt = select(SegmentationRecord.k, func.count()).group_by(SegmentationRecord.k).order_by(SegmentationRecord.k)
    if run_id is not None:
        stmt = stmt.where(SegmentationRecord.run_id == run_id)
    if variant is not None:
        stmt = stmt.where(SegmentationRecord.variant == variant)
    return {int(k): int(n) for k, n in session.execute(stmt)}


def throughput(
    session: Session,
    *,
    bucket_seconds: int = 60,
    since: dt.datetime | None = None,
    run_id: int | None = None,
) -> list[tuple[dt.datetime, int]]:
    """Segmentations stored per time bucket: [(bucket start (UTC), count)], oldest first."""
    b = max(1, int(bucket_seconds))
    if dialect_name(session) == "postgresql":
        epoch = func.floor(func.extract("epoch", SegmentationRecord.created_at) / b) * b
    else:
        epoch = cast(func.strftime("%s", SegmentationRecord.created_at), Integer) / b * b
    bucket = epoch.label("bucket")
    stmt = select(bucket, func.count()).group_by(bucket).order_by(bucket)
    if since is not None:
        stmt = stmt.where(SegmentationRecord.created_at >= since)
    if run_id is not None:
        stmt = stmt.where(SegmentationRecord.run_id == run_id)
    return [
        (dt.datetime.fromtimestamp(int(e), tz=dt.timezone.utc), int(n)) for e, n in session.execute(stmt)
    ]


def failure_reasons(session: Session, *, limit: int = 20) -> list[tuple[str, int]]:
    """Reasons of images that ended failed, most frequent first."""
    n = func.count().label("n")
    stmt = (
        select(Image.last_error, n)
        .where(Image.status == FAILED)
        .group_by(Image.last_error)
        .order_by(n.desc(), Image.last_error)
        .limit(limit)
    )
    return [(reason or "(no reason recorded)", int(c)) for reason, c in session.execute(stmt)]


def failed_images(session: Session, *, limit: int | None = 20) -> list[tuple[int, str, str]]:
    """The images that ended failed, newest first: [(id, uri, reason)]; all of them with `limit=None`."""
    stmt = (
        select(Image.id, Image.uri, Image.last_error)
        .where(Image.status == FAILED)
        .order_by(Image.updated_at.desc(), Image.id.desc())
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return [(int(i), uri, reason or "(no reason recorded)") for i, uri, reason in session.execute(stmt)]


def run_failures(session: Session, run_id: int, *, limit: int | None = 20) -> list[tuple[int, str, str, bool]]:
    """Failures recorded under run `run_id`, oldest first: [(image id, uri, reason, final)];
    all of them with `limit=None`. `final` is False for an attempt put back in the queue and
    for a step that failed after the result was stored (an overlay)."""
    stmt = (
        select(FailureRecord.image_id, Image.uri, FailureRecord.reason, FailureRecord.final)
        .join(Image, Image.id == FailureRecord.image_id)
        .where(FailureRecord.run_id == run_id)
        .order_by(FailureRecord.id)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return [(int(i), uri, reason, bool(final)) for i, uri, reason, final in session.execute(stmt)]


__all__ = ["counts_by_status", "failed_images", "run_failures", "failure_reasons", "k_distribution", "throughput"]
