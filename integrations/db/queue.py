"""The work queue: claim, lease, renew, fail, release and reclaim images.

Every operation is one transaction and commits before it returns (pass
`commit=False` to compose several into one transaction yourself; on SQLite an
open transaction holds the database's write lock, so keep it short).

Work queue, in one picture::

    add_images ─────> waiting ──claim_batch──> claimed ──store_segmentation──> segmented
                          ^                         │
                          │  record_failure(retryable, attempts < max)
                          │  reclaim_expired (lease ran out, attempts < max)
                          └─────────────────────────┤
                                                    └──> failed (reason kept in last_error)

- `claim_batch` is one atomic statement: on PostgreSQL a CTE that selects
  waiting rows `FOR UPDATE SKIP LOCKED` and an UPDATE ... RETURNING over it; on
  SQLite an UPDATE ... RETURNING (SQLite >= 3.35) inside a `BEGIN IMMEDIATE`
  transaction (see session.py). No image is handed to two workers.
- Only the lease holder may store or fail an image: a worker whose lease
  expired and was reclaimed (the image is waiting again or held by another
  worker) gets `LeaseLostError` and writes nothing (the session's transaction is
  rolled back, including earlier `commit=False` work in it). A lease that expired but was
  not yet reclaimed still lets its holder finish: the work is done, keep it.
- Lease times use the database clock on PostgreSQL (workers on several hosts)
  and this machine's clock on SQLite (one machine by construction).
- `add_images` is in registry.py, `store_segmentation(s)` in results.py; this module
  holds the lease rules they share (`lease_lost`, `LeaseLostError`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import case, select, update
from sqlalchemy.orm import Session

from integrations.db.batching import chunks, commit_or_flush
from integrations.db.dialect import db_now, db_now_plus, dialect_name, insert_for
from integrations.db.models import CLAIMED, FAILED, WAITING, FailureRecord, Image, SegmentationRun, utcnow

MAX_REASON_LENGTH = 2000


class LeaseLostError(RuntimeError):
    """The worker no longer holds the image's lease (it expired and was reclaimed)."""

    def __init__(self, image_id: int, worker_id: str, detail: str):
        self.image_id = image_id
        self.worker_id = worker_id
        super().__init__(f"image {image_id}: worker {worker_id!r} does not hold its lease ({detail}); nothing written")


def clean_reason(text: str) -> str:
    """One line of at most MAX_REASON_LENGTH characters ("unknown error" when empty)."""
    text = " ".join(str(text).split()) or "unknown error"
    return text if len(text) <= MAX_REASON_LENGTH else text[: MAX_REASON_LENGTH - 1] + "…"


def lease_lost(session: Session, image_id: int, worker_id: str) -> LeaseLostError:
    """The error to raise when `worker_id` does not hold `image_id`'s lease; rolls the
    session's transaction back first, so that nothing of the attempt is written."""
    row = session.execute(select(Image.status, Image.claimed_by).where(Image.id == image_id)).first()
    if row is None:
        detail = "no such image"
    elif row[0] == CLAIMED:
        detail = f"now claimed by {row[1]!r}"
    else:
        detail = f"image is {row[0]}"
    session.rollback()
    return LeaseLostError(image_id, worker_id, detail)


@dataclass(frozen=True)
class ClaimedImage:
    id: int
    uri: str
    content_sha256: str | None
    attempts: int  # including this one
    lease_expires_at: dt.datetime
    worker_id: str


@dataclass(frozen=True)
class ReclaimResult:
    requeued: int
    failed: int


def claim_batch(
    session: Session,
    worker_id: str,
    n: int,
    lease_seconds: float,
    *,
    reclaim: bool = True,
    max_attempts: int = 3,
    commit: bool = True,
) -> list[ClaimedImage]:
    """Atomically claim up to `n` waiting images for `worker_id` with a lease.

    With `reclaim` (default) expired leases are first put back in the queue (or
    failed after `max_attempts`), so a worker that died does not strand images.
    """
    if n < 1:
        return []
    if reclaim:
        reclaim_expired(session, max_attempts=max_attempts, commit=False)
    values = dict(
        status=CLAIMED,
        claimed_by=worker_id,
        claimed_at=db_now(session),
        lease_expires_at=db_now_plus(session, lease_seconds),
        attempts=Image.attempts + 1,
        updated_at=db_now(session),
    )
    pick = select(Image.id).where(Image.status == WAITING).order_by(Image.id).limit(n)
    if dialect_name(session) == "postgresql":
        claim = pick.with_for_update(skip_locked=True).cte("claim")
        stmt = update(Image).where(Image.id == claim.c.id)
    else:
        stmt = update(Image).where(Image.id.in_(pick.scalar_subquery()))
    stmt = (
        stmt.values(**values)
        .returning(Image.id, Image.uri, Image.content_sha256, Image.attempts, Image.lease_expires_at)
        .execution_options(synchronize_session=False)
    )
    rows = session.execute(stmt).all()
    commit_or_flush(session, commit)
    claimed = [ClaimedImage(r[0], r[1], r[2], r[3], r[4], worker_id) for r in rows]
    claimed.sort(key=lambda c: c.id)
    return claimed


def reclaim_expired(session: Session, *, max_attempts: int = 3, commit: bool = True) -> ReclaimResult:
    """Put images whose lease expired back in the queue; fail those out of attempts.

    Each expired lease is recorded as a failed attempt ("lease expired"), since
    the worker that held it stopped without reporting (crash, kill, out of memory).
    """
    now = db_now(session)
    pick = select(Image.id, Image.claimed_by, Image.attempts).where(
        Image.status == CLAIMED, Image.lease_expires_at < now
    )
    if dialect_name(session) == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    rows = session.execute(pick).all()
    if not rows:
        if commit:
            session.commit()
        return ReclaimResult(0, 0)
    requeue = [r for r in rows if r[2] < max_attempts]
    final = [r for r in rows if r[2] >= max_attempts]
    run_of = _runs_of_workers(session, {r[1] for r in rows if r[1]})
    for group, status in ((requeue, WAITING), (final, FAILED)):
        for chunk in chunks(group):
            ids = [r[0] for r in chunk]
            reason = (
                "lease expired: the worker holding it stopped without reporting (crash, kill or out of memory)"
                if status == WAITING
                else f"lease expired {max_attempts} times: every worker that took this image stopped "
                "without reporting (crash, kill or out of memory)"
            )
            session.execute(
                update(Image)
                .where(Image.id.in_(ids), Image.status == CLAIMED)
                .values(status=status, claimed_by=None, lease_expires_at=None, last_error=reason, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            session.execute(
                insert_for(session)(FailureRecord).values(
                    [
                        dict(
                            image_id=r[0],
                            run_id=run_of.get(r[1]),
                            worker_id=r[1],
                            reason=reason,
                            retryable=True,
                            final=status == FAILED,
                            created_at=utcnow(),
                        )
                        for r in chunk
                    ]
                )
            )
    commit_or_flush(session, commit)
    return ReclaimResult(len(requeue), len(final))


def _runs_of_workers(session: Session, worker_ids: set[str]) -> dict[str, int]:
    """worker id -> its segmentation run, so that an expired lease counts in the run that lost it."""
    found: dict[str, int] = {}
    for chunk in chunks(sorted(worker_ids)):
        for run_id, worker_id in session.execute(
            select(SegmentationRun.id, SegmentationRun.worker_id).where(SegmentationRun.worker_id.in_(chunk))
        ):
            found[worker_id] = run_id
    return found


def release_claims(
    session: Session, worker_id: str, image_ids: Iterable[int] | None = None, *, commit: bool = True
) -> int:
    """Give claimed images back without counting an attempt (graceful shutdown)."""
    stmt = update(Image).where(Image.status == CLAIMED, Image.claimed_by == worker_id)
    if image_ids is not None:
        stmt = stmt.where(Image.id.in_(list(image_ids)))
    res = session.execute(
        stmt.values(
            status=WAITING,
            claimed_by=None,
            lease_expires_at=None,
            attempts=case((Image.attempts > 0, Image.attempts - 1), else_=0),
            updated_at=db_now(session),
        ).execution_options(synchronize_session=False)
    )
    commit_or_flush(session, commit)
    return res.rowcount or 0


def renew_leases(
    session: Session, worker_id: str, image_ids: Iterable[int], lease_seconds: float, *, commit: bool = True
) -> list[int]:
    """Heartbeat while a batch is worked on: push the lease of the images this worker still
    holds to `lease_seconds` from now, so that only a dead worker's claims expire
    (`flows.lease.LeaseKeeper` calls it every lease/3 seconds).
    Returns the ids still held (an image missing from it was reclaimed: drop it)."""
    ids = list(image_ids)
    if not ids:
        return []
    rows = session.execute(
        update(Image)
        .where(Image.id.in_(ids), Image.status == CLAIMED, Image.claimed_by == worker_id)
        .values(lease_expires_at=db_now_plus(session, lease_seconds), updated_at=db_now(session))
        .returning(Image.id)
        .execution_options(synchronize_session=False)
    ).all()
    commit_or_flush(session, commit)
    return sorted(r[0] for r in rows)


extend_lease = renew_leases  # the earlier name


def record_failure(
    session: Session,
    image_id: int,
    reason: str,
    worker_id: str,
    retryable: bool = False,
    *,
    max_attempts: int = 3,
    run_id: int | None = None,
    commit: bool = True,
) -> str:
    """Record a failed attempt; returns the image's new status.

    Retryable failures (timeouts, a server error) put the image back in the queue
    until it has been tried `max_attempts` times; then, and for non-retryable
    failures (not an image, 404, refused host ...), it ends `failed` with the reason.
    Raises LeaseLostError (and writes nothing) unless `worker_id` holds the lease.
    """
    reason = clean_reason(reason)
    new_status = case((Image.attempts < max_attempts, WAITING), else_=FAILED) if retryable else FAILED
    now = db_now(session)
    row = session.execute(
        update(Image)
        .where(Image.id == image_id, Image.status == CLAIMED, Image.claimed_by == worker_id)
        .values(status=new_status, claimed_by=None, lease_expires_at=None, last_error=reason, updated_at=now)
        .returning(Image.status, Image.attempts)
        .execution_options(synchronize_session=False)
    ).first()
    if row is None:
        raise lease_lost(session, image_id, worker_id)
    status = row[0]
    session.add(
        FailureRecord(
            image_id=image_id,
            run_id=run_id,
            worker_id=worker_id,
            reason=reason,
            retryable=bool(retryable),
            final=status == FAILED,
            created_at=utcnow(),
        )
    )
    commit_or_flush(session, commit)
    return status


def record_failed_step(
    session: Session, image_id: int, reason: str, worker_id: str, *, run_id: int | None = None, commit: bool = True
) -> None:
    """Record a step that failed after the image's result was stored (e.g. writing its overlay):
    the reason is kept with the run, the image keeps its status and its result."""
    session.add(
        FailureRecord(
            image_id=image_id, run_id=run_id, worker_id=worker_id, reason=clean_reason(reason),
            retryable=False, final=False, created_at=utcnow(),
        )
    )
    commit_or_flush(session, commit)


def requeue_failed(session: Session, image_ids: Iterable[int] | None = None, *, commit: bool = True) -> int:
    """Put failed images back in the queue with their attempts reset (after a fix)."""
    stmt = update(Image).where(Image.status == FAILED)
    if image_ids is not None:
        stmt = stmt.where(Image.id.in_(list(image_ids)))
    res = session.execute(
        stmt.values(status=WAITING, attempts=0, updated_at=db_now(session)).execution_options(synchronize_session=False)
    )
    commit_or_flush(session, commit)
    return res.rowcount or 0


__all__ = [
    "MAX_REASON_LENGTH",
    "ClaimedImage",
    "LeaseLostError",
    "ReclaimResult",
    "claim_batch",
    "clean_reason",
    "extend_lease",
    "lease_lost",
    "reclaim_expired",
    "record_failed_step",
    "record_failure",
    "release_claims",
    "renew_leases",
    "requeue_failed",
]
