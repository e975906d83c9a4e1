"""Stored results read back bit-exact (masks, patch labels, segments, diagnostics), the mask codec,
bytes per image, and the stored total time.
SQLite and PostgreSQL."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest_db import db_url, inputs, make_segmentation, migrated_url, pg_url, session, sqlite_url  # noqa: F401
from sqlalchemy import func, select

from integrations.db import (
    add_images,
    claim_batch,
    decode_label_map,
    encode_label_map,
    load_mask,
    load_segmentation,
    start_run,
    storage_bytes,
    store_segmentation,
    store_segmentations,
)
from integrations.db.models import SegmentationRecord, SegmentRow


def test_masks_and_diagnostics_round_trip(session):
    add_images(session, inputs(2))
    run = start_run(session, {"backbone": "dino_vits8"})
    a, b = claim_batch(session, "w", 2, lease_seconds=60)
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 15, size=(480, 640)).astype(np.int64)  # worst case for compression
    seg = make_segmentation(480, 640, k=15, labels=noise, nan_silhouette=True)
    seg_id = store_segmentation(session, a.id, run, seg, "w")
    session.expire_all()
    back = load_segmentation(session, seg_id)
    assert back.labels.dtype == noise.dtype and back.labels.shape == noise.shape
    assert np.array_equal(back.labels, noise)
    assert np.array_equal(load_mask(session, seg_id), noise)
    assert np.array_equal(back.patch_labels, seg.patch_labels) and back.patch_labels.dtype == seg.patch_labels.dtype
    assert back.segments == seg.segments
    d0, d1 = seg.diagnostics.to_dict(), back.diagnostics.to_dict()
    nan_key = str(max(seg.diagnostics.silhouette))
    assert math.isnan(d1["silhouette"].pop(nan_key)) and math.isnan(d0["silhouette"].pop(nan_key))
    assert d0 == d1  # floats bit-exact, lists, dicts, tuples (grid)
    # two variants of one image in one call
    ids = store_segmentations(session, b.id, run, [make_segmentation(variant="patch"), make_segmentation(k=4)], "w")
    assert len(ids) == 2 and load_segmentation(session, ids[0]).diagnostics.variant == "patch"
    assert session.execute(select(func.count()).select_from(SegmentRow)).scalar_one() == 15 + 3 + 4


@pytest.mark.parametrize(
    "arr",
    [
        np.zeros((480, 640), np.uint8),
        np.random.default_rng(0).integers(0, 300, (37, 53)).astype(np.int32),  # > 255 labels: uint16 storage
        np.random.default_rng(0).integers(-5, 70000, (10, 11)).astype(np.int64),
        np.random.default_rng(0).random((9, 7)) > 0.5,
        np.arange(12, dtype=">i4").reshape(3, 4),  # big-endian input
        np.zeros((0, 5), np.int16),
    ],
)
def test_mask_codec_is_bit_exact(arr):
    enc = encode_label_map(arr)
    back = decode_label_map(enc.data, enc.codec, enc.height, enc.width, enc.dtype, enc.stored_dtype)
    assert back.shape == arr.shape and back.dtype == arr.dtype
    assert np.array_equal(back, arr)


def test_mask_codec_refuses_non_integer_and_non_2d():
    with pytest.raises(ValueError):
        encode_label_map(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError):
        encode_label_map(np.zeros((4, 4, 3), np.uint8))


def test_storage_per_image_at_640x480(session, capsys):
    """Bytes one 640x480 result takes: compressed mask + diagnostics JSON (figures for the closing note)."""
    add_images(session, inputs(1))
    run = start_run(session, {"backbone": "dino_vits8"})
    (c,) = claim_batch(session, "w", 1, lease_seconds=60)
    h, w = 480, 640
    ys, xs = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(0)
    seeds = rng.uniform([0, 0], [h, w], size=(6, 2))
    d = (ys[..., None] - seeds[:, 0]) ** 2 + (xs[..., None] - seeds[:, 1]) ** 2 + rng.normal(0, 300, (h, w, 6))
    labels = d.argmin(-1).astype(np.int32)  # 6 irregular regions with ragged edges, like CRF output
    seg_id = store_segmentation(session, c.id, run, make_segmentation(h, w, k=6, labels=labels), "w")
    sizes = storage_bytes(session, seg_id)
    with capsys.disabled():
        print(f"\n[storage 640x480, K=6, {session.get_bind().dialect.name}] {json.dumps(sizes)}")
    assert sizes["mask"] < 20_000 and sizes["diagnostics_json"] < 4_000


def test_stored_total_seconds_is_the_engines_total(session):
    add_images(session, inputs(1))
    run = start_run(session, {"backbone": "classic"}, orchestrator_run_id="flow-t", worker_id="w-a")
    (claimed,) = claim_batch(session, "w-a", 1, lease_seconds=60)
    seg = make_segmentation()
    seg.diagnostics.timings = {"backbone": 0.5, "crf": 0.25, "total": 0.8}
    seg_id = store_segmentation(session, claimed.id, run, seg, "w-a")
    # the stages plus `total` would sum to 1.55: the stored figure is the engine's own total
    assert session.get(SegmentationRecord, seg_id).total_seconds == pytest.approx(0.8)


def test_masks_compressed_before_the_run_length_strategy_still_decode():
    """Masks stored with zlib's default strategy (before Z_RLE) read back unchanged: same codec."""
    import zlib

    labels = np.repeat(np.arange(6, dtype=np.int32), 80)[None, :].repeat(40, 0)
    old = zlib.compress(labels.astype(np.uint8).tobytes(), 6)
    back = decode_label_map(old, "zlib-v1", 40, 480, "int32", "uint8")
    assert back.dtype == np.int32 and np.array_equal(back, labels)
    new = encode_label_map(labels)
    assert new.data != old and new.codec == "zlib-v1"  # another stream, the same codec and decoder
