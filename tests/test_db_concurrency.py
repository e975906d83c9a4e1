"""Several worker processes drain 1,000 images on SQLite and PostgreSQL: each image is
processed exactly once, and a worker killed while holding a lease loses nothing."""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest
from conftest_db import db_url, migrated_url, pg_url, sqlite_url  # noqa: F401
from db_workers import drain
from sqlalchemy import func, select

from integrations.db import ImageInput, add_images, counts_by_status, make_engine, make_session_factory, start_run
from integrations.db.models import FailureRecord, Image, SegmentationRecord

N_IMAGES = 1000
N_WORKERS = 4
BATCH = 10
LEASE_S = 2.0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_workers_drain_exactly_once_and_survive_a_killed_worker(migrated_url, tmp_path):
    engine = make_engine(migrated_url)
    factory = make_session_factory(engine)
    with factory() as s:
        add_images(s, [ImageInput(f"/data/{i}.jpg", f"{i:064x}") for i in range(N_IMAGES)])
        run_id = start_run(s, {"backbone": "classic"})

    ctx = mp.get_context("spawn")
    die_file = tmp_path / "killed-holding.txt"
    # the killer starts first so that it surely holds a lease when it dies
    killer = ctx.Process(target=drain, args=(migrated_url, "killer", run_id, BATCH, LEASE_S, str(die_file)))
    killer.start()
    killer.join(60)
    assert killer.exitcode == 3
    held = [int(x) for x in die_file.read_text().split(",")]
    assert len(held) == BATCH

    t0 = time.monotonic()
    workers = [
        ctx.Process(target=drain, args=(migrated_url, f"worker-{i}", run_id, BATCH, LEASE_S, None))
        for i in range(N_WORKERS)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(150)
    elapsed = time.monotonic() - t0
    assert [w.exitcode for w in workers] == [0] * N_WORKERS

    with factory() as s:
        assert counts_by_status(s)["segmented"] == N_IMAGES
        n_rows, n_images = s.execute(select(func.count(), func.count(func.distinct(SegmentationRecord.image_id)))).one()
        assert (n_rows, n_images) == (N_IMAGES, N_IMAGES), "an image was processed twice or not at all"
        per_worker = dict(s.execute(select(SegmentationRecord.worker_id, func.count()).group_by(SegmentationRecord.worker_id)).all())
        assert "killer" not in per_worker and sum(per_worker.values()) == N_IMAGES
        assert len(per_worker) >= 2, f"work was not shared: {per_worker}"
        # the killed worker's images: lease expired, reclaimed, finished by another worker
        rows = s.execute(select(Image.id, Image.attempts).where(Image.id.in_(held))).all()
        assert all(a >= 2 for _, a in rows)
        lost = s.scalars(select(FailureRecord.image_id).where(FailureRecord.worker_id == "killer")).all()
        assert sorted(lost) == sorted(held)
        # Under load a live worker's short lease may expire too: its image is reclaimed, the late
        # store is refused (LeaseLostError) and the image is still stored once (checked above).
        reasons = set(s.scalars(select(FailureRecord.reason)))
        assert all(r.startswith("lease expired") for r in reasons), reasons
        late = s.scalar(select(func.count()).select_from(FailureRecord).where(FailureRecord.worker_id != "killer"))
    engine.dispose()
    print(f"\n[{migrated_url.split(':')[0]}] {N_WORKERS} workers drained {N_IMAGES} images in {elapsed:.1f} s "
          f"(incl. process start and the {LEASE_S:g} s lease of the killed worker); per worker {per_worker}; "
          f"{late} live leases expired under load")
