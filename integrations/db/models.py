"""SQLAlchemy 2 models: everything the pipeline knows lives in these tables.

The same models and the same Alembic history run on SQLite and PostgreSQL:
- ids are BIGINT on PostgreSQL and INTEGER (rowid alias) on SQLite;
- JSON is JSONB on PostgreSQL, JSON (text) on SQLite;
- timestamps are timezone-aware UTC on both (`UTCDateTime` adds the missing
  tzinfo on SQLite, which stores naive text);
- server defaults use CURRENT_TIMESTAMP (`now()` does not exist on SQLite).

A test (`tests/test_db_migrations.py`) fails when these models and the
migration history disagree: change both together (`alembic revision
--autogenerate`, then review the file by hand).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from integrations.db.vector import Vector

# Image lifecycle. `waiting` -> `claimed` -> `segmented` -> `sent_for_review` -> `reviewed`;
# `claimed` -> `waiting` again on a retryable failure or an expired lease, `failed` at the end.
WAITING = "waiting"
CLAIMED = "claimed"
SEGMENTED = "segmented"
FAILED = "failed"
SENT_FOR_REVIEW = "sent_for_review"
REVIEWED = "reviewed"
IMAGE_STATUSES = (WAITING, CLAIMED, SEGMENTED, FAILED, SENT_FOR_REVIEW, REVIEWED)

# `abandoned`: the process running it died without closing it (kill -9, power loss); closed
# later by `close_dead_runs` from its stale heartbeat or its missing process.
RUN_STATUSES = ("running", "finished", "failed", "cancelled", "abandoned")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC timestamps on every backend.

    PostgreSQL: `timestamp with time zone`. SQLite stores naive ISO text, so values
    are converted to UTC before they are written and marked UTC when read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        value = value.astimezone(dt.timezone.utc)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# BIGINT identity on PostgreSQL; INTEGER PRIMARY KEY (the rowid, auto-increment) on SQLite.
Id = BigInteger().with_variant(Integer(), "sqlite")
Json = JSON().with_variant(JSONB(), "postgresql")


def _status_check(column: str, values: tuple[str, ...], name: str) -> CheckConstraint:
    allowed = ", ".join(f"'{v}'" for v in values)
    return CheckConstraint(f"{column} IN ({allowed})", name=name)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Image(Base):
    """One image to segment: once per URI, and once per content hash where the bytes were read.

    Both keys are unique in the schema, so registering the same image from several
    processes at once cannot make two rows (registry.py inserts with ON CONFLICT DO NOTHING).
    """

    __tablename__ = "images"
    __table_args__ = (
        _status_check("status", IMAGE_STATUSES, "status"),
        Index("ix_images_status_id", "status", "id"),
        Index("ix_images_status_lease", "status", "lease_expires_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    uri: Mapped[str] = mapped_column(Text, index=True, unique=True)
    # sha256 of the bytes; NULL when registered by URI only (read later) or unreadable at ingest.
    content_sha256: Mapped[str | None] = mapped_column(String(64), unique=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default=WAITING, server_default=WAITING)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    claimed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(
        UTCDateTime, default=utcnow, server_default=func.current_timestamp()
    )
    updated_at: Mapped[dt.datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow, server_default=func.current_timestamp()
    )
    segmented_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    segmentations: Mapped[list[SegmentationRecord]] = relationship(
        back_populates="image", cascade="all, delete-orphan", passive_deletes=True
    )


class SegmentationRun(Base):
    """One engine run (one worker or one flow run): how the segmentations were made."""

    __tablename__ = "segmentation_runs"
    __table_args__ = (_status_check("status", RUN_STATUSES, "status"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    engine_version: Mapped[str] = mapped_column(String(50))
    config: Mapped[dict[str, Any]] = mapped_column(Json)
    config_fingerprint: Mapped[str | None] = mapped_column(String(64), index=True)
    backbone: Mapped[str] = mapped_column(String(100))
    weights: Mapped[str | None] = mapped_column(String(200))
    weights_sha256: Mapped[str | None] = mapped_column(String(64))
    orchestrator_run_id: Mapped[str | None] = mapped_column(String(100), index=True)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    device: Mapped[str | None] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(20), default="running", server_default="running")
    # Who runs it and whether it still lives: a run whose process is gone (same host) or whose
    # heartbeat is stale is closed as `abandoned` by the next command (runs.close_dead_runs).
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[dt.datetime] = mapped_column(
        UTCDateTime, default=utcnow, server_default=func.current_timestamp()
    )
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    n_segmented: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    n_failed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class SegmentationRecord(Base):
    """One stored result: the mask, K and the diagnostics that explain it.

    (The engine's in-memory result is `clasp_engine.result.Segmentation`; this is its row.)"""

    __tablename__ = "segmentations"
    __table_args__ = (
        UniqueConstraint("image_id", "run_id", "variant"),
        Index("ix_segmentations_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("segmentation_runs.id", ondelete="CASCADE"), index=True)
    variant: Mapped[str] = mapped_column(String(20))
    k: Mapped[int] = mapped_column(Integer, index=True)
    elbow_k: Mapped[int | None] = mapped_column(Integer)
    k_rule: Mapped[str | None] = mapped_column(String(20))
    device: Mapped[str | None] = mapped_column(String(50))
    total_seconds: Mapped[float | None] = mapped_column(Float)
    # Label map at the original size, losslessly compressed (integrations.db.masks).
    mask: Mapped[bytes] = mapped_column(LargeBinary)
    mask_codec: Mapped[str] = mapped_column(String(20))
    mask_height: Mapped[int] = mapped_column(Integer)
    mask_width: Mapped[int] = mapped_column(Integer)
    mask_dtype: Mapped[str] = mapped_column(String(20))
    mask_stored_dtype: Mapped[str] = mapped_column(String(20))
    mask_bytes: Mapped[int] = mapped_column(Integer)
    # Patch-grid labels, same codec (small).
    patch_mask: Mapped[bytes | None] = mapped_column(LargeBinary)
    patch_rows: Mapped[int | None] = mapped_column(Integer)
    patch_cols: Mapped[int | None] = mapped_column(Integer)
    patch_dtype: Mapped[str | None] = mapped_column(String(20))
    patch_stored_dtype: Mapped[str | None] = mapped_column(String(20))
    # Diagnostics.to_dict(): eigenvalues, eigengaps, elbow, silhouette per candidate,
    # chosen K and rule, per-stage timings, device, backbone, config ...
    diagnostics: Mapped[dict[str, Any]] = mapped_column(Json)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(
        UTCDateTime, default=utcnow, server_default=func.current_timestamp()
    )

    image: Mapped[Image] = relationship(back_populates="segmentations")
    run: Mapped[SegmentationRun] = relationship()
    segments: Mapped[list[SegmentRow]] = relationship(
        back_populates="segmentation",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="SegmentRow.label",
    )


class SegmentRow(Base):
    """One region of a segmentation: area, bounding box, confidence."""

    __tablename__ = "segments"
    __table_args__ = (
        UniqueConstraint("segmentation_id", "label"),
        # bytes = 4 x dimension: a vector of the wrong length never lands (octet length on both backends)
        CheckConstraint("embedding IS NULL OR length(embedding) = 4 * embedding_dim", name="embedding_dim"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    segmentation_id: Mapped[int] = mapped_column(ForeignKey("segmentations.id", ondelete="CASCADE"))
    label: Mapped[int] = mapped_column(Integer)
    area: Mapped[int] = mapped_column(Integer)
    x0: Mapped[int] = mapped_column(Integer)
    y0: Mapped[int] = mapped_column(Integer)
    x1: Mapped[int] = mapped_column(Integer)
    y1: Mapped[int] = mapped_column(Integer)
    confidence: Mapped[float] = mapped_column(Float)
    # --- region embedding (issue 12): mean patch feature, L2-normalised, and the model that made it
    embedding: Mapped[Any | None] = mapped_column(Vector())
    embedding_dim: Mapped[int | None] = mapped_column(Integer)
    embedding_model: Mapped[str | None] = mapped_column(String(300))

    segmentation: Mapped[SegmentationRecord] = relationship(back_populates="segments")


class FailureRecord(Base):
    """Every failed attempt, with its reason (the image keeps only the last one).

    (A failure inside a running batch is a plain dataclass of the flows; this is the stored row.)"""

    __tablename__ = "failures"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("segmentation_runs.id", ondelete="SET NULL"), index=True)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    retryable: Mapped[bool] = mapped_column(Boolean)
    final: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[dt.datetime] = mapped_column(
        UTCDateTime, default=utcnow, server_default=func.current_timestamp()
    )


class ReviewLink(Base):
    """A segmentation pushed to Label Studio: project, task and prediction ids."""

    __tablename__ = "review_links"
    __table_args__ = (UniqueConstraint("image_id", "model_version"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    segmentation_id: Mapped[int | None] = mapped_column(
        ForeignKey("segmentations.id", ondelete="SET NULL"), index=True
    )
    ls_project_id: Mapped[int] = mapped_column(BigInteger)
    ls_task_id: Mapped[int] = mapped_column(BigInteger, index=True)
    ls_prediction_id: Mapped[int | None] = mapped_column(BigInteger)
    model_version: Mapped[str] = mapped_column(String(100))
    sent_at: Mapped[dt.datetime] = mapped_column(
        UTCDateTime, default=utcnow, server_default=func.current_timestamp()
    )

    reviews: Mapped[list[Review]] = relationship(
        back_populates="review_link", cascade="all, delete-orphan", passive_deletes=True
    )


class Review(Base):
    """A reviewer's final annotation from Label Studio, with survival statistics."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    review_link_id: Mapped[int] = mapped_column(ForeignKey("review_links.id", ondelete="CASCADE"), index=True)
    ls_annotation_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    result: Mapped[Any] = mapped_column(Json)
    reviewer: Mapped[str | None] = mapped_column(String(200))
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # How much of the proposal survived review (computed by the Label Studio integration).
    survival: Mapped[dict[str, Any] | None] = mapped_column(Json)
    created_at: Mapped[dt.datetime] = mapped_column(
        UTCDateTime, default=utcnow, server_default=func.current_timestamp()
    )
    updated_at: Mapped[dt.datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow, server_default=func.current_timestamp()
    )

    review_link: Mapped[ReviewLink] = relationship(back_populates="reviews")


# --------------------------------------------------------------------------- exemplars (issue 12)


class Exemplar(Base):
    """A reviewed region: the final label a reviewer gave a proposal, with that proposal's embedding.

    One row per proposal (segment). A later review of the same task replaces the
    label; a proposal the reviewer deleted is kept as ``active = False`` so that
    incremental index refreshes see the removal (they read rows by ``updated_at``).
    """

    __tablename__ = "exemplars"
    __table_args__ = (
        CheckConstraint("length(embedding) = 4 * embedding_dim", name="embedding_dim"),
        Index("ix_exemplars_model_updated", "embedding_model", "updated_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    segment_id: Mapped[int | None] = mapped_column(
        ForeignKey("segments.id", ondelete="CASCADE"), unique=True
    )
    label: Mapped[str] = mapped_column(String(100))
    embedding: Mapped[Any] = mapped_column(Vector())
    embedding_dim: Mapped[int] = mapped_column(Integer)
    embedding_model: Mapped[str] = mapped_column(String(300))
    review_id: Mapped[int | None] = mapped_column(ForeignKey("reviews.id", ondelete="SET NULL"), index=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default="1")
    created_at: Mapped[dt.datetime] = mapped_column(
        UTCDateTime, default=utcnow, server_default=func.current_timestamp()
    )
    updated_at: Mapped[dt.datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow, server_default=func.current_timestamp()
    )
