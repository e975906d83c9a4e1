"""The pipeline's operations: plain functions over a SQLAlchemy Session.

Every operation is one transaction and commits before it returns (pass
`commit=False` to compose several into one transaction yourself; on SQLite an
open transaction holds the database's write lock, so keep it short).

Work queue, in one picture::

    register_images ──> waiting ──claim_batch──> claimed ──store_segmentation──> segmented
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
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Integer, case, cast, delete, func, select, update
from sqlalchemy.orm import Session

from clasp_engine.result import Diagnostics, Segment, Segmentation
from integrations.db.embeddings import attach_embeddings
from integrations.db.masks import decode_mask, encode_mask
from integrations.db.models import (
    CLAIMED,
    FAILED,
    IMAGE_STATUSES,
    SEGMENTED,
    WAITING,
    Failure,
    Image,
    SegmentationRun,
    SegmentRow,
    utcnow,
)
from integrations.db.models import Segmentation as SegmentationRow

MAX_URI_LENGTH = 2000  # longer URIs are refused (btree index entries have a size limit)
MAX_REASON_LENGTH = 2000
_CHUNK = 500


class LeaseLostError(RuntimeError):
    """The worker no longer holds the image's lease (it expired and was reclaimed)."""

    def __init__(self, image_id: int, worker_id: str, detail: str):
        self.image_id = image_id
        self.worker_id = worker_id
        super().__init__(f"image {image_id}: worker {worker_id!r} does not hold its lease ({detail}); nothing written")


# --------------------------------------------------------------------------- helpers


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _now(session: Session) -> Any:
    """Current time: the database clock on PostgreSQL, this machine's (UTC) elsewhere."""
    if _dialect(session) == "postgresql":
        return func.current_timestamp()
    return utcnow()


def _now_plus(session: Session, seconds: float) -> Any:
    if _dialect(session) == "postgresql":
        return func.current_timestamp() + dt.timedelta(seconds=seconds)
    return utcnow() + dt.timedelta(seconds=seconds)


def _insert(session: Session):  # noqa: ANN202
    if _dialect(session) == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def _chunks(seq: Sequence[Any], n: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _finish(session: Session, commit: bool) -> None:
    if commit:
        session.commit()
    else:
        session.flush()


def _reason(text: str) -> str:
    text = " ".join(str(text).split()) or "unknown error"
    return text if len(text) <= MAX_REASON_LENGTH else text[: MAX_REASON_LENGTH - 1] + "…"


_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def to_json(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars/arrays to Python, tuples to lists, and
    non-finite floats to the strings "NaN" / "Infinity" / "-Infinity"
    (PostgreSQL's JSONB refuses bare NaN). `from_json` reverses the floats."""
    if isinstance(obj, Mapping):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_json(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    return obj


def from_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_json(v) for v in obj]
    if isinstance(obj, str) and obj in _NONFINITE:
        return _NONFINITE[obj]
    return obj


# --------------------------------------------------------------------------- registration


@dataclass(frozen=True)
class ImageInput:
    """One image to register. With `content_sha256` it is registered once per
    content; without it (a URI to read later) once per URI. With `error` it
    could not be read at ingest and is recorded as failed with that reason."""

    uri: str
    content_sha256: str | None = None
    size_bytes: int | None = None
    width: int | None = None
    height: int | None = None
    error: str | None = None


@dataclass
class RegisterResult:
    new: list[int] = field(default_factory=list)
    known: list[int] = field(default_factory=list)
    unreadable: list[int] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"new": len(self.new), "known": len(self.known), "unreadable": len(self.unreadable)}

    def merge(self, other: "RegisterResult") -> None:
        self.new += other.new
        self.known += other.known
        self.unreadable += other.unreadable


def register_images(
    session: Session, items: Iterable[ImageInput | str], *, commit: bool = True
) -> RegisterResult:
    """Register images, idempotently: the same bytes (content hash) are registered once.

    Returns the ids split into new, already known and unreadable. A URI already
    registered without a hash (registered lazily, or unreadable at an earlier
    ingest) is updated in place when its content is now known.
    """
    result = RegisterResult()
    hashed: dict[str, ImageInput] = {}
    dups: list[str] = []  # the same bytes twice in the input: "already known" the second time
    lazy: dict[str, ImageInput] = {}
    errors: dict[str, ImageInput] = {}
    for item in items:
        if isinstance(item, str):
            item = ImageInput(uri=item)
        if len(item.uri) > MAX_URI_LENGTH:
            item = ImageInput(uri=item.uri[:MAX_URI_LENGTH], error=f"URI longer than {MAX_URI_LENGTH} characters")
        if item.error is not None:
            errors.setdefault(item.uri, item)
        elif item.content_sha256 is not None:
            if item.content_sha256 in hashed:
                dups.append(item.content_sha256)
            else:
                hashed[item.content_sha256] = item
        else:
            lazy.setdefault(item.uri, item)

    insert = _insert(session)
    now = utcnow()

    # 1. content-hashed images
    hash_to_id: dict[str, int] = {}
    for chunk in _chunks(list(hashed)):
        for id_, h in session.execute(select(Image.id, Image.content_sha256).where(Image.content_sha256.in_(chunk))):
            hash_to_id[h] = id_
    todo = [item for h, item in hashed.items() if h not in hash_to_id]
    # adopt rows registered by URI without a hash (lazy, or unreadable before)
    by_uri: dict[str, tuple[int, str]] = {}
    for chunk in _chunks(sorted({i.uri for i in todo})):
        rows = session.execute(
            select(Image.uri, Image.id, Image.status).where(Image.content_sha256.is_(None), Image.uri.in_(chunk))
        )
        for uri, id_, status in rows:
            by_uri.setdefault(uri, (id_, status))
    remaining = []
    new_ids: dict[str, int] = {}
    for item in todo:
        hit = by_uri.pop(item.uri, None)
        if hit is not None and hit[1] in (WAITING, FAILED):
            session.execute(
                update(Image)
                .where(Image.id == hit[0], Image.content_sha256.is_(None))
                .values(
                    content_sha256=item.content_sha256,
                    size_bytes=item.size_bytes,
                    width=item.width,
                    height=item.height,
                    status=WAITING,
                    attempts=0,
                    last_error=None,
                )
                .execution_options(synchronize_session=False)
            )
            result.new.append(hit[0])
            new_ids[item.content_sha256] = hit[0]
        elif hit is not None:  # registered lazily and already taken by a worker: the same image
            result.known.append(hit[0])
        else:
            remaining.append(item)
    for chunk in _chunks(remaining):
        rows = [
            dict(
                uri=i.uri,
                content_sha256=i.content_sha256,
                size_bytes=i.size_bytes,
                width=i.width,
                height=i.height,
                status=WAITING,
                attempts=0,
                created_at=now,
                updated_at=now,
            )
            for i in chunk
        ]
        stmt = (
            insert(Image)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["content_sha256"])
            .returning(Image.id, Image.content_sha256)
        )
        inserted = {h: id_ for id_, h in session.execute(stmt)}
        result.new += inserted.values()
        new_ids.update(inserted)
        lost = [i.content_sha256 for i in chunk if i.content_sha256 not in inserted]
        if lost:  # registered concurrently by another process
            for id_, h in session.execute(select(Image.id, Image.content_sha256).where(Image.content_sha256.in_(lost))):
                hash_to_id[h] = id_
    result.known += list(hash_to_id.values())
    result.known += [hash_to_id.get(h, new_ids.get(h, -1)) for h in dups]

    # 2. URIs registered without reading (hash unknown): once per URI
    uris = list(lazy)
    existing: set[str] = set()
    for chunk in _chunks(uris):
        for id_, uri in session.execute(select(Image.id, Image.uri).where(Image.uri.in_(chunk))):
            if uri not in existing:
                existing.add(uri)
                result.known.append(id_)
    new_lazy = [lazy[u] for u in uris if u not in existing]
    for chunk in _chunks(new_lazy):
        rows = [dict(uri=i.uri, status=WAITING, attempts=0, created_at=now, updated_at=now) for i in chunk]
        result.new += [r[0] for r in session.execute(insert(Image).values(rows).returning(Image.id))]

    # 3. unreadable at ingest: a failed row with the reason, once per URI
    for uri, item in errors.items():
        reason = _reason(item.error or "unreadable")
        row = session.execute(
            select(Image.id, Image.status).where(Image.uri == uri, Image.content_sha256.is_(None)).limit(1)
        ).first()
        if row is not None:
            if row[1] in (WAITING, FAILED):
                session.execute(
                    update(Image)
                    .where(Image.id == row[0])
                    .values(status=FAILED, last_error=reason)
                    .execution_options(synchronize_session=False)
                )
            result.unreadable.append(row[0])
        else:
            id_ = session.execute(
                insert(Image)
                .values(uri=uri, status=FAILED, attempts=0, last_error=reason, created_at=now, updated_at=now)
                .returning(Image.id)
            ).scalar_one()
            result.unreadable.append(id_)
    _finish(session, commit)
    return result


# --------------------------------------------------------------------------- work queue


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
        claimed_at=_now(session),
        lease_expires_at=_now_plus(session, lease_seconds),
        attempts=Image.attempts + 1,
        updated_at=_now(session),
    )
    pick = select(Image.id).where(Image.status == WAITING).order_by(Image.id).limit(n)
    if _dialect(session) == "postgresql":
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
    _finish(session, commit)
    claimed = [ClaimedImage(r[0], r[1], r[2], r[3], r[4], worker_id) for r in rows]
    claimed.sort(key=lambda c: c.id)
    return claimed


def reclaim_expired(session: Session, *, max_attempts: int = 3, commit: bool = True) -> ReclaimResult:
    """Put images whose lease expired back in the queue; fail those out of attempts.

    Each expired lease is recorded as a failed attempt ("lease expired"), since
    the worker that held it stopped without reporting (crash, kill, out of memory).
    """
    now = _now(session)
    pick = select(Image.id, Image.claimed_by, Image.attempts).where(
        Image.status == CLAIMED, Image.lease_expires_at < now
    )
    if _dialect(session) == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    rows = session.execute(pick).all()
    if not rows:
        if commit:
            session.commit()
        return ReclaimResult(0, 0)
    requeue = [r for r in rows if r[2] < max_attempts]
    final = [r for r in rows if r[2] >= max_attempts]
    for group, status in ((requeue, WAITING), (final, FAILED)):
        for chunk in _chunks(group):
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
                _insert(session)(Failure).values(
                    [
                        dict(
                            image_id=r[0],
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
    _finish(session, commit)
    return ReclaimResult(len(requeue), len(final))


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
            updated_at=_now(session),
        ).execution_options(synchronize_session=False)
    )
    _finish(session, commit)
    return res.rowcount or 0


def extend_lease(
    session: Session, worker_id: str, image_ids: Iterable[int], lease_seconds: float, *, commit: bool = True
) -> list[int]:
    """Heartbeat for long batches: push the lease of images this worker still holds.
    Returns the ids still held (an image missing from it was reclaimed: drop it)."""
    ids = list(image_ids)
    if not ids:
        return []
    rows = session.execute(
        update(Image)
        .where(Image.id.in_(ids), Image.status == CLAIMED, Image.claimed_by == worker_id)
        .values(lease_expires_at=_now_plus(session, lease_seconds), updated_at=_now(session))
        .returning(Image.id)
        .execution_options(synchronize_session=False)
    ).all()
    _finish(session, commit)
    return sorted(r[0] for r in rows)


def _lease_detail(session: Session, image_id: int) -> str:
    row = session.execute(select(Image.status, Image.claimed_by).where(Image.id == image_id)).first()
    if row is None:
        return "no such image"
    status, holder = row
    if status == CLAIMED:
        return f"now claimed by {holder!r}"
    return f"image is {status}"


def store_segmentation(
    session: Session,
    image_id: int,
    run_id: int,
    segmentation: Segmentation,
    worker_id: str,
    *,
    commit: bool = True,
) -> int:
    """Store one result for a claimed image and mark it segmented. Returns the segmentation id.

    Raises LeaseLostError (and writes nothing) unless `worker_id` holds the lease.
    """
    return store_segmentations(session, image_id, run_id, [segmentation], worker_id, commit=commit)[0]


def store_segmentations(
    session: Session,
    image_id: int,
    run_id: int,
    segmentations: Sequence[Segmentation],
    worker_id: str,
    *,
    commit: bool = True,
) -> list[int]:
    """Several results (e.g. the patch and pixel variants) for one image, in one transaction."""
    if not segmentations:
        raise ValueError("store_segmentations needs at least one Segmentation")
    first = segmentations[0].diagnostics
    now = _now(session)
    guard = (
        update(Image)
        .where(Image.id == image_id, Image.status == CLAIMED, Image.claimed_by == worker_id)
        .values(
            status=SEGMENTED,
            claimed_by=None,
            lease_expires_at=None,
            last_error=None,
            segmented_at=now,
            updated_at=now,
            width=func.coalesce(Image.width, first.width),
            height=func.coalesce(Image.height, first.height),
        )
        .returning(Image.id)
        .execution_options(synchronize_session=False)
    )
    if session.execute(guard).first() is None:
        detail = _lease_detail(session, image_id)
        session.rollback()
        raise LeaseLostError(image_id, worker_id, detail)
    ids = []
    for seg in segmentations:
        row = _segmentation_row(image_id, run_id, seg, worker_id)
        session.add(row)
        session.flush()
        ids.append(row.id)
    _finish(session, commit)
    return ids


def _total_seconds(timings: dict[str, float]) -> float | None:
    """The engine's own total; summing the stages would count `total` twice."""
    if not timings:
        return None
    if "total" in timings:
        return float(timings["total"])
    return float(sum(timings.values()))


def _segmentation_row(image_id: int, run_id: int, seg: Segmentation, worker_id: str | None) -> SegmentationRow:
    d = seg.diagnostics
    mask = encode_mask(seg.labels)
    row = SegmentationRow(
        image_id=image_id,
        run_id=run_id,
        variant=d.variant,
        k=int(d.k),
        elbow_k=None if d.elbow_k is None else int(d.elbow_k),
        k_rule=d.k_rule,
        device=d.device,
        total_seconds=_total_seconds(d.timings),
        mask=mask.data,
        mask_codec=mask.codec,
        mask_height=mask.height,
        mask_width=mask.width,
        mask_dtype=mask.dtype,
        mask_stored_dtype=mask.stored_dtype,
        mask_bytes=mask.size,
        diagnostics=to_json(d.to_dict()),
        worker_id=worker_id,
        created_at=utcnow(),
    )
    if seg.patch_labels is not None and np.asarray(seg.patch_labels).ndim == 2:
        patch = encode_mask(seg.patch_labels)
        row.patch_mask = patch.data
        row.patch_rows, row.patch_cols = patch.height, patch.width
        row.patch_dtype, row.patch_stored_dtype = patch.dtype, patch.stored_dtype
    row.segments = [
        SegmentRow(
            label=int(s.label),
            area=int(s.area),
            x0=int(s.bbox[0]),
            y0=int(s.bbox[1]),
            x1=int(s.bbox[2]),
            y1=int(s.bbox[3]),
            confidence=float(s.confidence),
        )
        for s in seg.segments
    ]
    attach_embeddings(row.segments, seg)  # issue 12: region embeddings for exemplars and suggestions
    return row


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
    reason = _reason(reason)
    new_status = case((Image.attempts < max_attempts, WAITING), else_=FAILED) if retryable else FAILED
    now = _now(session)
    row = session.execute(
        update(Image)
        .where(Image.id == image_id, Image.status == CLAIMED, Image.claimed_by == worker_id)
        .values(status=new_status, claimed_by=None, lease_expires_at=None, last_error=reason, updated_at=now)
        .returning(Image.status, Image.attempts)
        .execution_options(synchronize_session=False)
    ).first()
    if row is None:
        detail = _lease_detail(session, image_id)
        session.rollback()
        raise LeaseLostError(image_id, worker_id, detail)
    status = row[0]
    session.add(
        Failure(
            image_id=image_id,
            run_id=run_id,
            worker_id=worker_id,
            reason=reason,
            retryable=bool(retryable),
            final=status == FAILED,
            created_at=utcnow(),
        )
    )
    _finish(session, commit)
    return status


def requeue_failed(session: Session, image_ids: Iterable[int] | None = None, *, commit: bool = True) -> int:
    """Put failed images back in the queue with their attempts reset (after a fix)."""
    stmt = update(Image).where(Image.status == FAILED)
    if image_ids is not None:
        stmt = stmt.where(Image.id.in_(list(image_ids)))
    res = session.execute(
        stmt.values(status=WAITING, attempts=0, updated_at=_now(session)).execution_options(synchronize_session=False)
    )
    _finish(session, commit)
    return res.rowcount or 0


# --------------------------------------------------------------------------- runs


def start_run(
    session: Session,
    config: Any,
    *,
    engine_version: str | None = None,
    backbone: str | None = None,
    weights: str | None = None,
    weights_sha256: str | None = None,
    orchestrator_run_id: str | None = None,
    worker_id: str | None = None,
    device: str | None = None,
    commit: bool = True,
) -> int:
    """Open a segmentation run; `config` is a SegmenterConfig or its dict. Returns the run id."""
    fingerprint = None
    if hasattr(config, "to_dict"):
        fingerprint = config.fingerprint() if hasattr(config, "fingerprint") else None
        config = config.to_dict()
    config = dict(config)
    if engine_version is None:
        import clasp_engine

        engine_version = clasp_engine.__version__
    run = SegmentationRun(
        engine_version=engine_version,
        config=to_json(config),
        config_fingerprint=fingerprint,
        backbone=backbone or str(config.get("backbone", "unknown")),
        weights=weights if weights is not None else config.get("weights"),
        weights_sha256=weights_sha256,
        orchestrator_run_id=orchestrator_run_id,
        worker_id=worker_id,
        device=device,
        status="running",
        started_at=utcnow(),
    )
    session.add(run)
    session.flush()
    run_id = run.id
    _finish(session, commit)
    return run_id


@dataclass(frozen=True)
class RunSummary:
    id: int
    status: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    n_segmented: int
    n_failed: int


def run_counts(session: Session, run_id: int) -> tuple[int, int]:
    """(segmented images, final failures) recorded under `run_id` so far."""
    n_seg = session.execute(
        select(func.count(func.distinct(SegmentationRow.image_id))).where(SegmentationRow.run_id == run_id)
    ).scalar_one()
    n_fail = session.execute(
        select(func.count()).select_from(Failure).where(Failure.run_id == run_id, Failure.final.is_(True))
    ).scalar_one()
    return int(n_seg), int(n_fail)


def finish_run(
    session: Session,
    run_id: int,
    *,
    status: str = "finished",
    backbone: str | None = None,
    weights_sha256: str | None = None,
    device: str | None = None,
    commit: bool = True,
) -> RunSummary:
    """Close a run: end time, status and its counts (taken from what was stored).
    backbone / weights_sha256 / device fill in what was only known after loading the model."""
    run = session.get(SegmentationRun, run_id)
    if run is None:
        raise KeyError(f"no segmentation run {run_id}")
    run.n_segmented, run.n_failed = run_counts(session, run_id)
    run.status = status
    run.finished_at = utcnow()
    if backbone:
        run.backbone = backbone
    if weights_sha256:
        run.weights_sha256 = weights_sha256
    if device:
        run.device = device
    summary = RunSummary(run.id, run.status, run.started_at, run.finished_at, run.n_segmented, run.n_failed)
    _finish(session, commit)
    return summary


def recent_runs(session: Session, limit: int = 10) -> list[SegmentationRun]:
    return list(session.scalars(select(SegmentationRun).order_by(SegmentationRun.id.desc()).limit(limit)))


# --------------------------------------------------------------------------- dashboard queries


def counts_by_status(session: Session) -> dict[str, int]:
    """Number of images in each status (every status present, zeros included)."""
    counts = dict.fromkeys(IMAGE_STATUSES, 0)
    for status, n in session.execute(select(Image.status, func.count()).group_by(Image.status)):
        counts[status] = int(n)
    return counts


def k_distribution(session: Session, *, run_id: int | None = None, variant: str | None = None) -> dict[int, int]:
    """How many segmentations chose each K."""
    stmt = select(SegmentationRow.k, func.count()).group_by(SegmentationRow.k).order_by(SegmentationRow.k)
    if run_id is not None:
        stmt = stmt.where(SegmentationRow.run_id == run_id)
    if variant is not None:
        stmt = stmt.where(SegmentationRow.variant == variant)
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
    if _dialect(session) == "postgresql":
        epoch = func.floor(func.extract("epoch", SegmentationRow.created_at) / b) * b
    else:
        epoch = cast(func.strftime("%s", SegmentationRow.created_at), Integer) / b * b
    bucket = epoch.label("bucket")
    stmt = select(bucket, func.count()).group_by(bucket).order_by(bucket)
    if since is not None:
        stmt = stmt.where(SegmentationRow.created_at >= since)
    if run_id is not None:
        stmt = stmt.where(SegmentationRow.run_id == run_id)
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


# --------------------------------------------------------------------------- reading results back


def load_mask(session: Session, segmentation_id: int) -> np.ndarray:
    """The stored label map, bit-exact (values, dtype, shape)."""
    row = session.execute(
        select(
            SegmentationRow.mask,
            SegmentationRow.mask_codec,
            SegmentationRow.mask_height,
            SegmentationRow.mask_width,
            SegmentationRow.mask_dtype,
            SegmentationRow.mask_stored_dtype,
        ).where(SegmentationRow.id == segmentation_id)
    ).first()
    if row is None:
        raise KeyError(f"no segmentation {segmentation_id}")
    return decode_mask(*row)


def load_segmentation(session: Session, segmentation_id: int) -> Segmentation:
    """The stored result as the engine's Segmentation (labels, patch labels, segments, diagnostics)."""
    row = session.get(SegmentationRow, segmentation_id)
    if row is None:
        raise KeyError(f"no segmentation {segmentation_id}")
    labels = decode_mask(row.mask, row.mask_codec, row.mask_height, row.mask_width, row.mask_dtype, row.mask_stored_dtype)
    if row.patch_mask is not None:
        patch = decode_mask(
            row.patch_mask, row.mask_codec, row.patch_rows, row.patch_cols, row.patch_dtype, row.patch_stored_dtype
        )
    else:
        patch = np.zeros((0, 0), dtype=np.int32)
    segments = [Segment(s.label, s.area, (s.x0, s.y0, s.x1, s.y1), s.confidence) for s in row.segments]
    diagnostics = Diagnostics.from_dict(from_json(row.diagnostics))
    return Segmentation(labels=labels, patch_labels=patch, segments=segments, diagnostics=diagnostics)


def latest_segmentation_id(session: Session, image_id: int, *, variant: str | None = None) -> int | None:
    stmt = select(SegmentationRow.id).where(SegmentationRow.image_id == image_id)
    if variant is not None:
        stmt = stmt.where(SegmentationRow.variant == variant)
    return session.execute(stmt.order_by(SegmentationRow.id.desc()).limit(1)).scalar()


def delete_image(session: Session, image_id: int, *, commit: bool = True) -> bool:
    """Remove an image and everything stored about it (segmentations, reviews ...)."""
    res = session.execute(delete(Image).where(Image.id == image_id).execution_options(synchronize_session=False))
    _finish(session, commit)
    return bool(res.rowcount)


def storage_bytes(session: Session, segmentation_id: int) -> dict[str, int]:
    """Bytes one segmentation takes: compressed mask, patch mask, diagnostics JSON, segment rows."""
    import json

    row = session.get(SegmentationRow, segmentation_id)
    if row is None:
        raise KeyError(f"no segmentation {segmentation_id}")
    sizes = {
        "mask": len(row.mask),
        "patch_mask": len(row.patch_mask or b""),
        "diagnostics_json": len(json.dumps(row.diagnostics, separators=(",", ":"))),
        "segments": len(row.segments),
    }
    if _dialect(session) == "postgresql":  # as stored: JSONB binary form, TOAST compression
        on_disk = session.execute(
            select(func.pg_column_size(SegmentationRow.mask), func.pg_column_size(SegmentationRow.diagnostics)).where(
                SegmentationRow.id == segmentation_id
            )
        ).one()
        sizes["pg_mask_column"], sizes["pg_diagnostics_column"] = int(on_disk[0]), int(on_disk[1])
    return sizes


__all__ = [
    "ClaimedImage",
    "ImageInput",
    "LeaseLostError",
    "ReclaimResult",
    "RegisterResult",
    "RunSummary",
    "claim_batch",
    "counts_by_status",
    "delete_image",
    "extend_lease",
    "failure_reasons",
    "finish_run",
    "from_json",
    "k_distribution",
    "latest_segmentation_id",
    "load_mask",
    "load_segmentation",
    "reclaim_expired",
    "recent_runs",
    "record_failure",
    "register_images",
    "release_claims",
    "requeue_failed",
    "run_counts",
    "start_run",
    "store_segmentation",
    "store_segmentations",
    "storage_bytes",
    "throughput",
    "to_json",
]
