"""Storing results and reading them back: segmentations, their masks, segments and diagnostics.

    ids = store_segmentations(session, image_id, run_id, [patch_result, pixel_result], worker_id)
    seg = load_segmentation(session, ids[0])        # the engine's Segmentation, bit-exact labels

Storing finishes the image's claim (`claimed` -> `segmented`): only the lease
holder may store, anyone else gets `LeaseLostError` and nothing is written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from clasp_engine.result import Diagnostics, Segment, Segmentation
from integrations.db.batching import commit_or_flush
from integrations.db.embeddings import attach_embeddings
from integrations.db.granularity import encode_alternatives, split_diagnostics
from integrations.db.dialect import db_now, dialect_name
from integrations.db.jsonsafe import from_json, to_json
from integrations.db.masks import decode_label_map, encode_label_map
from integrations.db.models import CLAIMED, SEGMENTED, Image, SegmentationRecord, SegmentRow, utcnow
from integrations.db.queue import lease_lost


def store_segmentation(
    session: Session,
    image_id: int,
    run_id: int,
    segmentation: Segmentation,
    worker_id: str,
    *,
    commit: bool = True,
) -> int:
    """Store one result for a claimed image and mark it segmented. Returns the segmentation id.

    Raises LeaseLostError (and writes nothing) unless `worker_id` holds the lease.
    """
    return store_segmentations(session, image_id, run_id, [segmentation], worker_id, commit=commit)[0]


def store_segmentations(
    session: Session,
    image_id: int,
    run_id: int,
    segmentations: Sequence[Segmentation],
    worker_id: str,
    *,
    commit: bool = True,
) -> list[int]:
    """Several results (e.g. the patch and pixel variants) for one image, in one transaction."""
    if not segmentations:
        raise ValueError("store_segmentations needs at least one Segmentation")
    first = segmentations[0].diagnostics
    now = db_now(session)
    guard = (
        update(Image)
        .where(Image.id == image_id, Image.status == CLAIMED, Image.claimed_by == worker_id)
        .values(
            status=SEGMENTED,
            claimed_by=None,
            lease_expires_at=None,
            last_error=None,
            segmented_at=now,
            updated_at=now,
            width=func.coalesce(Image.width, first.width),
            height=func.coalesce(Image.height, first.height),
        )
        .returning(Image.id)
        .execution_options(synchronize_session=False)
    )
    if session.execute(guard).first() is None:
        raise lease_lost(session, image_id, worker_id)
    ids = []
    for seg in segmentations:
        row = _segmentation_row(image_id, run_id, seg, worker_id)
        session.add(row)
        session.flush()
        ids.append(row.id)
    commit_or_flush(session, commit)
    return ids


def _total_seconds(timings: dict[str, float]) -> float | None:
    """The engine's own total; summing the stages would count `total` twice."""
    if not timings:
        return None
    if "total" in timings:
        return float(timings["total"])
    return float(sum(timings.values()))


def _segmentation_row(image_id: int, run_id: int, seg: Segmentation, worker_id: str | None) -> SegmentationRecord:
    d = seg.diagnostics
    mask = encode_label_map(seg.labels)
    row = SegmentationRecord(
        image_id=image_id,
        run_id=run_id,
        variant=d.variant,
        k=int(d.k),
        elbow_k=None if d.elbow_k is None else int(d.elbow_k),
        k_rule=d.k_rule,
        device=d.device,
        total_seconds=_total_seconds(d.timings),
        mask=mask.data,
        mask_codec=mask.codec,
        mask_height=mask.height,
        mask_width=mask.width,
        mask_dtype=mask.dtype,
        mask_stored_dtype=mask.stored_dtype,
        mask_bytes=mask.size,
        diagnostics=to_json({**d.to_dict(), **encode_alternatives(int(d.k), seg.alternatives)}),
        worker_id=worker_id,
        created_at=utcnow(),
    )
    if seg.patch_labels is not None and np.asarray(seg.patch_labels).ndim == 2:
        patch = encode_label_map(seg.patch_labels)
        row.patch_mask = patch.data
        row.patch_rows, row.patch_cols = patch.height, patch.width
        row.patch_dtype, row.patch_stored_dtype = patch.dtype, patch.stored_dtype
    row.segments = [
        SegmentRow(
            label=int(s.label),
            area=int(s.area),
            x0=int(s.bbox[0]),
            y0=int(s.bbox[1]),
            x1=int(s.bbox[2]),
            y1=int(s.bbox[3]),
            confidence=float(s.confidence),
        )
        for s in seg.segments
    ]
    attach_embeddings(row.segments, seg)  # region embeddings for exemplars and suggestions
    return row


def record_label_map(record: SegmentationRecord) -> np.ndarray:
    """The label map of a loaded segmentation row, bit-exact (values, dtype, shape)."""
    return decode_label_map(
        record.mask, record.mask_codec, record.mask_height, record.mask_width, record.mask_dtype, record.mask_stored_dtype
    )


def load_mask(session: Session, segmentation_id: int) -> np.ndarray:
    """The stored label map, bit-exact (values, dtype, shape)."""
    row = session.execute(
        select(
            SegmentationRecord.mask,
            SegmentationRecord.mask_codec,
            SegmentationRecord.mask_height,
            SegmentationRecord.mask_width,
            SegmentationRecord.mask_dtype,
            SegmentationRecord.mask_stored_dtype,
        ).where(SegmentationRecord.id == segmentation_id)
    ).first()
    if row is None:
        raise KeyError(f"no segmentation {segmentation_id}")
    return decode_label_map(*row)


def load_segmentation(session: Session, segmentation_id: int) -> Segmentation:
    """The stored result as the engine's Segmentation (labels, patch labels, segments, diagnostics)."""
    row = session.get(SegmentationRecord, segmentation_id)
    if row is None:
        raise KeyError(f"no segmentation {segmentation_id}")
    labels = record_label_map(row)
    if row.patch_mask is not None:
        patch = decode_label_map(
            row.patch_mask, row.mask_codec, row.patch_rows, row.patch_cols, row.patch_dtype, row.patch_stored_dtype
        )
    else:
        patch = np.zeros((0, 0), dtype=np.int32)
    segments = [Segment(s.label, s.area, (s.x0, s.y0, s.x1, s.y1), s.confidence) for s in row.segments]
    stored, alternatives = split_diagnostics(from_json(row.diagnostics))
    diagnostics = Diagnostics.from_dict(stored)
    return Segmentation(labels=labels, patch_labels=patch, segments=segments, diagnostics=diagnostics,
                        alternatives=alternatives)


def latest_segmentation_id(session: Session, image_id: int, *, variant: str | None = None) -> int | None:
    """Id of the image's newest segmentation (of `variant` if given), None if it has none."""
    stmt = select(SegmentationRecord.id).where(SegmentationRecord.image_id == image_id)
    if variant is not None:
        stmt = stmt.where(SegmentationRecord.variant == variant)
    return session.execute(stmt.order_by(SegmentationRecord.id.desc()).limit(1)).scalar()


def storage_bytes(session: Session, segmentation_id: int) -> dict[str, int]:
    """Bytes one segmentation takes: compressed mask, patch mask, diagnostics JSON, segment rows."""
    row = session.get(SegmentationRecord, segmentation_id)
    if row is None:
        raise KeyError(f"no segmentation {segmentation_id}")
    sizes = {
        "mask": len(row.mask),
        "patch_mask": len(row.patch_mask or b""),
        "diagnostics_json": len(json.dumps(row.diagnostics, separators=(",", ":"))),
        "segments": len(row.segments),
    }
    if dialect_name(session) == "postgresql":  # as stored: JSONB binary form, TOAST compression
        on_disk = session.execute(
            select(func.pg_column_size(SegmentationRecord.mask), func.pg_column_size(SegmentationRecord.diagnostics)).where(
                SegmentationRecord.id == segmentation_id
            )
        ).one()
        sizes["pg_mask_column"], sizes["pg_diagnostics_column"] = int(on_disk[0]), int(on_disk[1])
    return sizes


__all__ = [
    "latest_segmentation_id",
    "load_mask",
    "load_segmentation",
    "record_label_map",
    "storage_bytes",
    "store_segmentation",
    "store_segmentations",
]
