"""Storing results and reading them back: segmentations, their masks, segments and diagnostics.

    ids = store_segmentations(session, image_id, run_id, [patch_result, pixel_result], worker_id)
    seg = load_segmentation(session, ids[0])        # the engine's Segmentation, bit-exact labels
    done = store_batch(session, run_id, worker_id, [(image_id, [result]), ...])  # a worker's batch
    done.ids[image_id], done.lost                    # segmentation ids; images whose lease was lost

Storing finishes the image's claim (`claimed` -> `segmented`): only the lease
holder may store, anyone else gets `LeaseLostError` and nothing is written
(`store_batch` stores the images it holds and reports the others in `lost`).
The per-image functions are `store_batch` with one image: the same rows.
`benchmarks/bench_store.py` prints results stored per second, per image and in bulk.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import case, func, insert, select, update
from sqlalchemy.orm import Session

from clasp_engine.result import Diagnostics, Segment, Segmentation
from integrations.db.batching import chunks, commit_or_flush
from integrations.db.embeddings import embedding_model
from integrations.db.granularity import encode_alternatives, split_diagnostics
from integrations.db.dialect import db_now, dialect_name
from integrations.db.jsonsafe import from_json, to_json
from integrations.db.masks import decode_label_map, encode_label_map
from integrations.db.models import CLAIMED, SEGMENTED, Image, SegmentationRecord, SegmentRow, utcnow
from integrations.db.queue import LeaseLostError
from integrations.db.vector import vector_bytes


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
    """Several results (e.g. the patch and pixel variants) for one image, in one transaction.

    The bulk path (`store_batch`) with one image: raises LeaseLostError, after rolling
    the session's transaction back, unless `worker_id` holds the lease.
    """
    stored = store_batch(session, run_id, worker_id, [(image_id, segmentations)], commit=False)
    if image_id in stored.lost:
        session.rollback()  # nothing of the attempt is written (the queue's lease rule)
        raise stored.lost[image_id]
    commit_or_flush(session, commit)
    return stored.ids[image_id]


# ---------------------------------------------------------------- bulk store
@dataclass(frozen=True)
class EncodedResult:
    """One Segmentation as the column values of its rows, ready to insert (masks compressed)."""

    image_id: int
    width: int | None  # for the image row, when it has no size yet
    height: int | None
    segmentation: dict[str, Any]  # segmentations columns, without the id
    segments: list[dict[str, Any]]  # segments columns, without segmentation_id


@dataclass(frozen=True)
class StoredBatch:
    """What `store_batch` did: the ids it wrote per image, and the images whose lease was lost."""

    ids: dict[int, list[int]] = field(default_factory=dict)  # image id -> segmentation ids, in input order
    lost: dict[int, LeaseLostError] = field(default_factory=dict)  # not stored: another worker holds them


# Encoding threads: zlib's deflate and numpy's min/max/astype release the GIL. Building the
# rows of 64 real-sized results (640x480, K=6) on this shared 2-core machine took 0.99 ms per
# result in one thread and 0.60 ms in two when the other core was idle enough, 1.03 and
# 0.91 ms under load from other processes (benchmarks/bench_store.py prints both).
ENCODE_THREADS = max(1, min(4, os.cpu_count() or 1))
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _encode_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=ENCODE_THREADS, thread_name_prefix="clasp-encode")
        return _pool


def encode_results(
    run_id: int,
    worker_id: str | None,
    items: Iterable[tuple[int, Sequence[Segmentation]]],
    *,
    threads: int | None = None,
) -> list[EncodedResult]:
    """Compress the masks and build the rows of `items` ((image id, [Segmentation, ...]) pairs).

    Runs in a small thread pool (`threads`, default ENCODE_THREADS; 1 encodes in the
    calling thread). Touches no database: call it before a transaction, so that the
    transaction only writes. Raises ValueError for an image listed twice or with no
    result, and the codec's errors (ValueError) for a bad label map or embedding.
    """
    work: list[tuple[int, Segmentation]] = []
    seen: set[int] = set()
    for image_id, segmentations in items:
        image_id = int(image_id)
        if image_id in seen:
            raise ValueError(f"image {image_id} is listed twice in one store batch: give all its results in one item")
        seen.add(image_id)
        if not segmentations:
            raise ValueError(f"image {image_id}: store_segmentations needs at least one Segmentation")
        work.extend((image_id, seg) for seg in segmentations)
    n = ENCODE_THREADS if threads is None else max(1, int(threads))
    if n == 1 or len(work) < 2:
        return [_encode_one(image_id, run_id, seg, worker_id) for image_id, seg in work]
    pool = _encode_pool() if threads is None else ThreadPoolExecutor(max_workers=n)
    try:
        futures = [pool.submit(_encode_one, image_id, run_id, seg, worker_id) for image_id, seg in work]
        return [f.result() for f in futures]
    finally:
        if pool is not _pool:
            pool.shutdown()


def store_batch(
    session: Session,
    run_id: int,
    worker_id: str,
    items: Iterable[tuple[int, Sequence[Segmentation]]] | Sequence[EncodedResult],
    *,
    commit: bool = True,
) -> StoredBatch:
    """Store the results of many claimed images at once and mark them segmented.

    `items` are (image id, [Segmentation, ...]) pairs, or what `encode_results` made of
    them. The masks are compressed first, in a thread pool, outside any transaction; the
    transaction then runs three statements per chunk of images: one lease check and
    status update for all of them (UPDATE ... WHERE id IN (...) AND claimed_by = worker
    RETURNING id), one multi-row INSERT ... RETURNING for their segmentations and one
    for all their segments. Images whose lease `worker_id` lost are not stored: they
    are reported in `StoredBatch.lost` (the others are stored). Bit for bit the same
    rows as `store_segmentations` image by image.
    """
    items = list(items)
    encoded = items if all(isinstance(e, EncodedResult) for e in items) else encode_results(run_id, worker_id, items)
    by_image: dict[int, list[EncodedResult]] = {}
    for e in encoded:
        by_image.setdefault(e.image_id, []).append(e)
    out = StoredBatch()
    held: set[int] = set()
    for chunk in chunks(list(by_image)):
        held.update(_finish_claims(session, worker_id, {i: by_image[i][0] for i in chunk}))
    lost = [i for i in by_image if i not in held]
    if lost:
        out.lost.update(_lease_errors(session, lost, worker_id))
    rows = [e for e in encoded if e.image_id in held]
    ids: list[int] = []
    for chunk in chunks(rows):
        ids.extend(
            session.execute(
                insert(SegmentationRecord).returning(SegmentationRecord.id, sort_by_parameter_order=True),
                [dict(e.segmentation, image_id=e.image_id) for e in chunk],
            ).scalars().all()
        )
    segments = [dict(s, segmentation_id=seg_id) for e, seg_id in zip(rows, ids) for s in e.segments]
    for chunk in chunks(segments):
        session.execute(insert(SegmentRow), list(chunk))
    for e, seg_id in zip(rows, ids):
        out.ids.setdefault(e.image_id, []).append(int(seg_id))
    commit_or_flush(session, commit)
    return out


def _finish_claims(session: Session, worker_id: str, first: dict[int, EncodedResult]) -> list[int]:
    """`claimed` -> `segmented` for the images of `first` that `worker_id` holds; returns their ids.
    (`first`: image id -> its first result, whose size fills an image row that has none.)"""
    now = db_now(session)
    ids = list(first)
    width = case({i: e.width for i, e in first.items()}, value=Image.id)
    height = case({i: e.height for i, e in first.items()}, value=Image.id)
    stmt = (
        update(Image)
        .where(Image.id.in_(ids), Image.status == CLAIMED, Image.claimed_by == worker_id)
        .values(
            status=SEGMENTED,
            claimed_by=None,
            lease_expires_at=None,
            last_error=None,
            segmented_at=now,
            updated_at=now,
            width=func.coalesce(Image.width, width),
            height=func.coalesce(Image.height, height),
        )
        .returning(Image.id)
        .execution_options(synchronize_session=False)
    )
    return [int(i) for i in session.execute(stmt).scalars()]


def _lease_errors(session: Session, image_ids: list[int], worker_id: str) -> dict[int, LeaseLostError]:
    """Why `worker_id` does not hold each of `image_ids` (no rollback: the batch's others are kept)."""
    found = {}
    for chunk in chunks(image_ids):
        for image_id, status, claimed_by in session.execute(
            select(Image.id, Image.status, Image.claimed_by).where(Image.id.in_(list(chunk)))
        ):
            found[image_id] = f"now claimed by {claimed_by!r}" if status == CLAIMED else f"image is {status}"
    return {i: LeaseLostError(i, worker_id, found.get(i, "no such image")) for i in image_ids}


def _total_seconds(timings: dict[str, float]) -> float | None:
    """The engine's own total; summing the stages would count `total` twice."""
    if not timings:
        return None
    if "total" in timings:
        return float(timings["total"])
    return float(sum(timings.values()))


def _encode_one(image_id: int, run_id: int, seg: Segmentation, worker_id: str | None) -> EncodedResult:
    d = seg.diagnostics
    diagnostics = d.to_dict()  # once: it deep-copies (a third of the row building's Python time)
    mask = encode_label_map(seg.labels)
    row: dict[str, Any] = dict(
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
        patch_mask=None,
        patch_rows=None,
        patch_cols=None,
        patch_dtype=None,
        patch_stored_dtype=None,
        diagnostics=to_json({**diagnostics, **encode_alternatives(int(d.k), seg.alternatives)}),
        worker_id=worker_id,
        created_at=utcnow(),
    )
    if seg.patch_labels is not None and np.asarray(seg.patch_labels).ndim == 2:
        patch = encode_label_map(seg.patch_labels)
        row.update(patch_mask=patch.data, patch_rows=patch.height, patch_cols=patch.width,
                   patch_dtype=patch.dtype, patch_stored_dtype=patch.stored_dtype)
    size = (None if v is None else int(v) for v in (d.width, d.height))
    return EncodedResult(image_id, *size, row, _segment_rows(seg, diagnostics))


def _segment_rows(seg: Segmentation, diagnostics: dict[str, Any]) -> list[dict[str, Any]]:
    """The segments' columns, with the region embeddings (the rule of `embeddings.attach_embeddings`:
    by label, an all-zero embedding stays NULL)."""
    emb = getattr(seg, "region_embeddings", None)
    if emb is not None:
        emb = np.asarray(emb, dtype=np.float32)
        model = embedding_model(diagnostics)
    rows = []
    for s in seg.segments:
        label = int(s.label)
        row = dict(
            label=label, area=int(s.area), x0=int(s.bbox[0]), y0=int(s.bbox[1]), x1=int(s.bbox[2]),
            y1=int(s.bbox[3]), confidence=float(s.confidence), embedding=None, embedding_dim=None,
            embedding_model=None,
        )
        if emb is not None and 0 <= label < len(emb) and np.any(emb[label]):
            row.update(embedding=vector_bytes(emb[label], emb.shape[1], what=f"segment {label} embedding"),
                       embedding_dim=int(emb.shape[1]), embedding_model=model)
        rows.append(row)
    return rows


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
    "ENCODE_THREADS",
    "EncodedResult",
    "StoredBatch",
    "encode_results",
    "store_batch",
    "latest_segmentation_id",
    "load_mask",
    "load_segmentation",
    "record_label_map",
    "storage_bytes",
    "store_segmentation",
    "store_segmentations",
]
