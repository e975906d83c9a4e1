"""Repository operations on SQLite and PostgreSQL: registration, claims, leases,
results, failures, dashboard queries, and bit-exact masks / diagnostics."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math

import numpy as np
import pytest
from conftest_db import db_url, make_segmentation, migrated_url, pg_url, session, sqlite_url  # noqa: F401
from sqlalchemy import func, select, update

from integrations.db import (
    ImageInput,
    LeaseLostError,
    claim_batch,
    counts_by_status,
    extend_lease,
    decode_label_map,
    encode_label_map,
    failure_reasons,
    finish_run,
    k_distribution,
    load_mask,
    load_segmentation,
    reclaim_expired,
    record_failure,
    add_images,
    release_claims,
    start_run,
    storage_bytes,
    store_segmentation,
    store_segmentations,
    throughput,
)
from integrations.db.models import FailureRecord, Image, SegmentationRecord, SegmentationRun, SegmentRow


def sha(i: int | str) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def inputs(n: int, start: int = 0) -> list[ImageInput]:
    return [ImageInput(uri=f"/data/img{i}.jpg", content_sha256=sha(i), size_bytes=1000 + i) for i in range(start, start + n)]


def expire_leases(session, ids=None) -> None:
    stmt = update(Image).where(Image.status == "claimed")
    if ids is not None:
        stmt = stmt.where(Image.id.in_(ids))
    session.execute(stmt.values(lease_expires_at=dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)))
    session.commit()


# --------------------------------------------------------------------------- registration


def test_register_is_idempotent_by_content_hash(session):
    first = add_images(session, inputs(5))
    assert first.counts() == {"new": 5, "known": 0, "unreadable": 0}
    # same bytes under another name, plus two new, plus a duplicate inside the input
    again = add_images(
        session,
        [ImageInput("/elsewhere/copy.jpg", sha(0))] + inputs(2, start=5) + [ImageInput("/dup.jpg", sha(5))],
    )
    assert again.counts() == {"new": 2, "known": 2, "unreadable": 0}
    assert set(again.known) <= set(first.new) | set(again.new)
    assert session.execute(select(func.count()).select_from(Image)).scalar_one() == 7
    assert counts_by_status(session)["waiting"] == 7


def test_register_lazy_uris_unreadable_and_adoption(session):
    lazy = add_images(session, ["http://example.com/a.jpg", "http://example.com/a.jpg", "s3://b/c.png"])
    assert lazy.counts() == {"new": 2, "known": 0, "unreadable": 0}
    assert add_images(session, ["s3://b/c.png"]).counts()["known"] == 1
    bad = add_images(session, [ImageInput("/x/broken.jpg", error="truncated JPEG")])
    assert bad.counts() == {"new": 0, "known": 0, "unreadable": 1}
    row = session.get(Image, bad.unreadable[0])
    assert (row.status, row.last_error) == ("failed", "truncated JPEG")
    # re-ingesting the same unreadable URI does not add a row
    assert add_images(session, [ImageInput("/x/broken.jpg", error="still truncated")]).unreadable == bad.unreadable
    # the file was fixed: the failed row is adopted with its content hash and waits again
    fixed = add_images(session, [ImageInput("/x/broken.jpg", sha("fixed"), 123)])
    assert fixed.new == bad.unreadable
    session.expire_all()
    row = session.get(Image, bad.unreadable[0])
    assert (row.status, row.content_sha256, row.last_error) == ("waiting", sha("fixed"), None)
    # a lazily registered URI already taken by a worker is not registered a second time
    (taken,) = claim_batch(session, "w", 1, lease_seconds=60)
    assert add_images(session, [ImageInput(taken.uri, sha("taken"))]).known == [taken.id]
    too_long = add_images(session, ["http://example.com/" + "a" * 3000])
    assert too_long.counts()["unreadable"] == 1


# --------------------------------------------------------------------------- claims and leases


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


# --------------------------------------------------------------------------- results and queries


def test_masks_and_diagnostics_round_trip(session):
    add_images(session, inputs(2))
    run = start_run(session, {"backbone": "dino_vits8"})
    a, b = claim_batch(session, "w", 2, lease_seconds=60)
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 15, size=(480, 640)).astype(np.int64)  # worst case for compression
    seg = make_segmentation(480, 640, k=15, labels=noise, nan_silhouette=True)
    seg_id = store_segmentation(session, a.id, run, seg, "w")
    session.expire_all()
    back = load_segmentation(session, seg_id)
    assert back.labels.dtype == noise.dtype and back.labels.shape == noise.shape
    assert np.array_equal(back.labels, noise)
    assert np.array_equal(load_mask(session, seg_id), noise)
    assert np.array_equal(back.patch_labels, seg.patch_labels) and back.patch_labels.dtype == seg.patch_labels.dtype
    assert back.segments == seg.segments
    d0, d1 = seg.diagnostics.to_dict(), back.diagnostics.to_dict()
    nan_key = str(max(seg.diagnostics.silhouette))
    assert math.isnan(d1["silhouette"].pop(nan_key)) and math.isnan(d0["silhouette"].pop(nan_key))
    assert d0 == d1  # floats bit-exact, lists, dicts, tuples (grid)
    # two variants of one image in one call
    ids = store_segmentations(session, b.id, run, [make_segmentation(variant="patch"), make_segmentation(k=4)], "w")
    assert len(ids) == 2 and load_segmentation(session, ids[0]).diagnostics.variant == "patch"
    assert session.execute(select(func.count()).select_from(SegmentRow)).scalar_one() == 15 + 3 + 4


@pytest.mark.parametrize(
    "arr",
    [
        np.zeros((480, 640), np.uint8),
        np.random.default_rng(0).integers(0, 300, (37, 53)).astype(np.int32),  # > 255 labels: uint16 storage
        np.random.default_rng(0).integers(-5, 70000, (10, 11)).astype(np.int64),
        np.random.default_rng(0).random((9, 7)) > 0.5,
        np.arange(12, dtype=">i4").reshape(3, 4),  # big-endian input
        np.zeros((0, 5), np.int16),
    ],
)
def test_mask_codec_is_bit_exact(arr):
    enc = encode_label_map(arr)
    back = decode_label_map(enc.data, enc.codec, enc.height, enc.width, enc.dtype, enc.stored_dtype)
    assert back.shape == arr.shape and back.dtype == arr.dtype
    assert np.array_equal(back, arr)


def test_mask_codec_refuses_non_integer_and_non_2d():
    with pytest.raises(ValueError):
        encode_label_map(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError):
        encode_label_map(np.zeros((4, 4, 3), np.uint8))


def test_dashboard_queries_and_run_counts(session):
    add_images(session, inputs(10))
    run = start_run(session, {"backbone": "classic"}, engine_version="9.9")
    claimed = claim_batch(session, "w", 10, lease_seconds=60)
    for i, c in enumerate(claimed[:7]):
        store_segmentation(session, c.id, run, make_segmentation(k=2 + i % 3), "w")
    record_failure(session, claimed[7].id, "HTTP 404 Not Found", "w", retryable=False, run_id=run)
    record_failure(session, claimed[8].id, "HTTP 404 Not Found", "w", retryable=False, run_id=run)
    summary = finish_run(session, run, device="cpu")
    assert (summary.status, summary.n_segmented, summary.n_failed) == ("finished", 7, 2)
    assert session.get(SegmentationRun, run).engine_version == "9.9"
    assert counts_by_status(session) == {
        "waiting": 0, "claimed": 1, "segmented": 7, "failed": 2, "sent_for_review": 0, "reviewed": 0,
    }
    assert k_distribution(session) == {2: 3, 3: 2, 4: 2}
    assert k_distribution(session, run_id=run, variant="patch") == {}
    buckets = throughput(session, bucket_seconds=3600)
    assert sum(n for _, n in buckets) == 7 and buckets[0][0].tzinfo is not None
    assert failure_reasons(session) == [("HTTP 404 Not Found", 2)]


def test_storage_per_image_at_640x480(session, capsys):
    """Bytes one 640x480 result takes: compressed mask + diagnostics JSON (figures for the closing note)."""
    add_images(session, inputs(1))
    run = start_run(session, {"backbone": "dino_vits8"})
    (c,) = claim_batch(session, "w", 1, lease_seconds=60)
    h, w = 480, 640
    ys, xs = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(0)
    seeds = rng.uniform([0, 0], [h, w], size=(6, 2))
    d = (ys[..., None] - seeds[:, 0]) ** 2 + (xs[..., None] - seeds[:, 1]) ** 2 + rng.normal(0, 300, (h, w, 6))
    labels = d.argmin(-1).astype(np.int32)  # 6 irregular regions with ragged edges, like CRF output
    seg_id = store_segmentation(session, c.id, run, make_segmentation(h, w, k=6, labels=labels), "w")
    sizes = storage_bytes(session, seg_id)
    with capsys.disabled():
        print(f"\n[storage 640x480, K=6, {session.get_bind().dialect.name}] {json.dumps(sizes)}")
    assert sizes["mask"] < 20_000 and sizes["diagnostics_json"] < 4_000


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


def test_deleting_an_image_cascades(session):
    from integrations.db import delete_image

    add_images(session, inputs(1))
    run = start_run(session, {"backbone": "classic"})
    (c,) = claim_batch(session, "w", 1, lease_seconds=60)
    store_segmentation(session, c.id, run, make_segmentation(), "w")
    assert delete_image(session, c.id)
    for model in (Image, SegmentationRecord, SegmentRow):
        assert session.execute(select(func.count()).select_from(model)).scalar_one() == 0


def test_timestamps_are_timezone_aware_utc(session):
    add_images(session, inputs(1))
    session.expire_all()
    img = session.scalars(select(Image)).one()
    assert img.created_at.utcoffset() == dt.timedelta(0)
    assert abs(img.created_at - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(minutes=5)


def test_stored_total_seconds_is_the_engines_total(session):
    add_images(session, inputs(1))
    run = start_run(session, {"backbone": "classic"}, orchestrator_run_id="flow-t", worker_id="w-a")
    (claimed,) = claim_batch(session, "w-a", 1, lease_seconds=60)
    seg = make_segmentation()
    seg.diagnostics.timings = {"backbone": 0.5, "crf": 0.25, "total": 0.8}
    seg_id = store_segmentation(session, claimed.id, run, seg, "w-a")
    # the stages plus `total` would sum to 1.55: the stored figure is the engine's own total
    assert session.get(SegmentationRecord, seg_id).total_seconds == pytest.approx(0.8)
