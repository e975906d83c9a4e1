"""Segmentation runs: how a batch of results was made (engine version, configuration,
backbone, weights, device) and, once closed, how many images it segmented and failed.

A run also says who runs it (host, pid) and beats a heartbeat while it works
(`beat_run`, from `flows.lease.LeaseKeeper`). A run whose process died without
closing it (kill -9, out of memory, power loss) is closed `abandoned` by the next
command that looks (`close_dead_runs`: `clasp status`, the next `segment` run):
at once when its process is gone on this host, else when its heartbeat is older
than `stale_after_s`. Its claims are given back to the queue at the same time.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import os
import socket

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from integrations.db.batching import commit_or_flush
from integrations.db.dialect import db_now, dialect_name
from integrations.db.jsonsafe import to_json
from integrations.db.models import CLAIMED, FailureRecord, Image, SegmentationRecord, SegmentationRun, utcnow
from integrations.db.queue import reclaim_expired

# A run on another host is taken for dead when its heartbeat is older than this. The
# heartbeat is beaten every min(lease / 3, 60) seconds, so this is five missed beats or more.
RUN_STALE_AFTER_S = 300.0


def start_run(
    session: Session,
    config: Any,
    *,
    engine_version: str | None = None,
    backbone: str | None = None,
    weights: str | None = None,
    weights_sha256: str | None = None,
    orchestrator_run_id: str | None = None,
    worker_id: str | None = None,
    device: str | None = None,
    commit: bool = True,
) -> int:
    """Open a segmentation run; `config` is a SegmenterConfig or its dict. Returns the run id."""
    fingerprint = None
    if hasattr(config, "to_dict"):
        fingerprint = config.fingerprint() if hasattr(config, "fingerprint") else None
        config = config.to_dict()
    config = dict(config)
    if engine_version is None:
        import clasp_engine

        engine_version = clasp_engine.__version__
    run = SegmentationRun(
        engine_version=engine_version,
        config=to_json(config),
        config_fingerprint=fingerprint,
        backbone=backbone or str(config.get("backbone", "unknown")),
        weights=weights if weights is not None else config.get("weights"),
        weights_sha256=weights_sha256,
        orchestrator_run_id=orchestrator_run_id,
        worker_id=worker_id,
        device=device,
        status="running",
        started_at=utcnow(),
        host=socket.gethostname()[:255],
        pid=os.getpid(),
        heartbeat_at=utcnow(),
    )
    session.add(run)
    session.flush()
    run_id = run.id
    commit_or_flush(session, commit)
    return run_id


@dataclass(frozen=True)
class RunSummary:
    id: int
    status: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    n_segmented: int
    n_failed: int


def run_counts(session: Session, run_id: int) -> tuple[int, int]:
    """(segmented images, final failures) recorded under `run_id` so far."""
    n_seg = session.execute(
        select(func.count(func.distinct(SegmentationRecord.image_id))).where(SegmentationRecord.run_id == run_id)
    ).scalar_one()
    n_fail = session.execute(
        select(func.count()).select_from(FailureRecord).where(FailureRecord.run_id == run_id, FailureRecord.final.is_(True))
    ).scalar_one()
    return int(n_seg), int(n_fail)


def finish_run(
    session: Session,
    run_id: int,
    *,
    status: str = "finished",
    backbone: str | None = None,
    weights_sha256: str | None = None,
    device: str | None = None,
    commit: bool = True,
) -> RunSummary:
    """Close a run: end time, status and its counts (taken from what was stored).
    backbone / weights_sha256 / device fill in what was only known after loading the model."""
    run = session.get(SegmentationRun, run_id)
    if run is None:
        raise KeyError(f"no segmentation run {run_id}")
    run.n_segmented, run.n_failed = run_counts(session, run_id)
    run.status = status
    run.finished_at = utcnow()
    if backbone:
        run.backbone = backbone
    if weights_sha256:
        run.weights_sha256 = weights_sha256
    if device:
        run.device = device
    summary = RunSummary(run.id, run.status, run.started_at, run.finished_at, run.n_segmented, run.n_failed)
    commit_or_flush(session, commit)
    return summary


def beat_run(session: Session, run_id: int, *, commit: bool = True) -> None:
    """The run is alive: set its heartbeat to now (the database clock on PostgreSQL)."""
    session.execute(
        update(SegmentationRun)
        .where(SegmentationRun.id == run_id)
        .values(heartbeat_at=db_now(session))
        .execution_options(synchronize_session=False)
    )
    commit_or_flush(session, commit)


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def close_dead_runs(
    session: Session, *, stale_after_s: float = RUN_STALE_AFTER_S, max_attempts: int = 3
) -> list[int]:
    """Close `running` runs whose process is gone as `abandoned`; returns their ids.

    Dead means: on this host, its pid no longer exists; anywhere, its heartbeat (or,
    for a run that never beat, its start) is older than `stale_after_s`. The dead
    run's claims expire at once and go back to the queue (or fail after
    `max_attempts`), recorded under that run, so its counts say what happened.
    """
    host = socket.gethostname()[:255]
    if dialect_name(session) == "postgresql":
        now = session.execute(select(func.current_timestamp())).scalar_one()
    else:
        now = utcnow()
    running = session.execute(
        select(SegmentationRun.id, SegmentationRun.host, SegmentationRun.pid, SegmentationRun.worker_id,
               SegmentationRun.heartbeat_at, SegmentationRun.started_at).where(SegmentationRun.status == "running")
    ).all()
    dead = []
    for run_id, run_host, pid, worker_id, beat, started in running:
        last = beat or started
        gone = run_host == host and pid is not None and pid != os.getpid() and not process_alive(pid)
        if gone or (last is not None and (now - last).total_seconds() > stale_after_s):
            dead.append((run_id, worker_id))
    if not dead:
        session.rollback()
        return []
    workers = [w for _, w in dead if w]
    if workers:
        session.execute(
            update(Image)
            .where(Image.status == CLAIMED, Image.claimed_by.in_(workers))
            .values(lease_expires_at=now.replace(year=2000))
            .execution_options(synchronize_session=False)
        )
        reclaim_expired(session, max_attempts=max_attempts, commit=False)
    for run_id, _ in dead:
        finish_run(session, run_id, status="abandoned", commit=False)
    session.commit()
    return [run_id for run_id, _ in dead]


def recent_runs(session: Session, limit: int = 10) -> list[SegmentationRun]:
    return list(session.scalars(select(SegmentationRun).order_by(SegmentationRun.id.desc()).limit(limit)))


__all__ = [
    "RUN_STALE_AFTER_S",
    "RunSummary",
    "beat_run",
    "close_dead_runs",
    "finish_run",
    "process_alive",
    "recent_runs",
    "run_counts",
    "start_run",
]
