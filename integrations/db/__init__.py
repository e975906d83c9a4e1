"""CLASP's SQL data layer: models, sessions, migrations and the pipeline's operations.

    from integrations.db import ensure_schema, make_session_factory, claim_batch, ...
    ensure_schema(url)                      # upgrades SQLite to head; PostgreSQL: raises if behind
    Session = make_session_factory(url)
    with Session() as s:
        register_images(s, [ImageInput(uri, sha256, size)])
        batch = claim_batch(s, worker_id, 16, lease_seconds=600)

See repository.py for the work-queue rules and schema.py for the schema guard.
"""

from integrations.db.masks import EncodedMask, decode_mask, encode_mask
from integrations.db.repository import (
    ClaimedImage,
    ImageInput,
    LeaseLostError,
    ReclaimResult,
    RegisterResult,
    RunSummary,
    claim_batch,
    counts_by_status,
    delete_image,
    extend_lease,
    failure_reasons,
    finish_run,
    k_distribution,
    latest_segmentation_id,
    load_mask,
    load_segmentation,
    recent_runs,
    reclaim_expired,
    record_failure,
    register_images,
    release_claims,
    requeue_failed,
    run_counts,
    start_run,
    storage_bytes,
    store_segmentation,
    store_segmentations,
    throughput,
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

__all__ = [name for name in dir() if not name.startswith("_")]
