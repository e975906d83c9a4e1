"""Results stored per second by one worker: per image vs in bulk, PostgreSQL and SQLite.

    .venv/bin/python benchmarks/bench_store.py                        # both databases, 2048 images
    .venv/bin/python benchmarks/bench_store.py --images 4096 --batch 64 --db postgres

Real-sized results: the classic engine segments one 640x480 image of ../shared/data
once (pixel variant, K = 6 with its silhouettes, eigenvalues, timings, config, a coarser
partition); 32 variants of it (label map shifted and flipped, segments recomputed, 384-d
region embeddings) are stored in turn, so that every mask is compressed for real.

One worker, one process, one connection. Timed loop: claim_batch (--batch images), store
them, until the queue is empty. Three store paths:
- `per image, ORM (before)`: the store as it was before the bulk store (ORM rows, one
  flush per result, masks zlib level 6 with the default strategy; copied below as
  `_store_before`), one transaction per batch;
- `per image, now`: store_segmentation for each image, one transaction per batch;
- `bulk`: store_batch for the whole batch (masks compressed in a thread pool, then one
  UPDATE, one multi-row INSERT ... RETURNING for the segmentations, one for the segments).
Also printed: mask compression per result, serial and in the thread pool.
PostgreSQL: a scratch database on CLASP_TEST_PG_SERVER's server (default
postgres@127.0.0.1:5432/test), dropped afterwards. SQLite: a file in a temp folder.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

TARGET = 400.0  # results per second, issue 14 item 7
IMAGE = ROOT.parent / "shared" / "data" / "cocostuff" / "images" / "000000371376.jpg"


# ---------------------------------------------------------------- the store before the bulk path
def _store_before(session, image_id, run_id, segmentations, worker_id):  # noqa: ANN001
    """store_segmentations as of commit afe54ed: guard UPDATE, then one ORM row (and its
    segment rows) added and flushed per result. Kept here only to measure the change."""
    from sqlalchemy import func, update

    from integrations.db.dialect import db_now
    from integrations.db.embeddings import attach_embeddings
    from integrations.db.granularity import encode_alternatives
    from integrations.db.jsonsafe import to_json
    from integrations.db.masks import encode_label_map
    from integrations.db.models import CLAIMED, SEGMENTED, Image, SegmentationRecord, SegmentRow, utcnow
    from integrations.db.queue import lease_lost
    from integrations.db.results import _total_seconds

    first = segmentations[0].diagnostics
    now = db_now(session)
    guard = (
        update(Image)
        .where(Image.id == image_id, Image.status == CLAIMED, Image.claimed_by == worker_id)
        .values(status=SEGMENTED, claimed_by=None, lease_expires_at=None, last_error=None, segmented_at=now,
                updated_at=now, width=func.coalesce(Image.width, first.width),
                height=func.coalesce(Image.height, first.height))
        .returning(Image.id)
        .execution_options(synchronize_session=False)
    )
    if session.execute(guard).first() is None:
        raise lease_lost(session, image_id, worker_id)
    for seg in segmentations:
        d = seg.diagnostics
        mask = encode_label_map(seg.labels)
        patch = encode_label_map(seg.patch_labels)
        row = SegmentationRecord(
            image_id=image_id, run_id=run_id, variant=d.variant, k=int(d.k), elbow_k=d.elbow_k, k_rule=d.k_rule,
            device=d.device, total_seconds=_total_seconds(d.timings), mask=mask.data, mask_codec=mask.codec,
            mask_height=mask.height, mask_width=mask.width, mask_dtype=mask.dtype,
            mask_stored_dtype=mask.stored_dtype, mask_bytes=mask.size, patch_mask=patch.data,
            patch_rows=patch.height, patch_cols=patch.width, patch_dtype=patch.dtype,
            patch_stored_dtype=patch.stored_dtype,
            diagnostics=to_json({**d.to_dict(), **encode_alternatives(int(d.k), seg.alternatives)}),
            worker_id=worker_id, created_at=utcnow(),
        )
        row.segments = [
            SegmentRow(label=int(s.label), area=int(s.area), x0=int(s.bbox[0]), y0=int(s.bbox[1]),
                       x1=int(s.bbox[2]), y1=int(s.bbox[3]), confidence=float(s.confidence))
            for s in seg.segments
        ]
        attach_embeddings(row.segments, seg)
        session.add(row)
        session.flush()


@contextlib.contextmanager
def _codec_before():
    """Masks compressed as before the run-length strategy: zlib.compress(raw, 6)."""
    from integrations.db import masks

    now = masks._compress
    masks._compress = lambda raw: zlib.compress(raw, 6)
    try:
        yield
    finally:
        masks._compress = now


# ---------------------------------------------------------------- test data
def engine_result():
    """One real result: the classic engine, pixel variant, on a 640x480 image, K = 6."""
    from PIL import Image

    from clasp_engine import Segmenter, SegmenterConfig

    rgb = np.asarray(Image.open(IMAGE).convert("RGB"))
    for cfg in (dict(k_min=5, k_max=6), dict(k=6)):
        res = Segmenter(SegmenterConfig(backbone="classic", variant="pixel", **cfg))(rgb)
        if res.diagnostics.k == 6:
            return res
    raise RuntimeError(f"the classic engine did not give K = 6 on {IMAGE}")


def variants(base, n: int = 32, dim: int = 384) -> list:
    """`n` results like `base`: label map shifted and flipped, segments recomputed, 384-d embeddings."""
    import copy

    from clasp_engine.result import Segment

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        labels = np.roll(base.labels, shift=17 * i, axis=1)
        if i % 2:
            labels = labels[::-1].copy()
        k = int(labels.max()) + 1
        segments = []
        for lab in range(k):
            rows, cols = np.any(labels == lab, axis=1), np.any(labels == lab, axis=0)
            ys, xs = np.flatnonzero(rows), np.flatnonzero(cols)
            segments.append(Segment(lab, int((labels == lab).sum()), (int(xs[0]), int(ys[0]), int(xs[-1]) + 1,
                                                                      int(ys[-1]) + 1), float(rng.uniform(0.5, 1))))
        emb = rng.normal(size=(k, dim)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        seg = copy.copy(base)
        seg.labels, seg.segments, seg.region_embeddings = labels, segments, emb
        seg.diagnostics = copy.deepcopy(base.diagnostics)
        seg.diagnostics.timings = {key: v * (1 + 0.01 * i) for key, v in base.diagnostics.timings.items()}
        out.append(seg)
    return out


# ---------------------------------------------------------------- timing
def run_path(url: str, path: str, results: list, n_images: int, batch: int) -> tuple[float, int]:
    """Seconds of the claim + store loop over `n_images` fresh images, and the images stored."""
    from integrations.db import ImageInput, add_images, claim_batch, make_session_factory, start_run
    from integrations.db import store_batch, store_segmentation
    from integrations.db.models import Base
    from integrations.db.session import make_engine

    engine = make_engine(url)
    with engine.begin() as conn:
        for t in reversed(Base.metadata.sorted_tables):
            conn.execute(t.delete())
    factory = make_session_factory(engine)
    wid = "bench-worker"
    stored = 0
    with factory() as s:
        add_images(s, [ImageInput(f"/bench/{i}.jpg", f"{i:064x}") for i in range(n_images)])
        run_id = start_run(s, {"backbone": "classic"}, worker_id=wid)
        claim_batch(s, wid, 0, 600)  # connect before the clock starts
        t0 = time.perf_counter()
        i = 0
        while True:
            got = claim_batch(s, wid, batch, 600)
            if not got:
                break
            segs = [results[(i + j) % len(results)] for j in range(len(got))]
            i += len(got)
            if path == "bulk":
                done = store_batch(s, run_id, wid, [(c.id, [seg]) for c, seg in zip(got, segs)])
                stored += sum(len(v) for v in done.ids.values())
            else:
                with _codec_before() if path == "before" else contextlib.nullcontext():
                    for c, seg in zip(got, segs):
                        if path == "before":
                            _store_before(s, c.id, run_id, [seg], wid)
                        else:
                            store_segmentation(s, c.id, run_id, seg, wid, commit=False)
                        stored += 1
                s.commit()
        wall = time.perf_counter() - t0
    engine.dispose()
    return wall, stored


def encode_figures(results: list, batch: int) -> tuple[float, float, float]:
    """ms per result to build the rows of one batch (mask, patch mask, alternatives, JSON,
    embeddings), serial and in the pool; and the mask's zlib size in bytes."""
    from integrations.db import encode_results
    from integrations.db.results import ENCODE_THREADS

    items = [(i, [results[i % len(results)]]) for i in range(batch)]
    figures = []
    for threads in (1, ENCODE_THREADS):
        encode_results(1, "w", items, threads=threads)  # warm
        best = min(_timed(lambda: encode_results(1, "w", items, threads=threads)) for _ in range(5))
        figures.append(1000 * best / batch)
    size = np.mean([len(e.segmentation["mask"]) for e in encode_results(1, "w", items)])
    return figures[0], figures[1], float(size)


def _timed(fn) -> float:  # noqa: ANN001
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--db", nargs="+", default=["postgres", "sqlite"], choices=["sqlite", "postgres"])
    ap.add_argument("--paths", nargs="+", default=["before", "now", "bulk"], choices=["before", "now", "bulk"])
    args = ap.parse_args()

    from conftest_db import scratch_database

    from integrations.db.results import ENCODE_THREADS
    from integrations.db.schema import upgrade

    base = engine_result()
    results = variants(base)
    d = base.diagnostics
    print(f"result: {IMAGE.name} {d.width}x{d.height}, classic pixel, K={d.k}, silhouettes {len(d.silhouette)}, "
          f"alternatives {sorted(base.alternatives)}, {len(results[0].segments)} segments with "
          f"{results[0].region_embeddings.shape[1]}-d embeddings; {len(results)} variants")
    serial, pooled, size = encode_figures(results, args.batch)
    print(f"row building incl. mask compression, per result: {serial:.2f} ms serial, {pooled:.2f} ms in "
          f"{ENCODE_THREADS} threads; mask {size:.0f} bytes zlib")
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}, "
          f"{os.cpu_count()} CPUs; {args.images} images, claimed in batches of {args.batch}, one worker")
    names = {"before": "per image, ORM (before)", "now": "per image, now", "bulk": "bulk (store_batch)"}
    print(f"{'database':<11}{'store path':<26}{'seconds':>8}{'results/s':>11}  target {TARGET:.0f}/s")
    for db in args.db:
        with scratch_database(db) as url:
            if url is None:
                continue
            upgrade(url)
            for path in args.paths:
                wall, stored = run_path(url, path, results, args.images, args.batch)
                assert stored == args.images, (stored, args.images)
                rate = stored / wall
                met = ("met" if rate >= TARGET else "NOT met") if path == "bulk" else ""
                print(f"{db:<11}{names[path]:<26}{wall:>8.2f}{rate:>11.0f}  {met}", flush=True)
    print(f"load average after {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
