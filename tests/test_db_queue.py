"""The work queue: claims are disjoint, only the lease holder writes, failures retry then fail,
expired leases are reclaimed, claims are released and renewed; SQLite is set up for several processes.
SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest
from conftest_db import db_url, expire_leases, inputs, make_segmentation, migrated_url, pg_url, session, sqlite_url  # noqa: F401
from sqlalchemy import func, select

from integrations.db import (
    LeaseLostError,
    add_images,
    claim_batch,
    counts_by_status,
    extend_lease,
    failure_reasons,
    reclaim_expired,
    record_failure,
    release_claims,
    start_run,
    store_segmentation,
)
from integrations.db.models import FailureRecord, Image, SegmentationRecord


def test_claim_batches_are_disjoint_and_ordered(session):
    add_images(session, inputs(25))
    a = claim_batch(session, "w-a", 10, lease_seconds=60)
    b = claim_batch(session, "w-b", 10, lease_seconds=60)
    c = claim_batch(session, "w-c", 10, lease_seconds=60)
    assert [len(a), len(b), len(c)] == [10, 10, 5]
    ids = [x.id for x in a + b + c]
    assert len(set(ids)) == 25
    assert all(x.attempts == 1 and x.worker_id == "w-a" for x in a)
    assert a[0].lease_expires_at.tzinfo is not None
    assert a[0].lease_expires_at > dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=30)
    assert claim_batch(session, "w-d", 10, lease_seconds=60) == []
    counts = counts_by_status(session)
    assert counts["claimed"] == 25 and counts["waiting"] == 0
    assert set(counts) == {"waiting", "claimed", "segmented", "failed", "sent_for_review", "reviewed"}


def test_store_marks_segmented_and_guards_the_lease(session):
    add_images(session, inputs(3))
    run = start_run(session, {"backbone": "dino_vits8", "k": None}, orchestrator_run_id="flow-1", worker_id="w-a")
    a = claim_batch(session, "w-a", 2, lease_seconds=60)
    seg_id = store_segmentation(session, a[0].id, run, make_segmentation(), "w-a")
    img = session.get(Image, a[0].id)
    assert (img.status, img.claimed_by, img.lease_expires_at) == ("segmented", None, None)
    assert (img.width, img.height) == (64, 48)
    # another worker may not store someone else's image
    with pytest.raises(LeaseLostError, match="claimed by 'w-a'"):
        store_segmentation(session, a[1].id, run, make_segmentation(), "w-b")
    # storing twice is refused (the image is no longer claimed)
    with pytest.raises(LeaseLostError, match="segmented"):
        store_segmentation(session, a[0].id, run, make_segmentation(), "w-a")
    assert session.execute(select(func.count()).select_from(SegmentationRecord)).scalar_one() == 1
    assert seg_id > 0


def test_late_writer_after_reclaim_writes_nothing(session):
    add_images(session, inputs(1))
    run = start_run(session, {"backbone": "classic"})
    (a,) = claim_batch(session, "w-slow", 1, lease_seconds=60)
    expire_leases(session)
    assert reclaim_expired(session).requeued == 1
    (b,) = claim_batch(session, "w-fast", 1, lease_seconds=60)
    assert b.id == a.id and b.attempts == 2
    with pytest.raises(LeaseLostError):
        store_segmentation(session, a.id, run, make_segmentation(), "w-slow")
    with pytest.raises(LeaseLostError):
        record_failure(session, a.id, "late failure", "w-slow", retryable=True)
    store_segmentation(session, b.id, run, make_segmentation(), "w-fast")
    assert session.execute(select(func.count()).select_from(SegmentationRecord)).scalar_one() == 1
    reasons = session.scalars(select(FailureRecord.reason)).all()
    assert reasons == ["lease expired: the worker holding it stopped without reporting (crash, kill or out of memory)"]


def test_expired_lease_not_yet_reclaimed_still_lets_the_holder_finish(session):
    add_images(session, inputs(1))
    run = start_run(session, {"backbone": "classic"})
    (a,) = claim_batch(session, "w", 1, lease_seconds=60)
    expire_leases(session)
    store_segmentation(session, a.id, run, make_segmentation(), "w")
    assert counts_by_status(session)["segmented"] == 1


def test_failures_retry_then_fail_with_reason(session):
    add_images(session, inputs(2))
    ids = [c.id for c in claim_batch(session, "w", 2, lease_seconds=60)]
    assert record_failure(session, ids[0], "not an image", "w", retryable=False) == "failed"
    for attempt in (1, 2):
        assert record_failure(session, ids[1], f"timed out ({attempt})", "w", retryable=True, max_attempts=3) == "waiting"
        (again,) = claim_batch(session, "w", 5, lease_seconds=60, max_attempts=3)
        assert again.id == ids[1] and again.attempts == attempt + 1
    assert record_failure(session, ids[1], "timed out (3)", "w", retryable=True, max_attempts=3) == "failed"
    img = session.get(Image, ids[1])
    assert (img.status, img.attempts, img.last_error) == ("failed", 3, "timed out (3)")
    finals = session.execute(select(FailureRecord.final)).scalars().all()
    assert finals.count(True) == 2 and len(finals) == 4
    assert sorted(failure_reasons(session)) == [("not an image", 1), ("timed out (3)", 1)]


def test_reclaim_fails_an_image_whose_workers_keep_dying(session):
    add_images(session, inputs(1))
    for i in range(2):
        claim_batch(session, f"w{i}", 1, lease_seconds=60, max_attempts=2)
        expire_leases(session)
    result = reclaim_expired(session, max_attempts=2)
    assert (result.requeued, result.failed) == (0, 1)
    (img,) = session.scalars(select(Image)).all()
    assert img.status == "failed" and "lease expired 2 times" in img.last_error


def test_release_claims_does_not_count_an_attempt(session):
    add_images(session, inputs(3))
    claim_batch(session, "w", 3, lease_seconds=60)
    assert release_claims(session, "w") == 3
    assert {c.attempts for c in claim_batch(session, "w2", 3, lease_seconds=60)} == {1}


def test_extend_lease_keeps_only_what_the_worker_holds(session):
    add_images(session, inputs(3))
    mine = claim_batch(session, "w", 2, lease_seconds=5)
    other = claim_batch(session, "v", 1, lease_seconds=5)
    held = extend_lease(session, "w", [c.id for c in mine + other], lease_seconds=3600)
    assert held == sorted(c.id for c in mine)
    session.expire_all()
    assert session.get(Image, mine[0].id).lease_expires_at > dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=30)


def test_sqlite_is_tuned_for_several_processes(sqlite_url):
    from sqlalchemy import text

    from integrations.db import make_engine

    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 10_000
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()
