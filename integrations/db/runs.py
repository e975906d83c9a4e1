"""Segmentation runs: how a batch of results was made (engine version, configuration,
backbone, weights, device) and, once closed, how many images it segmented and failed."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from integrations.db.batching import commit_or_flush
from integrations.db.jsonsafe import to_json
from integrations.db.models import FailureRecord, SegmentationRecord, SegmentationRun, utcnow


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


def recent_runs(session: Session, limit: int = 10) -> list[SegmentationRun]:
    return list(session.scalars(select(SegmentationRun).order_by(SegmentationRun.id.desc()).limit(limit)))


__all__ = ["RunSummary", "finish_run", "recent_runs", "run_counts", "start_run"]
