"""One row per image URI (merging existing duplicates), and run liveness (host, pid, heartbeat).

Before this revision, concurrent lazy registrations (`clasp run DIR` or
`clasp ingest --lazy` in several processes) could register the same URI several
times (seen: 5,600 rows for 2,000 URIs on PostgreSQL), so each copy was
segmented and pushed separately. Upgrading:

1. merges the rows that share a URI into one, keeping every result: the kept row
   is the most advanced one (reviewed > sent for review > segmented > claimed >
   waiting > failed; then one with a content hash; then the oldest). The others'
   segmentations, failures and review links are moved to it. Where the kept row
   already has the same result (same run and variant, or a review link of the same
   model version), the copy is dropped and whatever pointed at it (review links,
   reviews) is moved to the kept one; a content hash only the copy knew is kept;
2. makes `images.uri` unique (`ix_images_uri` becomes a unique index);
3. adds `segmentation_runs.host`, `pid`, `heartbeat_at` and the run status
   `abandoned` (a run whose process died without closing it).

Downgrading removes the columns and the unique key (runs `abandoned` become
`failed`); merged rows stay merged.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 08:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Most advanced first: the row that keeps the URI.
_STATUS_RANK = {'reviewed': 0, 'sent_for_review': 1, 'segmented': 2, 'claimed': 3, 'waiting': 4, 'failed': 5}
_OLD_RUN_STATUSES = "status IN ('running', 'finished', 'failed', 'cancelled')"
_NEW_RUN_STATUSES = "status IN ('running', 'finished', 'failed', 'cancelled', 'abandoned')"


def merge_duplicate_uris(conn: sa.Connection) -> int:
    """Merge images that share a URI into one row per URI; returns the number of rows removed."""
    dup_uris = [r[0] for r in conn.execute(sa.text(
        "SELECT uri FROM images GROUP BY uri HAVING COUNT(*) > 1"
    ))]
    removed = 0
    for uri in dup_uris:
        rows = conn.execute(
            sa.text("SELECT id, status, content_sha256 FROM images WHERE uri = :uri"), {'uri': uri}
        ).all()
        rows.sort(key=lambda r: (_STATUS_RANK.get(r[1], 9), r[2] is None, r[0]))
        keep, extras = rows[0][0], [r[0] for r in rows[1:]]
        sha = rows[0][2] or next((r[2] for r in rows[1:] if r[2] is not None), None)
        for extra in extras:
            _move_segmentations(conn, extra, keep)
            conn.execute(sa.text("UPDATE failures SET image_id = :k WHERE image_id = :e"), {'k': keep, 'e': extra})
            _move_review_links(conn, extra, keep)
        conn.execute(sa.text("DELETE FROM images WHERE id IN :ids").bindparams(sa.bindparam('ids', expanding=True)),
                     {'ids': extras})
        removed += len(extras)
        if sha is not None and rows[0][2] is None:
            conn.execute(sa.text("UPDATE images SET content_sha256 = :sha WHERE id = :k"), {'sha': sha, 'k': keep})
    return removed


def _move_segmentations(conn: sa.Connection, extra: int, keep: int) -> None:
    segs = conn.execute(
        sa.text("SELECT id, run_id, variant FROM segmentations WHERE image_id = :e"), {'e': extra}
    ).all()
    for seg_id, run_id, variant in segs:
        twin = conn.execute(
            sa.text("SELECT id FROM segmentations WHERE image_id = :k AND run_id = :r AND variant = :v"),
            {'k': keep, 'r': run_id, 'v': variant},
        ).scalar()
        if twin is None:
            conn.execute(sa.text("UPDATE segmentations SET image_id = :k WHERE id = :s"), {'k': keep, 's': seg_id})
        else:  # the same run made the same result for the kept row: point at that one
            conn.execute(sa.text("UPDATE review_links SET segmentation_id = :t WHERE segmentation_id = :s"),
                         {'t': twin, 's': seg_id})
            conn.execute(sa.text("DELETE FROM segments WHERE segmentation_id = :s"), {'s': seg_id})
            conn.execute(sa.text("DELETE FROM segmentations WHERE id = :s"), {'s': seg_id})


def _move_review_links(conn: sa.Connection, extra: int, keep: int) -> None:
    links = conn.execute(
        sa.text("SELECT id, model_version FROM review_links WHERE image_id = :e"), {'e': extra}
    ).all()
    for link_id, model_version in links:
        twin = conn.execute(
            sa.text("SELECT id FROM review_links WHERE image_id = :k AND model_version = :m"),
            {'k': keep, 'm': model_version},
        ).scalar()
        if twin is None:
            conn.execute(sa.text("UPDATE review_links SET image_id = :k WHERE id = :l"), {'k': keep, 'l': link_id})
        else:  # the same proposal pushed twice: keep every review, under the kept link
            conn.execute(sa.text("UPDATE reviews SET review_link_id = :t WHERE review_link_id = :l"),
                         {'t': twin, 'l': link_id})
            conn.execute(sa.text("DELETE FROM review_links WHERE id = :l"), {'l': link_id})


def _set_run_status_check(old: str, new: str) -> None:
    """Replace the CHECK on segmentation_runs.status.

    SQLite cannot alter a CHECK, and the usual copy-and-rename (Alembic's batch mode)
    drops the old table, which with foreign keys on (they are, see session.py, and
    PRAGMA foreign_keys cannot change inside the migration's transaction) cascades
    into every segmentation of every run. The constraint text is edited in the schema
    instead, as SQLite's ALTER TABLE documentation describes for constraint changes
    that leave the stored rows valid (every row already satisfies `new`).
    """
    conn = op.get_bind()
    if conn.dialect.name != 'sqlite':
        op.drop_constraint(op.f('ck_segmentation_runs_status'), 'segmentation_runs', type_='check')
        op.create_check_constraint(op.f('ck_segmentation_runs_status'), 'segmentation_runs', sa.text(new))
        return
    ddl = conn.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'segmentation_runs'"
    ).scalar_one()
    if old not in ddl:
        raise RuntimeError(f"segmentation_runs: expected the CHECK {old!r} in its schema, found: {ddl}")
    version = conn.exec_driver_sql("PRAGMA schema_version").scalar_one()
    conn.exec_driver_sql("PRAGMA writable_schema = ON")
    conn.execute(
        sa.text("UPDATE sqlite_master SET sql = :sql WHERE type = 'table' AND name = 'segmentation_runs'"),
        {'sql': ddl.replace(old, new)},
    )
    conn.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
    conn.exec_driver_sql("PRAGMA writable_schema = OFF")


def upgrade() -> None:
    merge_duplicate_uris(op.get_bind())
    op.drop_index('ix_images_uri', table_name='images')
    op.create_index('ix_images_uri', 'images', ['uri'], unique=True)
    op.add_column('segmentation_runs', sa.Column('host', sa.String(length=255), nullable=True))
    op.add_column('segmentation_runs', sa.Column('pid', sa.Integer(), nullable=True))
    op.add_column('segmentation_runs', sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))
    _set_run_status_check(_OLD_RUN_STATUSES, _NEW_RUN_STATUSES)


def downgrade() -> None:
    op.execute("UPDATE segmentation_runs SET status = 'failed' WHERE status = 'abandoned'")
    _set_run_status_check(_NEW_RUN_STATUSES, _OLD_RUN_STATUSES)
    op.drop_column('segmentation_runs', 'heartbeat_at')
    op.drop_column('segmentation_runs', 'pid')
    op.drop_column('segmentation_runs', 'host')
    op.drop_index('ix_images_uri', table_name='images')
    op.create_index('ix_images_uri', 'images', ['uri'], unique=False)
