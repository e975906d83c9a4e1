"""CLASP's SQL data layer: models, sessions, schema, and the pipeline's operations by job.

    from integrations.db import ensure_schema, make_session_factory, add_images, claim_batch, ...
    ensure_schema(url)                      # upgrades SQLite to head; PostgreSQL: raises if behind
    Session = make_session_factory(url)
    with Session() as s:
        add_images(s, [ImageInput(uri, sha256, size)])
        batch = claim_batch(s, worker_id, 16, lease_seconds=600)

Modules, one job each (every operation is a plain function over a Session):
- registry.py  registering images (once per content) and deleting them;
- queue.py     the work queue: claim, lease, renew, fail, release, reclaim (its rules are there);
- results.py   storing segmentations (finishes a claim) and reading them back;
- runs.py      segmentation runs (what made the results, and their counts);
- stats.py     status and dashboard queries;
- reviews.py   the review tables (links to Label Studio tasks, reviews), SQL only;
- models.py, masks.py (label-map codec), session.py, schema.py (schema guard);
- batching.py, dialect.py, jsonsafe.py: small helpers the operation modules share.
"""

from integrations.db.masks import EncodedMask, decode_label_map, encode_label_map
from integrations.db.queue import (
    ClaimedImage,
    LeaseLostError,
    ReclaimResult,
    claim_batch,
    extend_lease,
    reclaim_expired,
    record_failed_step,
    record_failure,
    release_claims,
    renew_leases,
    requeue_failed,
)
from integrations.db.registry import ImageInput, RegisterResult, add_images, delete_image
from integrations.db.results import (
    latest_segmentation_id,
    load_mask,
    load_segmentation,
    StoredBatch,
    encode_results,
    storage_bytes,
    store_batch,
    store_segmentation,
    store_segmentations,
)
from integrations.db.runs import (
    RunSummary,
    beat_run,
    close_dead_runs,
    finish_run,
    recent_runs,
    run_counts,
    start_run,
)
from integrations.db.schema import (
    SchemaBehindError,
    SchemaError,
    SchemaMismatchError,
    SchemaStatus,
    downgrade,
    ensure_schema,
    schema_status,
    upgrade,
)
from integrations.db.session import display_url, make_engine, make_session_factory, normalize_url, session_scope
from integrations.db.stats import (
    counts_by_status,
    failed_images,
    failure_reasons,
    k_distribution,
    run_failures,
    throughput,
)

__all__ = [name for name in dir() if not name.startswith("_")]
