"""Dashboard queries and run counts. SQLite and PostgreSQL."""

from __future__ import annotations

from conftest_db import db_url, inputs, make_segmentation, migrated_url, pg_url, session, sqlite_url  # noqa: F401

from integrations.db import (
    add_images,
    claim_batch,
    counts_by_status,
    failure_reasons,
    finish_run,
    k_distribution,
    record_failure,
    start_run,
    store_segmentation,
    throughput,
)
from integrations.db.models import SegmentationRun


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
