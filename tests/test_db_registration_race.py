"""Several processes register the same images at the same moment: one row per URI (issue 13.2).

Before the unique key on `images.uri` and the ON CONFLICT insert, four processes
registering the same 2,000 files lazily on PostgreSQL left 5,600 rows. The
processes here start together on a barrier (each already connected), in
different orders, lazily and by content hash at once, so their transactions overlap.
"""

from __future__ import annotations

import multiprocessing as mp
import random

import pytest
from conftest_db import db_url, migrated_url, pg_url, sqlite_url  # noqa: F401
from db_workers import register
from sqlalchemy import func, select

from integrations.db import make_engine
from integrations.db.models import Image

N_URIS = 3000


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_concurrent_registration_leaves_one_row_per_uri(migrated_url, tmp_path):
    uris = [f"/photos/race/{i:05d}.jpg" for i in range(N_URIS)]
    shuffled = uris[:]
    random.Random(1).shuffle(shuffled)
    # (order, hashed): three lazy registrations in three orders, one reading content at the same time
    plans = [(uris, False), (uris[::-1], False), (shuffled, False), (uris, True)]
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(plans))
    outs = [tmp_path / f"out{i}.txt" for i in range(len(plans))]
    procs = [ctx.Process(target=register, args=(migrated_url, order, hashed, barrier, str(out)))
             for (order, hashed), out in zip(plans, outs)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(200)
    assert [p.exitcode for p in procs] == [0] * len(plans)

    engine = make_engine(migrated_url)
    try:
        with engine.connect() as conn:
            rows, distinct = conn.execute(select(func.count(), func.count(func.distinct(Image.uri)))).one()
    finally:
        engine.dispose()
    counts = [tuple(map(int, out.read_text().split())) for out in outs]
    print(f"\n[{migrated_url.split(':')[0]}] {len(plans)} processes x {N_URIS} URIs: {rows} rows, "
          f"{distinct} distinct URIs; (new, known) per process {counts}")
    assert (rows, distinct) == (N_URIS, N_URIS)
    # every process accounts for every URI (the hashed one may adopt a lazy row: "new" to it too)
    assert all(new + known == N_URIS for new, known in counts)
