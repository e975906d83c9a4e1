"""Claim throughput of the SQL work queue, SQLite and PostgreSQL, 1 and 4 worker processes.

    .venv/bin/python benchmarks/bench_claim.py                 # both databases, 1 and 4 workers
    .venv/bin/python benchmarks/bench_claim.py --images 4000 --batch 16
    .venv/bin/python benchmarks/bench_claim.py --mask-sizes    # mask codec sizes at 640x480

Two loops per setting, timed from a common start signal (process start-up excluded):
- claim only: claim_batch until the queue is empty (the queue's own cost);
- claim + store: claim_batch, then store_segmentation of a tiny result per image
  (8x8 mask, full diagnostics): the transaction pattern of a real worker.
claims/s counts claim_batch calls that returned images; images/s counts images.
PostgreSQL: a database is created on CLASP_TEST_PG_SERVER's server (default
postgres@127.0.0.1:5432) and dropped afterwards. SQLite: a file in a temp folder.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _worker(url, wid, run_id, batch, store, start, out):  # noqa: ANN001
    from db_workers import tiny_segmentation

    from integrations.db import claim_batch, make_session_factory, store_segmentation

    factory = make_session_factory(url)
    seg = tiny_segmentation()
    claims = images = 0
    with factory() as s:
        claim_batch(s, wid, 0, 600)  # connect before the clock starts
        s.connection()
        start.wait()
        t0 = time.perf_counter()
        while True:
            got = claim_batch(s, wid, batch, 600)
            if not got:
                break
            claims += 1
            images += len(got)
            if store:
                for c in got:
                    store_segmentation(s, c.id, run_id, seg, wid)
        t1 = time.perf_counter()
    out.put((claims, images, t0, t1))


def bench(url: str, n_images: int, workers: int, batch: int, store: bool) -> tuple[float, float, float]:
    from integrations.db import ImageInput, add_images, make_session_factory, start_run
    from integrations.db.models import Base
    from integrations.db.session import make_engine

    engine = make_engine(url)
    with engine.begin() as conn:
        for t in reversed(Base.metadata.sorted_tables):
            conn.execute(t.delete())
    factory = make_session_factory(engine)
    with factory() as s:
        add_images(s, [ImageInput(f"/bench/{i}.jpg", f"{i:064x}") for i in range(n_images)])
        run_id = start_run(s, {"backbone": "classic"})
    engine.dispose()
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url, f"w{i}", run_id, batch, store, start, out)) for i in range(workers)]
    for p in procs:
        p.start()
    time.sleep(0.5)
    while not all(p.is_alive() for p in procs):
        time.sleep(0.1)
    time.sleep(2.0)  # let every worker import and connect
    start.set()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    claims = sum(r[0] for r in results)
    images = sum(r[1] for r in results)
    assert images == n_images, (images, n_images)
    wall = max(r[3] for r in results) - min(r[2] for r in results)
    return wall, claims / wall, images / wall


def mask_sizes() -> None:
    import io
    import zlib

    import numpy as np
    from PIL import Image

    from integrations.db.masks import encode_label_map

    rng = np.random.default_rng(0)
    h, w = 480, 640
    ys, xs = np.mgrid[0:h, 0:w]
    print(f"{'mask 640x480':<22}{'zlib9 (stored)':>16}{'zlib6':>8}{'PNG':>8}")
    for k in (2, 6, 15):
        seeds = rng.uniform([0, 0], [h, w], size=(k, 2))
        d = (ys[..., None] - seeds[:, 0]) ** 2 + (xs[..., None] - seeds[:, 1]) ** 2 + rng.normal(0, 300, (h, w, k))
        m = d.argmin(-1).astype(np.uint8)
        b = io.BytesIO()
        Image.fromarray(m).save(b, "PNG", optimize=True)
        print(f"{f'K={k} ragged regions':<22}{encode_label_map(m).size:>16}{len(zlib.compress(m.tobytes(), 6)):>8}{len(b.getvalue()):>8}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--db", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    ap.add_argument("--mask-sizes", action="store_true")
    args = ap.parse_args()
    if args.mask_sizes:
        mask_sizes()
        return 0
    from conftest_db import scratch_database

    from integrations.db.schema import upgrade

    print(f"{args.images} images, batches of {args.batch}, {os.cpu_count()} CPUs (shared: read as rough)")
    print(f"{'database':<11}{'workers':>8}  {'loop':<14}{'seconds':>8}{'claims/s':>10}{'images/s':>10}")
    for db in args.db:
        with scratch_database(db) as url:
            if url is None:
                continue
            upgrade(url)
            for workers in args.workers:
                for store in (False, True):
                    wall, cps, ips = bench(url, args.images, workers, args.batch, store)
                    loop = "claim + store" if store else "claim only"
                    print(f"{db:<11}{workers:>8}  {loop:<14}{wall:>8.2f}{cps:>10.0f}{ips:>10.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
