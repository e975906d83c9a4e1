"""Revision 0002 merges images registered twice under one URI, keeping every result (issue 13.2),
and adds run liveness; upgrade and downgrade on SQLite and PostgreSQL."""

from __future__ import annotations

from conftest_db import db_url, pg_url, sqlite_url  # noqa: F401
from sqlalchemy import text

from integrations.db import schema
from integrations.db.session import make_engine

_SEG = ("INSERT INTO segmentations (id, image_id, run_id, variant, k, mask, mask_codec, mask_height, mask_width, "
        "mask_dtype, mask_stored_dtype, mask_bytes, diagnostics) VALUES (:id, :image, :run, :variant, :k, :mask, "
        "'raw', 1, 1, 'uint8', 'uint8', 1, '{}')")


def _seed_duplicates(conn) -> None:
    """At revision 0001: /a.jpg three times (waiting; segmented in run 1 and 2 with a review; segmented in
    run 1 again, pushed and reviewed), /b.jpg twice (failed with a hash; waiting), /c.jpg once."""
    conn.execute(text("INSERT INTO segmentation_runs (id, engine_version, config, backbone) VALUES "
                      "(1, '0', '{}', 'classic'), (2, '0', '{}', 'classic')"))
    conn.execute(text(
        "INSERT INTO images (id, uri, status, content_sha256) VALUES "
        "(1, '/a.jpg', 'waiting', NULL), (2, '/a.jpg', 'sent_for_review', NULL), (3, '/a.jpg', 'segmented', NULL), "
        "(4, '/b.jpg', 'failed', 'bb'), (5, '/b.jpg', 'waiting', NULL), (6, '/c.jpg', 'waiting', 'cc')"))
    for seg_id, image, run, k in ((10, 2, 1, 3), (11, 2, 2, 4), (12, 3, 1, 5)):
        conn.execute(text(_SEG), dict(id=seg_id, image=image, run=run, variant="pixel", k=k, mask=b"\x00"))
    conn.execute(text("INSERT INTO segments (segmentation_id, label, area, x0, y0, x1, y1, confidence) VALUES "
                      "(10, 0, 1, 0, 0, 1, 1, 1.0), (12, 0, 1, 0, 0, 1, 1, 1.0)"))
    conn.execute(text("INSERT INTO failures (image_id, run_id, reason, retryable, final) VALUES "
                      "(1, 1, 'read: timeout', true, false), (4, 1, 'decode: truncated', false, true)"))
    conn.execute(text("INSERT INTO review_links (id, image_id, segmentation_id, ls_project_id, ls_task_id, model_version) "
                      "VALUES (20, 2, 10, 1, 100, 'v1'), (21, 3, 12, 1, 101, 'v1'), (22, 3, 12, 1, 102, 'v2')"))
    conn.execute(text("INSERT INTO reviews (review_link_id, ls_annotation_id, result) VALUES "
                      "(20, 1000, '[]'), (21, 1001, '[]')"))


def test_upgrade_merges_duplicate_uris_keeping_results_and_downgrades(db_url):
    schema.upgrade(db_url, "0001")
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            _seed_duplicates(conn)
        schema.upgrade(db_url, "0003")
        with engine.connect() as conn:
            q = lambda sql: conn.execute(text(sql)).all()  # noqa: E731
            # one row per URI; the kept one is the most advanced (2 was sent for review; 5 waits, so it is
            # tried again, and takes the hash only 4 knew)
            assert q("SELECT uri, id, status, content_sha256 FROM images ORDER BY uri") == [
                ("/a.jpg", 2, "sent_for_review", None), ("/b.jpg", 5, "waiting", "bb"), ("/c.jpg", 6, "waiting", "cc")]
            # run 1's result for image 3 duplicated image 2's (same run, same variant): one is kept, with the links
            assert q("SELECT id, image_id, run_id FROM segmentations ORDER BY id") == [(10, 2, 1), (11, 2, 2)]
            assert q("SELECT segmentation_id, COUNT(*) FROM segments GROUP BY segmentation_id") == [(10, 1)]
            assert sorted(q("SELECT image_id, reason FROM failures")) == [(2, "read: timeout"), (5, "decode: truncated")]
            # link 21 (same model version as 20) merged into 20 with its review; link 22 (v2) moved
            assert q("SELECT id, image_id, segmentation_id, ls_task_id FROM review_links ORDER BY id") == [
                (20, 2, 10, 100), (22, 2, 10, 102)]
            assert q("SELECT review_link_id, ls_annotation_id FROM reviews ORDER BY ls_annotation_id") == [
                (20, 1000), (20, 1001)]
        # the key now holds: a second row for a URI is refused
        with engine.begin() as conn:
            conn.execute(text("UPDATE segmentation_runs SET status = 'abandoned', pid = 1, host = 'h' WHERE id = 2"))
        try:
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO images (uri) VALUES ('/c.jpg')"))
            raise AssertionError("a second row for /c.jpg was accepted")
        except Exception as exc:  # IntegrityError, named by the dialect's driver
            assert "unique" in str(exc).lower()
        schema.downgrade(db_url, "0001")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT status FROM segmentation_runs WHERE id = 2")).scalar_one() == "failed"
        schema.upgrade(db_url)
        assert schema.schema_status(db_url).up_to_date
    finally:
        engine.dispose()
