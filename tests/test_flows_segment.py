"""Flow tests under Prefect's test harness, on SQLite and PostgreSQL.

- a run over ../shared/data stores one segmentation per image, with diagnostics;
- a corrupt file and an unreachable URL fail alone, with reasons, the rest is stored;
- a second run processes nothing twice;
- two `segment` flows at the same time on one database split the work, no duplicate;
- an error while storing fails the batch's images with that error (nothing left claimed).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import flows_support as fs
from flows_support import db_url, harness  # noqa: F401  (fixtures: the Prefect harness, each database)

pytestmark = [pytest.mark.slow]


def _segmentation_counts(url: str) -> Counter:
    import sqlalchemy as sa

    from flows import resources
    from integrations.db.models import SegmentationRecord

    with resources.session(url) as s:
        rows = s.execute(sa.select(SegmentationRecord.image_id)).scalars().all()
    return Counter(rows)


def _images(url: str) -> list:
    import sqlalchemy as sa

    from flows import resources
    from integrations.db.models import Image

    with resources.session(url) as s:
        return list(s.execute(sa.select(Image).order_by(Image.id)).scalars().all())


def _latest_artifact(key: str):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            arts = await client.read_latest_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
            return arts[0]

    return asyncio.run(read())


def _pipeline(url, source, tmp_path, **kw):
    from flows.pipeline import moderation_pipeline

    params = dict(fs.FAST, batch_size=4, database_url=url, output_dir=str(tmp_path / "out"), review=False)
    params.update(kw)
    return moderation_pipeline(source=source, **params)


def test_run_over_shared_data_stores_one_segmentation_per_image(db_url, shared_data, tmp_path):
    import sqlalchemy as sa

    from flows import resources
    from integrations.db.models import SegmentationRecord

    paths = fs.shared_images(shared_data)
    assert len(paths) >= 20
    result = _pipeline(db_url, [str(p) for p in paths], tmp_path, batch_size=16)
    seg = result["segment"]
    assert seg["done"] == len(paths) and seg["failed"] == 0
    counts = _segmentation_counts(db_url)
    assert len(counts) == len(paths) and set(counts.values()) == {1}
    assert {im.status for im in _images(db_url)} == {"segmented"}
    with resources.session(db_url) as s:
        for row in s.execute(sa.select(SegmentationRecord)).scalars():
            d = row.diagnostics
            assert d["k"] == row.k >= 1
            assert d["eigenvalues"] and "timings" in d and d["timings"]
            assert row.mask_width > 0 and row.mask_height > 0
    assert sum(seg["k_distribution"].values()) == len(paths)
    assert seg["seconds_per_image_per_stage"]
    # overlays on disk, one per image
    assert len(list((tmp_path / "out" / "overlays").glob("*.jpg"))) == len(paths)
    # what a person reads on the dashboard: the progress artifact at 100%, the summary table
    progress = _latest_artifact("segment-progress")
    assert progress.type == "progress" and float(progress.data) == 100.0
    table = _latest_artifact("segment-summary")
    assert table.type == "table"
    text = str(table.data)
    for needle in ("images segmented", "images failed", "K = ", "seconds per image: total", "images per second"):
        assert needle in text, needle


def test_bad_inputs_fail_alone_with_reasons_and_nothing_runs_twice(db_url, shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("CLASP_ALLOW_PRIVATE_HOSTS", "true")
    monkeypatch.setenv("CLASP_MAX_ATTEMPTS", "2")  # the unreachable URL is tried twice (transient), then fails
    monkeypatch.setenv("CLASP_HTTP_TIMEOUT_S", "3")
    good = fs.shared_images(shared_data, limit=6)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" * 10)
    unreachable = "http://127.0.0.1:9/nothing-listens-here.jpg"  # port 9 (discard): connection refused
    source = [str(p) for p in good] + [str(corrupt), unreachable]

    first = _pipeline(db_url, source, tmp_path)
    seg = first["segment"]
    assert seg["done"] == len(good)
    by_uri = {f["uri"]: f for f in seg["failures"]}
    assert set(by_uri) == {str(corrupt), unreachable}
    # the corrupt file fails for good at once: bad input is never retried
    assert by_uri[str(corrupt)]["stage"] == "decode" and not by_uri[str(corrupt)]["retryable"]
    assert by_uri[str(corrupt)]["status"] == "failed"
    # the unreachable URL is transient: back in the queue for another attempt (2 allowed)
    assert by_uri[unreachable]["stage"] == "read" and by_uri[unreachable]["retryable"]
    assert by_uri[unreachable]["status"] == "waiting"
    assert seg["failed"] == 1 and seg["requeued"] == 1
    counts = _segmentation_counts(db_url)
    assert len(counts) == len(good) and set(counts.values()) == {1}

    # The next run (same source): nothing new registered; only the URL is tried again, and now fails for good.
    second = _pipeline(db_url, source, tmp_path)
    assert second["ingest"]["registered"] == 0
    assert second["segment"]["claimed"] == 1 and second["segment"]["done"] == 0 and second["segment"]["failed"] == 1
    images = {im.uri: im for im in _images(db_url)}
    assert Counter(im.status for im in images.values()) == {"segmented": len(good), "failed": 2}
    assert "not" in images[str(corrupt)].last_error.lower() or "decode" in images[str(corrupt)].last_error
    assert images[unreachable].last_error.startswith("read: ")
    assert images[unreachable].attempts == 2

    # And a third: nothing to do, nothing segmented twice.
    third = _pipeline(db_url, source, tmp_path)
    assert third["ingest"]["registered"] == 0 and third["segment"]["claimed"] == 0
    assert _segmentation_counts(db_url) == counts


def test_two_segment_flows_at_once_split_the_work(db_url, shared_data, tmp_path):
    """Two workers (separate processes, as on two machines) drain one queue: no image twice.

    The queue holds every photo twice (copies under other names), so that it lasts well beyond
    the seconds one worker's Prefect start can lag behind the other's on the SQLite-backed test
    server; the workers share the GPU slot batch by batch (slice 0), as runs on one GPU do."""
    import json
    import shutil
    import subprocess
    import sys
    import time

    from flows.ingest import ingest

    copies = tmp_path / "copies"
    copies.mkdir()
    paths = []
    for i, src in enumerate(fs.shared_images(shared_data) * 2):
        paths.append(copies / f"{i:03d}-{src.name}")
        shutil.copyfile(src, paths[-1])
    ingest([str(p) for p in paths], database_url=db_url)
    go = tmp_path / "go"
    procs, readies = [], []
    for i in range(2):
        ready = tmp_path / f"ready-{i}"
        readies.append(ready)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", fs.WORKER_SCRIPT, db_url, str(ready), str(go), "2"],
                cwd=tmp_path, env={**fs.worker_env(), "CLASP_GPU_SLICE_SECONDS": "0"},
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
        )
    try:
        deadline = time.monotonic() + 120
        while not all(r.exists() for r in readies):
            assert time.monotonic() < deadline, "workers did not start"
            assert all(p.poll() is None for p in procs), [p.communicate()[0][-3000:] for p in procs]
            time.sleep(0.1)
        go.touch()  # both models are loaded: start both flows at once
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = []
    for out, p in zip(outputs, procs):
        assert p.returncode == 0, out[-3000:]
        line = [ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1]
        results.append(json.loads(line[len("RESULT "):]))
    assert results[0]["done"] + results[1]["done"] == len(paths)
    assert results[0]["done"] > 0 and results[1]["done"] > 0, f"one worker did all the work: {results}"
    counts = _segmentation_counts(db_url)
    assert len(counts) == len(paths) and set(counts.values()) == {1}, "an image was segmented twice"


def test_an_error_while_storing_is_recorded_with_its_cause(shared_data, tmp_path, monkeypatch):
    """Was: "a crashed batch leaves its images claimed" until the lease expired, and the images
    then failed as a crash with the real error lost (issue 13.4). An exception is not a crash:
    each image is recorded failed with the stage and the error, counted in the run, nothing
    stays claimed. (A real crash, kill -9, is in test_flows_leases.py and test_cli_orphans.py.)"""
    import sqlalchemy as sa

    from flows import resources
    from flows.ingest import ingest
    from flows.segment import segment
    from integrations import db as repo
    from integrations.db.models import SegmentationRun

    paths = fs.shared_images(shared_data, limit=4)
    with fs.database("sqlite", tmp_path) as url:
        ingest([str(p) for p in paths], database_url=url)

        def broken(*args, **kwargs):
            raise RuntimeError("simulated bug while storing")

        monkeypatch.setattr(repo, "store_batch", broken)  # the batch's store, then image by image
        monkeypatch.setattr(repo, "store_segmentation", broken)
        result = segment(database_url=url, batch_size=4, overlays=False, **fs.FAST)
        assert (result["done"], result["failed"]) == (0, len(paths))
        assert {f["reason"] for f in result["failures"]} == {"RuntimeError: simulated bug while storing"}
        assert {f["stage"] for f in result["failures"]} == {"store"}
        images = _images(url)
        assert {im.status for im in images} == {"failed"}  # nothing left claimed
        assert {im.last_error for im in images} == {"store: RuntimeError: simulated bug while storing"}
        with resources.session(url) as s:
            run = s.execute(sa.select(SegmentationRun)).scalar_one()
            assert (run.status, run.n_segmented, run.n_failed) == ("finished", 0, len(paths))
        monkeypatch.undo()

        # Fixed: requeued, the next run finishes them, each stored once.
        with resources.session(url) as s:
            assert repo.requeue_failed(s) == len(paths)
        again = segment(database_url=url, batch_size=4, overlays=False, **fs.FAST)
        assert again["done"] == len(paths)
        assert set(_segmentation_counts(url).values()) == {1}


def test_model_is_loaded_once_per_process(shared_data, tmp_path, monkeypatch):
    from clasp_engine import SegmenterConfig
    from flows import resources

    built: list = []
    import clasp_engine.segmenter as engine_segmenter

    real = engine_segmenter.Segmenter

    class Counting(real):  # type: ignore[misc, valid-type]
        def __init__(self, *a, **k):
            built.append(1)
            super().__init__(*a, **k)

    monkeypatch.setattr(engine_segmenter, "Segmenter", Counting)
    monkeypatch.setattr(resources, "_segmenters", {})
    cfg = SegmenterConfig(**fs.FAST)
    a = resources.get_segmenter(cfg)
    b = resources.get_segmenter(SegmenterConfig(**fs.FAST))
    assert a is b and len(built) == 1
    resources.get_segmenter(cfg.replace(max_side=160))
    assert len(built) == 2


def test_clasp_run_warms_the_engine_the_segment_flow_then_uses(shared_data, tmp_path, monkeypatch):
    """`clasp run` builds the engine on a thread while Prefect starts; the flow must find that one
    (a different configuration would build a second model and the warm-up would only cost time)."""
    import argparse

    from clasp_cli.run import warm_engine
    from flows import resources
    from flows.segment import segment
    from integrations.ingest import ingest_uris
    from integrations.settings import load_settings

    monkeypatch.setattr(resources, "_segmenters", {})
    args = argparse.Namespace(weights=None, device=None, **fs.FAST)
    warm_engine(args).join(timeout=120)
    assert resources.cached_segmenter_count() == 1
    warmed = next(iter(resources._segmenters.values()))

    with fs.database("sqlite", tmp_path) as url:
        with resources.session(url) as session:
            ingest_uris(session, [str(p) for p in fs.shared_images(shared_data, 4)], load_settings(), lazy=True)
        result = segment(database_url=url, batch_size=2, overlays=False, **fs.FAST)
    assert result["done"] == 4
    assert resources.cached_segmenter_count() == 1  # no second model: the flow used the warm one
    assert next(iter(resources._segmenters.values())) is warmed
    assert result["gpu_slot_acquisitions"] == 1  # two batches, one slot for the run (a 30 s slice)


def test_a_run_starved_of_input_hands_its_gpu_slot_back(shared_data, tmp_path, monkeypatch):
    """The second batch's images are slow to arrive: the run gives its slot back while it waits
    (after INPUT_WAIT_KEEPING_SLOT) and takes it again for that batch: two acquisitions, not one.
    The slow reads finish when the slot is handed back (or after 20 s, and the test fails)."""
    import threading

    from flows import gpu_slots, resources
    from flows.segment import segment
    from integrations import sources
    from integrations.db import add_images

    real_read, real_release = sources.read_image_bytes, gpu_slots.SlotHolder.release
    calls, lock, handed_back = [0], threading.Lock(), threading.Event()

    def release(self):
        if self.held:
            handed_back.set()
        real_release(self)

    def slow_after_first_batch(uri, settings):
        with lock:
            calls[0] += 1
            n = calls[0]
        if n > 2:
            handed_back.wait(timeout=20)
        return real_read(uri, settings)

    monkeypatch.setattr(sources, "read_image_bytes", slow_after_first_batch)
    monkeypatch.setattr(gpu_slots.SlotHolder, "release", release)
    with fs.database("sqlite", tmp_path) as url:
        with resources.session(url) as session:
            add_images(session, [str(p) for p in fs.shared_images(shared_data, 4)])
        result = segment(database_url=url, batch_size=2, overlays=False, **fs.FAST)
    assert result["done"] == 4
    assert result["gpu_slot_acquisitions"] == 2, result["io_seconds"]


def test_ingest_with_content_hash_registers_the_same_bytes_once(shared_data, tmp_path):
    import shutil

    from flows.ingest import ingest

    good = fs.shared_images(shared_data, limit=2)
    copy = tmp_path / "copy-of-first.jpg"
    shutil.copy(good[0], copy)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    with fs.database("sqlite", tmp_path) as url:
        totals = ingest([str(p) for p in good] + [str(copy), str(broken)], database_url=url, hash_content=True)
        assert totals == {"found": 4, "registered": 2, "already_known": 1, "unreadable": 1}
        statuses = Counter(im.status for im in _images(url))
        assert statuses == {"waiting": 2, "failed": 1}
