"""A live worker never loses its claims; a dead one's claims expire; failures keep their real cause
(issue 13.3 and 13.4). SQLite and PostgreSQL.

- a `segment` run whose batch takes longer than the lease, while other workers reclaim expired
  leases all the time: nothing is failed or reclaimed, every image is stored once;
- a worker process holding renewed leases killed with kill -9: its leases stop being renewed,
  expire, and another worker takes the images back;
- an unwritable output folder: the results are stored, the overlay failure is recorded per image
  with the PermissionError text, counted, and nothing stays claimed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

import flows_support as fs
from flows_support import db_url, harness  # noqa: F401  (fixtures: the Prefect harness, each database)

pytestmark = [pytest.mark.slow]

LEASE_S = 5  # the smallest lease Settings allows
WORK_S = 12  # engine time per batch: more than two leases


def _rows(url, model):
    import sqlalchemy as sa

    from flows import resources

    with resources.session(url) as s:
        return list(s.execute(sa.select(model)).scalars().all())


class _SlowSegmenter:
    """The real engine, plus WORK_S seconds per batch: a slow model."""

    def __init__(self, real):
        self.real = real

    def segment_batch(self, images):
        time.sleep(WORK_S)
        return self.real.segment_batch(images)

    def __call__(self, image):
        return self.real(image)


def test_live_worker_with_a_short_lease_keeps_its_claims(db_url, shared_data, tmp_path, monkeypatch):
    from flows import resources
    from flows.ingest import ingest
    from flows.segment import segment
    from integrations import db as repo
    from integrations.db.models import FailureRecord, Image, SegmentationRecord, SegmentationRun

    monkeypatch.setenv("CLASP_LEASE_SECONDS", str(LEASE_S))
    monkeypatch.setenv("CLASP_MAX_ATTEMPTS", "1")  # a lease lost even once would fail the image for good
    paths = fs.shared_images(shared_data, limit=4)
    ingest([str(p) for p in paths], database_url=db_url)
    real_get = resources.get_segmenter
    monkeypatch.setattr(resources, "get_segmenter", lambda config: _SlowSegmenter(real_get(config)))

    # Other workers, all the time: put every expired lease back in the queue (or fail it).
    stop = threading.Event()
    reclaimed = []

    def other_workers():
        while not stop.is_set():
            with resources.session(db_url) as s:
                r = repo.reclaim_expired(s, max_attempts=1)
                reclaimed.append(r.requeued + r.failed)
            time.sleep(0.5)

    t = threading.Thread(target=other_workers, daemon=True)
    t.start()
    try:
        result = segment(database_url=db_url, batch_size=2, overlays=False, **fs.FAST)
    finally:
        stop.set()
        t.join(10)
    print(f"\n[{db_url.split(':')[0]}] lease {LEASE_S} s, {WORK_S} s of work per batch: {result['done']} stored, "
          f"{result['failed']} failed, {sum(reclaimed)} leases reclaimed by the other workers")
    assert sum(reclaimed) == 0
    assert (result["done"], result["failed"]) == (len(paths), 0)
    assert {im.status for im in _rows(db_url, Image)} == {"segmented"}
    assert sorted(r.image_id for r in _rows(db_url, SegmentationRecord)) == sorted(im.id for im in _rows(db_url, Image))
    assert _rows(db_url, FailureRecord) == []
    (run,) = _rows(db_url, SegmentationRun)
    assert (run.status, run.n_segmented, run.n_failed) == ("finished", len(paths), 0)
    assert run.heartbeat_at is not None and run.heartbeat_at > run.started_at


# A worker that claims a batch, keeps its leases alive, says which ids it holds, and waits to be killed.
_HOLDER = r"""
import sys, time
from flows.lease import LeaseKeeper
from integrations import db as repo
from integrations.db.session import make_session_factory
url, lease = sys.argv[1], float(sys.argv[2])
with make_session_factory(url)() as s:
    claimed = repo.claim_batch(s, "holder", 5, lease)
keeper = LeaseKeeper(url, "holder", lease).start()
keeper.hold([c.id for c in claimed])
print(",".join(str(c.id) for c in claimed), flush=True)
time.sleep(600)
"""


def test_killed_worker_leases_expire_and_are_reclaimed(db_url, tmp_path):
    import sqlalchemy as sa

    from flows import resources
    from integrations import db as repo
    from integrations.db.models import FailureRecord, Image

    lease = 2.0
    with resources.session(db_url) as s:
        repo.add_images(s, [f"/killed/{i}.jpg" for i in range(5)])
    env = fs.worker_env()
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, db_url, str(lease)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        held = sorted(int(x) for x in proc.stdout.readline().split(","))
        assert len(held) == 5
        time.sleep(3 * lease)  # alive: renewed, so nobody can take them
        with resources.session(db_url) as s:
            assert repo.claim_batch(s, "other", 10, 60, max_attempts=5) == []
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 30
        taken = []
        while time.monotonic() < deadline and len(taken) < 5:
            with resources.session(db_url) as s:
                taken += [c.id for c in repo.claim_batch(s, "other", 10, 60, max_attempts=5)]
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert sorted(taken) == held
    with resources.session(db_url) as s:
        reasons = s.execute(sa.select(FailureRecord.worker_id, FailureRecord.reason)).all()
        assert {w for w, _ in reasons} == {"holder"} and all(r.startswith("lease expired") for _, r in reasons)
        assert {st for (st,) in s.execute(sa.select(Image.status))} == {"claimed"}


def test_a_stuck_worker_stops_renewing_after_the_maximum_hold(db_url, caplog):
    """Alive but stuck: the keeper renews an image for at most max_hold seconds after its claim,
    then drops it (named in a warning); its lease is no longer extended, the others' are."""
    import sqlalchemy as sa

    from flows import resources
    from flows.lease import LeaseKeeper
    from integrations import db as repo
    from integrations.db.models import Image

    now = [0.0]
    with resources.session(db_url) as s:
        repo.add_images(s, [f"/stuck/{i}.jpg" for i in range(4)])
        early = [c.id for c in repo.claim_batch(s, "w", 3, 60)]
        late = [c.id for c in repo.claim_batch(s, "w", 1, 60)]
    keeper = LeaseKeeper(db_url, "w", 60, max_hold=100, clock=lambda: now[0])  # not started: ticks by hand
    keeper.hold(early)
    now[0] = 50.0
    keeper.hold(late)
    keeper.hold(early)  # held again (another task): the clock of a claim does not restart
    assert keeper.renew_now() == sorted(early + late)

    def expiries():
        with resources.session(db_url) as s:
            return dict(s.execute(sa.select(Image.id, Image.lease_expires_at)).all())

    before = expiries()
    time.sleep(1.1)  # the database clock moves on
    now[0] = 120.0  # the early batch has been held 120 s > 100 s; the late one 70 s
    with caplog.at_level("WARNING", logger="flows.lease"):
        assert keeper.renew_now() == late
    assert keeper.overdue == sorted(early) and keeper.held() == late
    assert "more than 100 s" in caplog.text and str(early[0]) in caplog.text
    after = expiries()
    assert all(after[i] == before[i] for i in early)  # no longer extended: they run out
    assert after[late[0]] > before[late[0]]


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create anything in (a real PermissionError, as root too)."""
    if os.geteuid() == 0:  # root ignores permission bits; sysfs refuses new folders to everyone
        return Path("/sys") / f"clasp-test-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


def test_unwritable_output_folder_keeps_results_and_records_the_permission_error(shared_data, tmp_path):
    from flows.ingest import ingest
    from flows.segment import segment
    from integrations.db.models import FailureRecord, Image, SegmentationRun

    out = _unwritable_folder(tmp_path)
    paths = fs.shared_images(shared_data, limit=3)
    with fs.database("sqlite", tmp_path) as url:
        ingest([str(p) for p in paths], database_url=url)
        result = segment(database_url=url, batch_size=2, output_dir=str(out), **fs.FAST)
        images = _rows(url, Image)
        failures = _rows(url, FailureRecord)
        (run,) = _rows(url, SegmentationRun)
    print(f"\noutput folder {out}: {result['done']} stored, {len(result['overlay_failures'])} overlays not written: "
          f"{result['overlay_failures'][0]['reason'] if result['overlay_failures'] else None}")
    # the masks are the product: stored; nothing left claimed
    assert {im.status for im in images} == {"segmented"}
    assert result["done"] == len(paths) and result["failed"] == 0
    # each missing overlay is named, with the real error, in the summary and in SQL under the run
    assert sorted(f["uri"] for f in result["overlay_failures"]) == sorted(str(p) for p in paths)
    assert all("PermissionError" in f["reason"] for f in result["overlay_failures"])
    assert len(failures) == len(paths)
    assert all(f.reason.startswith("overlay: ") and "PermissionError" in f.reason and f.run_id == run.id
               and not f.final for f in failures)
    assert (run.status, run.n_segmented, run.n_failed) == ("finished", len(paths), 0)
