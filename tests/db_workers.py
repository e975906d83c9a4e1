"""Worker processes for the concurrency test (imported by spawned children: no pytest here)."""

from __future__ import annotations

import os
import time

import numpy as np


def tiny_segmentation():
    from clasp_engine.result import Diagnostics, Segment, Segmentation

    labels = np.zeros((8, 8), np.uint8)
    labels[:, 4:] = 1
    diag = Diagnostics(
        k=2, elbow_k=2, k_rule="elbow", eigenvalues=[1.0, 0.5, 0.1], eigengaps=[0.5, 0.4], elbow_distances=[0.1, 0.0],
        silhouette={2: 0.5}, backbone="classic", weights="none", weights_sha256=None, features="tokens",
        variant="patch", width=8, height=8, work_width=8, work_height=8, grid=(1, 1), patch_size=8, device="cpu",
    )
    segs = [Segment(0, 32, (0, 0, 4, 8), 1.0), Segment(1, 32, (4, 0, 8, 8), 1.0)]
    return Segmentation(labels=labels, patch_labels=labels[:1, :1], segments=segs, diagnostics=diag)


def drain(url: str, worker_id: str, run_id: int, batch: int, lease_s: float, die_file: str | None,
          deadline_s: float = 120.0) -> None:
    """Claim and "process" until no image is waiting or claimed. With `die_file`, write the ids of the
    first claimed batch there and die at once (os._exit) while holding their lease."""
    from integrations.db import LeaseLostError, claim_batch, counts_by_status, make_session_factory, store_segmentation

    factory = make_session_factory(url)
    seg = tiny_segmentation()
    stop = time.monotonic() + deadline_s
    with factory() as s:
        while time.monotonic() < stop:
            claimed = claim_batch(s, worker_id, batch, lease_s, max_attempts=5)
            if die_file is not None and claimed:
                with open(die_file, "w") as f:
                    f.write(",".join(str(c.id) for c in claimed))
                    f.flush()
                    os.fsync(f.fileno())
                os._exit(3)
            if not claimed:
                counts = counts_by_status(s)
                if counts["waiting"] == 0 and counts["claimed"] == 0:
                    return
                time.sleep(0.1)  # a dead worker's lease has to expire first
                continue
            for c in claimed:
                try:
                    store_segmentation(s, c.id, run_id, seg, worker_id)
                except LeaseLostError:
                    pass


def upgrade_to_head(url: str) -> None:
    from integrations.db.schema import ensure_schema

    ensure_schema(url, upgrade=True)


def register(url: str, uris: list[str], hashed: bool, barrier, out_file: str) -> None:
    """Register `uris` (lazily, or with a content hash derived from the URI) once `barrier` lets
    every process go; write "new known" counts to `out_file`."""
    import hashlib

    from integrations.db import ImageInput, add_images, make_session_factory

    factory = make_session_factory(url)
    items = [ImageInput(u, hashlib.sha256(u.encode()).hexdigest()) if hashed else u for u in uris]
    with factory() as s:
        s.execute(__import__("sqlalchemy").text("SELECT 1"))  # connected before the start signal
        s.rollback()
        barrier.wait(60)
        result = add_images(s, items)
    with open(out_file, "w") as f:
        f.write(f"{len(result.new)} {len(result.known)}")
