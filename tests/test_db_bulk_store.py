"""The bulk store (`store_batch`): bit-exact round trip, the same rows as the per-image
store, a lost lease in a batch, masks encoded in threads, and the flow's fallback when
one result of a batch cannot be stored. SQLite and PostgreSQL."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest_db import db_url, inputs, make_segmentation, migrated_url, pg_url, session, sqlite_url  # noqa: F401
from sqlalchemy import select

from integrations.db import (
    LeaseLostError,
    add_images,
    claim_batch,
    encode_results,
    load_segmentation,
    start_run,
    store_batch,
    store_segmentations,
)
from integrations.db.models import Image, SegmentationRecord, SegmentRow
from integrations.db.queue import reclaim_expired


def realistic(seed: int, variant: str = "pixel", *, h: int = 96, w: int = 128, k: int = 6, dim: int = 384):
    """K ragged regions (like CRF output), region embeddings (one all zero: stored NULL),
    coarser/finer alternatives and a NaN silhouette."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w]
    seeds = rng.uniform([0, 0], [h, w], size=(k, 2))
    d = (ys[..., None] - seeds[:, 0]) ** 2 + (xs[..., None] - seeds[:, 1]) ** 2 + rng.normal(0, 40, (h, w, k))
    labels = np.unique(d.argmin(-1), return_inverse=True)[1].reshape(h, w).astype(np.int32)
    k = int(labels.max()) + 1
    seg = make_segmentation(h, w, k=k, seed=seed, variant=variant, labels=labels, nan_silhouette=True)
    emb = rng.normal(size=(k, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    emb[k - 1] = 0.0
    seg.region_embeddings = emb
    seg.alternatives = {k - 1: seg.patch_labels.clip(0, k - 2), k + 1: seg.patch_labels}
    return seg


def _claim(session, n: int, worker: str = "w"):
    add_images(session, inputs(n))
    run = start_run(session, {"backbone": "dino_vits8"})
    return run, claim_batch(session, worker, n, lease_seconds=600)


def _assert_same_result(back, seg):
    assert back.labels.dtype == seg.labels.dtype and back.labels.shape == seg.labels.shape
    assert np.array_equal(back.labels, seg.labels)
    assert back.patch_labels.dtype == seg.patch_labels.dtype and np.array_equal(back.patch_labels, seg.patch_labels)
    assert back.segments == seg.segments
    d0, d1 = seg.diagnostics.to_dict(), back.diagnostics.to_dict()
    nan_key = str(max(seg.diagnostics.silhouette))
    assert math.isnan(d1["silhouette"].pop(nan_key)) and math.isnan(d0["silhouette"].pop(nan_key))
    assert d0 == d1
    coarser, finer = sorted(seg.alternatives)
    assert set(back.alternatives) == {coarser, finer}
    for kk in (coarser, finer):
        assert np.array_equal(back.alternatives[kk], seg.alternatives[kk])
        assert back.alternatives[kk].dtype == np.asarray(seg.alternatives[kk]).dtype


def _stored_embeddings(session, seg_id: int) -> dict[int, np.ndarray | None]:
    rows = session.execute(select(SegmentRow).where(SegmentRow.segmentation_id == seg_id)).scalars().all()
    return {r.label: r.embedding for r in rows}


def test_bulk_store_round_trips_bit_exactly(session):
    run, claimed = _claim(session, 5)
    items = [(c.id, [realistic(i, "patch"), realistic(100 + i, "pixel")]) for i, c in enumerate(claimed)]
    stored = store_batch(session, run, "w", items)
    assert stored.lost == {}
    assert list(stored.ids) == [c.id for c in claimed] and all(len(v) == 2 for v in stored.ids.values())
    session.expire_all()
    for image_id, segs in items:
        for seg_id, seg in zip(stored.ids[image_id], segs):
            back = load_segmentation(session, seg_id)
            _assert_same_result(back, seg)
            emb = _stored_embeddings(session, seg_id)
            k = seg.region_embeddings.shape[0]
            assert emb[k - 1] is None  # an all-zero embedding is not stored
            for label in range(k - 1):
                assert emb[label].dtype == np.float32
                assert emb[label].tobytes() == seg.region_embeddings[label].tobytes()
            row = session.get(SegmentationRecord, seg_id)
            assert (row.image_id, row.run_id, row.worker_id) == (image_id, run, "w")
    images = session.execute(select(Image).order_by(Image.id)).scalars().all()
    assert {(im.status, im.claimed_by, im.width, im.height) for im in images} == {("segmented", None, 128, 96)}


def _columns(row, skip: set[str]) -> dict:
    return {c.key: getattr(row, c.key) for c in row.__table__.columns if c.key not in skip}


def test_bulk_store_writes_the_same_rows_as_the_per_image_store(session):
    run, claimed = _claim(session, 6)
    results = [[realistic(i, "patch"), realistic(50 + i)] for i in range(3)]
    one_by_one = [store_segmentations(session, c.id, run, segs, "w") for c, segs in zip(claimed[:3], results)]
    bulk = store_batch(session, run, "w", [(c.id, segs) for c, segs in zip(claimed[3:], results)])
    session.expire_all()
    for ids_a, c in zip(one_by_one, claimed[3:]):
        ids_b = bulk.ids[c.id]
        for a, b in zip(ids_a, ids_b):
            ra, rb = session.get(SegmentationRecord, a), session.get(SegmentationRecord, b)
            skip = {"id", "image_id", "created_at"}
            assert _columns(ra, skip) == _columns(rb, skip)
            sa_ = [_columns(s, {"id", "segmentation_id", "embedding"}) for s in ra.segments]
            sb_ = [_columns(s, {"id", "segmentation_id", "embedding"}) for s in rb.segments]
            assert sa_ == sb_ and len(sa_) > 0
            assert [None if s.embedding is None else s.embedding.tobytes() for s in ra.segments] == [
                None if s.embedding is None else s.embedding.tobytes() for s in rb.segments
            ]
    images = session.execute(select(Image).order_by(Image.id)).scalars().all()
    skip = {"id", "uri", "content_sha256", "size_bytes", "created_at", "updated_at", "claimed_at", "segmented_at"}
    assert _columns(images[0], skip) == _columns(images[3], skip)


def test_a_lost_lease_in_the_batch_stores_the_others_and_reports_it(session):
    from conftest_db import expire_leases

    run, claimed = _claim(session, 3, worker="w-a")
    lost_one = claimed[1]
    expire_leases(session, [lost_one.id])
    reclaim_expired(session)
    (taken,) = claim_batch(session, "w-b", 1, lease_seconds=600)  # another worker holds it now
    assert taken.id == lost_one.id
    items = [(c.id, [realistic(i)]) for i, c in enumerate(claimed)]
    stored = store_batch(session, run, "w-a", items)
    assert set(stored.ids) == {claimed[0].id, claimed[2].id}
    assert set(stored.lost) == {lost_one.id}
    err = stored.lost[lost_one.id]
    assert isinstance(err, LeaseLostError) and "now claimed by 'w-b'" in str(err)
    session.expire_all()
    by_image = dict(session.execute(select(Image.id, Image.status)).all())
    assert by_image == {claimed[0].id: "segmented", lost_one.id: "claimed", claimed[2].id: "segmented"}
    stored_for = set(session.execute(select(SegmentationRecord.image_id)).scalars())
    assert stored_for == {claimed[0].id, claimed[2].id}
    assert session.get(Image, lost_one.id).claimed_by == "w-b"
    # the single-image store keeps its rule: raise, write nothing
    with pytest.raises(LeaseLostError, match="claimed by 'w-b'"):
        store_segmentations(session, lost_one.id, run, [realistic(9)], "w-a")
    assert set(session.execute(select(SegmentationRecord.image_id)).scalars()) == stored_for


def test_bulk_store_refuses_an_image_twice_or_without_results(session):
    run, claimed = _claim(session, 2)
    with pytest.raises(ValueError, match="listed twice"):
        store_batch(session, run, "w", [(claimed[0].id, [realistic(0)]), (claimed[0].id, [realistic(1)])])
    with pytest.raises(ValueError, match="at least one Segmentation"):
        store_batch(session, run, "w", [(claimed[1].id, [])])
    assert store_batch(session, run, "w", []).ids == {}
    assert session.execute(select(SegmentationRecord.id)).first() is None
    assert set(session.execute(select(Image.status)).scalars()) == {"claimed"}


def test_masks_encoded_in_threads_equal_the_serial_encoding():
    items = [(i, [realistic(i, h=240, w=320)]) for i in range(8)]
    serial = encode_results(1, "w", items, threads=1)
    threaded = encode_results(1, "w", items, threads=3)
    skip = {"created_at"}
    assert [(e.image_id, e.width, e.height, e.segments) for e in serial] == [
        (e.image_id, e.width, e.height, e.segments) for e in threaded
    ]
    for a, b in zip(serial, threaded):
        assert {k: v for k, v in a.segmentation.items() if k not in skip} == {
            k: v for k, v in b.segmentation.items() if k not in skip
        }
    assert len({e.segmentation["mask"] for e in serial}) == len(items)  # distinct masks, not one reused


def test_flow_store_one_bad_result_fails_alone(sqlite_url, monkeypatch):
    """The flow stores a batch with `store_batch`; a result that cannot be stored (here an
    embedding with NaN) makes the bulk call fail, and the image-by-image fallback then
    fails that image alone, at stage "store", and stores the others."""
    import logging

    from flows import segment
    from integrations.db.schema import upgrade
    from integrations.db.session import make_session_factory

    monkeypatch.setattr(segment, "get_run_logger", lambda: logging.getLogger("test"))
    upgrade(sqlite_url, "head")
    factory = make_session_factory(sqlite_url)
    with factory() as s:
        run, claimed = _claim(s, 4)
    done = []
    for i, c in enumerate(claimed):
        seg = realistic(i)
        if i == 2:
            seg.region_embeddings[0, 0] = np.nan
        done.append((segment.Item(c.id, f"/data/img{i}.jpg"), seg))
    statuses, lost, failures = segment._store(sqlite_url, run, "w", done, [], {"max_attempts": 3})
    assert lost == set()
    assert [(f.image_id, f.stage) for f in failures] == [(claimed[2].id, "store")]
    assert "NaN" in failures[0].reason
    assert statuses == {claimed[2].id: "failed"}
    with factory() as s:
        status = dict(s.execute(select(Image.id, Image.status)).all())
        assert status == {c.id: ("failed" if i == 2 else "segmented") for i, c in enumerate(claimed)}
        assert len(s.execute(select(SegmentationRecord.id)).all()) == 3


def test_flow_store_reports_a_lost_lease_and_stores_the_rest(sqlite_url, monkeypatch):
    import logging

    from conftest_db import expire_leases

    from flows import segment
    from integrations.db.schema import upgrade
    from integrations.db.session import make_session_factory

    monkeypatch.setattr(segment, "get_run_logger", lambda: logging.getLogger("test"))
    upgrade(sqlite_url, "head")
    factory = make_session_factory(sqlite_url)
    with factory() as s:
        run, claimed = _claim(s, 3)
        expire_leases(s, [claimed[0].id])
        reclaim_expired(s)
        claim_batch(s, "other", 1, lease_seconds=600)
    done = [(segment.Item(c.id, f"/data/img{i}.jpg"), realistic(i)) for i, c in enumerate(claimed)]
    statuses, lost, failures = segment._store(sqlite_url, run, "w", done, [], {"max_attempts": 3})
    assert (statuses, lost, failures) == ({}, {claimed[0].id}, [])
    with factory() as s:
        stored_for = set(s.execute(select(SegmentationRecord.image_id)).scalars())
        assert stored_for == {claimed[1].id, claimed[2].id}
