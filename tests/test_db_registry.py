"""Registering images (once per content, lazily by URI, unreadable at ingest), deleting them,
timestamps. SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

from conftest_db import db_url, inputs, make_segmentation, migrated_url, pg_url, session, sha, sqlite_url  # noqa: F401
from sqlalchemy import func, select

from integrations.db import (
    ImageInput,
    add_images,
    claim_batch,
    counts_by_status,
    start_run,
    store_segmentation,
)
from integrations.db.models import Image, SegmentationRecord, SegmentRow


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
