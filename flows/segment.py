"""`segment`: claim batches of waiting images from SQL and run the engine on them.

Shape of one flow run (task granularity is a batch, never an image): three
stages overlap, so the accelerator rarely waits for the database or the disk:

    thread A:  prepare_batch(i+1)   claim, read bytes, decode
    flow:      segment_batch(i)     the engine (CRF batched inside)
    thread B:  store_batch(i-1)     masks + diagnostics + failures in one transaction, overlays

- The Segmenter (and its model) is built once per worker process and reused
  (`flows.resources.get_segmenter`); DenseCRF runs batched inside `segment_batch`.
- One bad image fails alone, with its reason, in SQL; the rest of its batch goes on.
- While a run works, `flows.lease.LeaseKeeper` renews the leases of every image it
  holds (and the run's heartbeat), so a live worker never loses its claims. A worker
  that dies (kill -9, out of memory) stops renewing: its leases expire and the next
  run (or another worker) reclaims them.
- Every failure is stored with its stage and real cause (read, decode, segment,
  store; an overlay that cannot be written is recorded too, the result is kept). If
  the flow itself fails, the images it still holds are recorded failed with that
  cause (released, when it was interrupted): nothing stays claimed.
- Retries with backoff only for transient errors (database connection,
  network); never for bad input.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from clasp_engine.errors import reason_of
from flows import dashboard, gpu_slots, lease, resources, timeouts
from flows.retry import is_transient, transient_task
from integrations.settings import Settings, check_count, load_settings


MAX_FAILURES_LISTED = 200  # in the flow's return value; the summary table lists reasons with counts

# ---------------------------------------------------------------- data passed between tasks
@dataclass
class Item:
    image_id: int
    uri: str
    image: Any = None  # decoded RGB array (H, W, 3) uint8


@dataclass
class Failure:
    image_id: int
    uri: str
    stage: str  # read | decode | segment | store
    reason: str
    retryable: bool = False


@dataclass
class Prepared:
    items: list[Item] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)  # {image_id, uri, note}: animated, bad EXIF ...
    claimed: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # claim, read, decode


@dataclass
class Segmented:
    done: list[tuple[Item, Any]] = field(default_factory=list)  # (item, Segmentation)
    failures: list[Failure] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # engine wall


@dataclass
class BatchReport:
    """What one batch did; small and JSON-ready, summed by the flow."""

    claimed: int = 0
    done: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    k_counts: Counter = field(default_factory=Counter)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # engine stages, summed over images
    io_seconds: dict[str, float] = field(default_factory=dict)  # claim, read, decode, engine_wall, store, overlay
    backbone: str | None = None  # as the engine reports it (e.g. "auto" resolved)
    device: str | None = None
    overlay_failures: list[dict[str, Any]] = field(default_factory=list)  # stored, but no overlay written
    notes: list[dict[str, Any]] = field(default_factory=list)  # decoded with a caveat, by name

    def final_failures(self) -> int:
        """Failures that ended the image (not those put back in the queue for another try)."""
        return sum(1 for f in self.failures if f.get("status") != "waiting")

    def add(self, other: "BatchReport") -> None:
        self.backbone = self.backbone or other.backbone
        self.device = self.device or other.device
        self.claimed += other.claimed
        self.done += other.done
        self.failures.extend(other.failures)
        self.overlay_failures.extend(other.overlay_failures)
        self.notes.extend(other.notes)
        self.k_counts.update(other.k_counts)
        for mine, theirs in ((self.stage_seconds, other.stage_seconds), (self.io_seconds, other.io_seconds)):
            for key, value in theirs.items():
                mine[key] = mine.get(key, 0.0) + value


def _add_seconds(into: dict[str, float], key: str, value: float) -> None:
    into[key] = into.get(key, 0.0) + value


# Long side (pixels) above which a JPEG is decoded at a reduced DCT scale (1/2, 1/4, 1/8):
# a 9000x9000 JPEG then decodes at 4500x4500 (61 MB of RGB instead of 243 MB), while photos
# up to 4096 px keep full-size masks.
FULL_DECODE_SIDE = 4096
# Seconds the engine may wait for the next batch's input while keeping its GPU slot; past
# that the slot is handed back (and taken again for that batch), so that a run starved of
# input does not keep the GPU from other runs.
INPUT_WAIT_KEEPING_SLOT = 1.0

# ---------------------------------------------------------------- tasks
@transient_task("prepare-batch", persist_result=False, timeout_seconds=timeouts.PREPARE)
def prepare_batch(
    database_url: str, worker_id: str, n: int, settings_json: dict[str, Any], decode_side: int | None = None
) -> Prepared:
    """Claim up to n waiting images, read their bytes and decode them. Bad input fails here, alone.

    JPEGs decode at the smallest DCT scale still >= decode_side (the engine's max_side);
    decoded pixels per batch stay under sources.max_batch_pixels (the rest is given back).
    """
    from clasp_engine.errors import InvalidImageError
    from clasp_engine.images import decoded_pixels, load_image
    from integrations import sources
    from integrations import db as repo
    from integrations.image_notes import collect_decode_warnings, decode_notes

    settings = Settings(**settings_json)
    out = Prepared()
    t0 = time.perf_counter()
    with resources.session(database_url) as session:
        # claim_batch first puts expired leases back in the queue (crashed workers).
        claimed = repo.claim_batch(session, worker_id, n, settings.lease_seconds, max_attempts=settings.max_attempts)
    lease.hold(worker_id, [img.id for img in claimed])  # renewed while this worker lives (flows/lease.py)
    rows = [(img.id, img.uri) for img in claimed]
    out.claimed = len(rows)
    out.seconds["claim"] = time.perf_counter() - t0
    if not rows:
        return out

    def read(row: tuple[int, str]) -> tuple[int, str, bytes | None, Failure | None, float]:
        image_id, uri = row
        t = time.perf_counter()
        try:
            data = sources.read_image_bytes(uri, settings)
            return image_id, uri, data, None, time.perf_counter() - t
        except Exception as exc:  # SourceError names the reason and whether a retry may help
            retryable = bool(getattr(exc, "retryable", False)) or is_transient(exc)
            return image_id, uri, None, Failure(image_id, uri, "read", reason_of(exc), retryable), time.perf_counter() - t

    with ThreadPoolExecutor(max_workers=min(8, len(rows))) as pool:  # I/O bound: overlap downloads
        fetched = list(pool.map(read, rows))
    budget, used, deferred = sources.max_batch_pixels(settings), 0, []
    for image_id, uri, data, failure, seconds in fetched:
        _add_seconds(out.seconds, "read", seconds)
        if failure is not None:
            out.failures.append(failure)
            continue
        cost = decoded_pixels(data, decode_side)
        if out.items and used + cost > budget:
            deferred.append(image_id)  # over the batch's memory budget: back to the queue
            continue
        used += cost
        t = time.perf_counter()
        try:
            with collect_decode_warnings() as caught:
                image = load_image(data, max_pixels=settings.max_image_pixels, draft_side=decode_side, name=uri)
                notes = decode_notes(data)
            out.items.append(Item(image_id, uri, image))
            out.notes += [{"image_id": image_id, "uri": uri, "note": n} for n in dict.fromkeys(notes + caught)]
        except InvalidImageError as exc:
            out.failures.append(Failure(image_id, uri, "decode", exc.reason))
        except Exception as exc:  # a decoder bug on one file must not sink the batch
            out.failures.append(Failure(image_id, uri, "decode", reason_of(exc)))
        _add_seconds(out.seconds, "decode", time.perf_counter() - t)
    if deferred:
        with resources.session(database_url) as session:
            repo.release_claims(session, worker_id, deferred)
        out.claimed -= len(deferred)
    return out


@task(name="load-model", cache_policy=NO_CACHE, persist_result=False, timeout_seconds=timeouts.LOAD_MODEL)
def load_model(config_json: dict[str, Any]) -> float:
    """Build the process's Segmenter (model loaded once) while the first batch is claimed and decoded."""
    from clasp_engine import SegmenterConfig

    t = time.perf_counter()
    resources.get_segmenter(SegmenterConfig.from_dict(config_json))
    return time.perf_counter() - t


@task(name="segment-batch", cache_policy=NO_CACHE, persist_result=False, timeout_seconds=timeouts.SEGMENT)
def segment_batch(items: list[Item], config_json: dict[str, Any]) -> Segmented:
    """Run the engine on a batch (CRF batched inside). If the batch call fails, isolate the bad image."""
    from clasp_engine import SegmenterConfig
    from clasp_engine.errors import ClaspError

    out = Segmented()
    if not items:
        return out
    t = time.perf_counter()
    seg = resources.get_segmenter(SegmenterConfig.from_dict(config_json))  # built once per process
    out.seconds["model_load"] = time.perf_counter() - t
    t0 = time.perf_counter()
    with resources.accelerator_lock:
        try:
            results = seg.segment_batch([it.image for it in items])
            out.done = list(zip(items, results))
        except Exception as batch_exc:
            if is_transient(batch_exc):
                raise
            logger = get_run_logger()
            logger.warning("batch call failed (%s); segmenting its %d images one by one", batch_exc, len(items))
            for it in items:
                try:
                    out.done.append((it, seg(it.image)))
                except Exception as exc:
                    out.failures.append(Failure(it.image_id, it.uri, "segment", reason_of(exc), not isinstance(exc, ClaspError)))
    out.seconds["engine_wall"] = time.perf_counter() - t0
    return out


@transient_task("store-batch", persist_result=False, timeout_seconds=timeouts.STORE)
def store_batch(
    database_url: str,
    run_id: Any,
    worker_id: str,
    prepared: Prepared,
    segmented: Segmented,
    overlay_dir: str | None,
    settings_json: dict[str, Any],
) -> BatchReport:
    """Store masks and diagnostics, record failures with reasons, write overlays; one transaction."""
    report = BatchReport(claimed=prepared.claimed, notes=list(prepared.notes))
    for n in prepared.notes:
        get_run_logger().warning("%s: %s", n["uri"], n["note"])
    for key, value in prepared.seconds.items():
        _add_seconds(report.io_seconds, key, value)
    for key, value in segmented.seconds.items():
        _add_seconds(report.io_seconds, key, value)

    overlay_failures: list[Failure] = []
    if overlay_dir and segmented.done:
        t = time.perf_counter()
        overlay_failures = _write_overlays(Path(overlay_dir), segmented.done)
        report.io_seconds["overlay"] = time.perf_counter() - t

    t = time.perf_counter()
    failures = prepared.failures + segmented.failures
    failed_status, lost, store_failures = _store(
        database_url, run_id, worker_id, segmented.done, failures, settings_json, overlay_failures
    )
    failures = failures + store_failures
    report.io_seconds["store"] = time.perf_counter() - t
    if lost:
        get_run_logger().warning("%d images were reclaimed by another worker before they were stored: %s", len(lost), lost)

    for item, segmentation in segmented.done:
        if item.image_id in lost or item.image_id in failed_status:  # its result could not be stored
            continue
        report.done += 1
        report.backbone = report.backbone or segmentation.diagnostics.backbone
        report.device = report.device or segmentation.diagnostics.device
        report.k_counts[int(segmentation.k)] += 1
        for stage, seconds in segmentation.diagnostics.timings.items():
            _add_seconds(report.stage_seconds, stage, float(seconds))
    report.failures = [
        {"image_id": f.image_id, "uri": f.uri, "stage": f.stage, "reason": f.reason, "retryable": f.retryable,
         "status": failed_status.get(f.image_id)}
        for f in failures
        if f.image_id not in lost
    ]
    # The image is stored (segmented), only its overlay is missing: listed, not counted as failed.
    report.overlay_failures = [
        {"image_id": f.image_id, "uri": f.uri, "stage": f.stage, "reason": f.reason}
        for f in overlay_failures
        if f.image_id not in lost and f.image_id not in failed_status
    ]
    return report


def _store(
    database_url: str,
    run_id: Any,
    worker_id: str,
    done: list[tuple[Item, Any]],
    failures: list[Failure],
    settings_json: dict[str, Any],
    overlay_failures: list[Failure] = (),
) -> tuple[dict[int, str], set[int], list[Failure]]:
    """Store a batch (`integrations.db.store_worker_batch`: one transaction, else image by image) and
    stop renewing its leases. A transient error is raised, for the task's retries.
    Returns (image id -> new status for failed images, ids whose lease another worker took,
    the failures at stage "store")."""
    from integrations.db.worker_batch import FailedImage, store_worker_batch

    def fell_back(exc: BaseException) -> None:
        get_run_logger().warning("storing the batch failed (%s); storing its images one by one", reason_of(exc))

    outcome = store_worker_batch(
        lambda: resources.session(database_url), run_id, worker_id,
        [(item.image_id, seg) for item, seg in done],
        [FailedImage(f.image_id, f"{f.stage}: {f.reason}", f.retryable) for f in failures],
        [FailedImage(f.image_id, f"{f.stage}: {f.reason}") for f in overlay_failures],
        max_attempts=int(settings_json.get("max_attempts", 3)), is_transient=is_transient, on_fallback=fell_back,
    )
    lease.let_go(worker_id, [item.image_id for item, _ in done] + [f.image_id for f in failures])
    uri = {item.image_id: item.uri for item, _ in done}
    store_failures = [Failure(i, uri[i], "store", reason) for i, reason in outcome.unstorable.items()]
    return outcome.statuses, outcome.lost, store_failures


def _write_overlays(directory: Path, done: list[tuple[Item, Any]]) -> list[Failure]:
    """Each image's overlay (integrations.overlays); the images whose overlay could not be written.
    Their results are stored all the same: the masks are the product, an overlay is a view of one."""
    from integrations.overlays import write_overlays

    failed = write_overlays(directory, [(it.image_id, it.uri, it.image, seg.labels) for it, seg in done])
    return [Failure(it.image_id, it.uri, "overlay", failed[it.image_id]) for it, _ in done if it.image_id in failed]


@transient_task("open-run", timeout_seconds=timeouts.BOOKKEEPING)
def open_run(
    database_url: str, config_json: dict[str, Any], worker_id: str, flow_run_id: str | None, max_attempts: int
) -> dict[str, Any]:
    """Put expired leases back in the queue, open a run row, count what waits."""
    from integrations import db as repo

    with resources.session(database_url) as session:
        abandoned = repo.close_dead_runs(session, max_attempts=max_attempts)  # killed runs, closed as such
        reclaimed = repo.reclaim_expired(session, max_attempts=max_attempts)
        run_id = repo.start_run(
            session, config_json, worker_id=worker_id, orchestrator_run_id=flow_run_id or None,
            device=config_json.get("device"),
        )
        waiting = repo.counts_by_status(session).get("waiting", 0)
    return {"run_id": run_id, "reclaimed": reclaimed.requeued, "failed_after_leases": reclaimed.failed, "waiting": waiting,
            "abandoned_runs": abandoned}


@transient_task("close-run", timeout_seconds=timeouts.BOOKKEEPING)
def close_run(database_url: str, run_id: Any, status: str, backbone: str | None, device: str | None) -> dict[str, Any]:
    from integrations import db as repo

    with resources.session(database_url) as session:
        summary = repo.finish_run(session, run_id, status=status, backbone=backbone, device=device)
    return {"n_segmented": summary.n_segmented, "n_failed": summary.n_failed}


def give_back(database_url: str, worker_id: str, pending: Any) -> None:
    """Release the claims of a prefetched batch that will not be processed (no attempt counted)."""
    from integrations import db as repo

    try:
        prepared: Prepared = pending.result()
        ids = [it.image_id for it in prepared.items] + [f.image_id for f in prepared.failures]
        if ids:
            with resources.session(database_url) as session:
                repo.release_claims(session, worker_id, ids)
            lease.let_go(worker_id, ids)
    except BaseException:  # best effort: the lease expiry covers the rest
        pass


def settle_claims(
    database_url: str, worker_id: str, run_id: Any, image_ids: list[int], stage: str, exc: BaseException,
    max_attempts: int,
) -> None:
    """End this run's claims after the flow failed at `stage` with `exc`.

    An error (`Exception`) is recorded for each image, under the run, with the stage and
    the real reason; it is retryable when the error is transient. An interruption
    (KeyboardInterrupt, SystemExit, cancellation) is nobody's fault: the claims are
    released without counting an attempt. Best effort: what cannot be written here
    expires with its lease (the keeper has stopped renewing it).
    """
    from integrations import db as repo

    if not image_ids:
        return
    try:
        with resources.session(database_url) as session:
            if not isinstance(exc, Exception):
                repo.release_claims(session, worker_id, image_ids)
                return
            reason, retryable = f"{stage}: {reason_of(exc)}", is_transient(exc)
            for image_id in image_ids:
                try:
                    repo.record_failure(session, image_id, reason, worker_id, retryable,
                                        max_attempts=max_attempts, run_id=run_id)
                except repo.LeaseLostError:
                    pass
    except BaseException as err:  # noqa: BLE001
        try:
            get_run_logger().warning("could not record the failure of %d claimed images (%s)", len(image_ids), err)
        except BaseException:
            pass


def wait_for(future: Any, seconds: float) -> bool:
    """Wait up to `seconds` for a submitted task; True when it has finished."""
    from concurrent.futures import wait

    return not wait([future.wrapped_future], timeout=seconds).not_done


# ---------------------------------------------------------------- the flow
@flow(name="segment", task_runner=ThreadPoolTaskRunner(max_workers=3), log_prints=False)
def segment(
    batch_size: int | None = None,
    limit: int | None = None,
    backbone: str | None = None,
    variant: str | None = None,
    weights: str | None = None,
    max_side: int | None = None,
    device: str | None = None,
    database_url: str | None = None,
    output_dir: str | None = None,
    overlays: bool = True,
) -> dict[str, Any]:
    """Segment waiting images in batches until none wait (or `limit` images were claimed)."""
    from prefect.runtime import flow_run

    check_count("limit", limit, 0)
    logger = get_run_logger()
    settings = load_settings(
        database_url=database_url, batch_size=batch_size, output_dir=output_dir,
        backbone=backbone, variant=variant, weights=weights, max_side=max_side, device=device,
    )
    config = settings.engine_config()
    config_json = config.to_dict()  # what the run records (no local paths)
    # what the worker's tasks build the engine from: the same, plus where to look for weights
    engine_json = {**config_json, "weights_dir": config.weights_dir}
    settings_json = settings.source_json()
    url = settings.database_url
    n = settings.batch_size
    worker_id = resources.new_worker_id()
    overlay_dir = str(Path(settings.output_dir) / "overlays") if overlays else None

    t_start = time.perf_counter()
    board = dashboard.RunDashboard()  # pictures for the Artifacts tab
    if settings.gpu_limit:
        gpu_slots.ensure_gpu_limit()  # the global GPU limit exists (sized by CLASP_GPU_SLOTS)
    opened = open_run(url, config_json, worker_id, str(flow_run.get_id() or ""), settings.max_attempts)
    run_id = opened["run_id"]
    expected = opened["waiting"] if limit is None else min(limit, opened["waiting"])
    logger.info(
        "run %s: %d images waiting (%d leases reclaimed), batch size %d, backbone %s, variant %s",
        run_id, opened["waiting"], opened["reclaimed"] or 0, n, config.backbone, config.variant,
    )
    progress_id = create_progress_artifact(
        progress=0.0, key="segment-progress", description=f"Segmenting {expected} images (run {run_id})"
    )

    total = BatchReport()
    claimed_so_far = 0
    # Renews the leases of every image this run holds, and the run's heartbeat (flows/lease.py).
    keeper = lease.LeaseKeeper(url, worker_id, settings.lease_seconds, run_id=run_id).start()
    slots = gpu_slots.SlotHolder(settings.gpu_slice_seconds, enabled=settings.gpu_limit)
    stage = "prepare"  # where the flow is, to name the cause if it fails

    def next_claim() -> int:
        return n if limit is None else max(0, min(n, limit - claimed_so_far))

    # Prefetch: the next batch is claimed, read and decoded on a worker thread while
    # the current one is segmented.
    want = next_claim()
    # Huge JPEGs decode at a DCT scale whose long side stays >= FULL_DECODE_SIDE (and >= the
    # working size): memory stays bounded while the masks of ordinary photos keep the
    # photo's own size (a reviewer's tool draws them over the original).
    decode_side = max(config.max_side, FULL_DECODE_SIDE)
    pending = prepare_batch.submit(url, worker_id, want, settings_json, decode_side) if want else None
    claimed_so_far += want
    warm = load_model.submit(engine_json) if want and opened["waiting"] else None
    storing = None  # the previous batch's store task, running while this batch is segmented

    def collect(future: Any) -> None:
        total.add(future.result())
        processed = total.done + total.final_failures()
        update_progress_artifact(
            artifact_id=progress_id,
            progress=min(100.0, 100.0 * processed / max(expected, 1)),
            description=f"{total.done} segmented, {total.final_failures()} failed, of {expected} (run {run_id})",
        )

    try:
        if warm is not None:
            stage = "load-model"
            total.io_seconds["model_load"] = warm.result()
        while pending is not None:
            stage = "prepare"
            if slots.held and not wait_for(pending, INPUT_WAIT_KEEPING_SLOT):
                slots.release()  # starved of input (slow downloads): another run may use the GPU meanwhile
            prepared: Prepared = pending.result()
            pending = None
            if prepared.claimed == 0:
                break
            claimed_so_far += prepared.claimed - want  # what the claim really returned
            want = next_claim() if prepared.claimed == want else 0  # a short claim: the queue is empty
            pending = prepare_batch.submit(url, worker_id, want, settings_json, decode_side) if want else None
            claimed_so_far += want
            stage = "segment"
            with slots.batch():  # one of CLASP_GPU_SLOTS global slots, kept for a time slice
                segmented = segment_batch(prepared.items, engine_json)
            board.observe(segmented.done)
            if storing is not None:
                stage = "store"
                future, storing = storing, None
                collect(future)
            storing = store_batch.submit(url, run_id, worker_id, prepared, segmented, overlay_dir, settings_json)
        slots.release()  # the GPU work is done; the last store may still run
        if storing is not None:
            stage = "store"
            future, storing = storing, None
            collect(future)
    except BaseException as exc:
        slots.release()
        # Nothing stays claimed: the prefetched batch, never started, is given back; every
        # other image this run still holds is recorded failed with the real cause and the
        # stage (a transient cause puts it back in the queue), or released when the run
        # was interrupted or cancelled rather than broken.
        if storing is not None:
            try:
                collect(storing)
            except BaseException:
                pass
        if pending is not None:
            give_back(url, worker_id, pending)
        keeper.stop()
        settle_claims(url, worker_id, run_id, keeper.held(), stage, exc, settings.max_attempts)
        close_run(url, run_id, "failed", total.backbone, total.device)
        update_progress_artifact(
            artifact_id=progress_id,
            progress=min(100.0, 100.0 * (total.done + total.final_failures()) / max(expected, 1)),
            description=f"FAILED after {total.done} segmented (run {run_id}); see the flow run's logs",
        )
        raise
    keeper.stop()
    update_progress_artifact(
        artifact_id=progress_id,
        progress=100.0,
        description=f"Done: {total.done} segmented, {total.final_failures()} failed (run {run_id})",
    )

    wall = time.perf_counter() - t_start
    summary = summarize(total, wall, run_id, config_json, n)
    summary["gpu_slot_acquisitions"] = slots.acquisitions
    close_run(url, run_id, "finished", total.backbone, total.device)
    create_table_artifact(
        table=summary_table(summary),
        key="segment-summary",
        description=f"Segmentation run {run_id}: {summary['done']} done, {summary['failed']} failed, "
        f"{summary['images_per_second']:.2f} images/s",
    )
    board.publish(summary, logger)  # K distribution, Figure 3, overlays, throughput
    logger.info(
        "run %s: %d segmented, %d failed in %.1f s (%.2f images/s)",
        run_id, summary["done"], summary["failed"], wall, summary["images_per_second"],
    )
    return summary


def summarize(total: BatchReport, wall: float, run_id: Any, config_json: dict[str, Any], batch_size: int) -> dict[str, Any]:
    done = total.done
    reasons = Counter(f"{f['stage']}: {f['reason']}" for f in total.failures if f.get("status") != "waiting")
    per_image = {stage: s / done for stage, s in sorted(total.stage_seconds.items())} if done else {}
    engine_total = total.stage_seconds.get("total", sum(v for k, v in total.stage_seconds.items() if k != "total"))
    return {
        "run_id": run_id,
        "claimed": total.claimed,
        "done": done,
        "failed": total.final_failures(),
        "requeued": len(total.failures) - total.final_failures(),
        "failures": total.failures[:MAX_FAILURES_LISTED],  # all of them are in SQL (`clasp status`)
        "failures_listed": min(len(total.failures), MAX_FAILURES_LISTED),
        "overlay_failures": total.overlay_failures[:MAX_FAILURES_LISTED],  # stored, but no overlay written
        "overlays_failed": len(total.overlay_failures),
        "notes": total.notes[:MAX_FAILURES_LISTED],  # decoded with a caveat (animated, unreadable EXIF), by name
        "failure_reasons": dict(reasons.most_common()),
        "k_distribution": {int(k): int(v) for k, v in sorted(total.k_counts.items())},
        "seconds_per_image_per_stage": per_image,
        "io_seconds": dict(total.io_seconds),
        "engine_seconds": engine_total,
        "wall_seconds": wall,
        "images_per_second": done / wall if wall > 0 else 0.0,
        "outside_engine_share": max(0.0, 1.0 - engine_total / wall) if wall > 0 and done else None,
        # What orchestration, database and image I/O add to the engine's own time,
        # not counting the one-time model load of this process.
        "model_load_seconds": total.io_seconds.get("model_load", 0.0),
        "overhead_vs_engine": (
            (wall - engine_total - total.io_seconds.get("model_load", 0.0)) / engine_total if engine_total > 0 else None
        ),
        "batch_size": batch_size,
        "backbone": config_json.get("backbone"),
        "variant": config_json.get("variant"),
    }


def summary_table(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for the dashboard: one metric per row, readable without scrolling sideways."""
    rows: list[dict[str, Any]] = [
        {"metric": "images segmented", "value": summary["done"]},
        {"metric": "images failed", "value": summary["failed"]},
        {"metric": "images per second (end to end)", "value": round(summary["images_per_second"], 3)},
        {"metric": "wall seconds", "value": round(summary["wall_seconds"], 2)},
        {"metric": "engine seconds (sum of per-image totals)", "value": round(summary["engine_seconds"], 2)},
    ]
    if summary["outside_engine_share"] is not None:
        rows.append({"metric": "share of wall time outside the engine", "value": f"{100 * summary['outside_engine_share']:.1f}%"})
    if summary["overhead_vs_engine"] is not None:
        rows.append({"metric": "orchestration + storage + I/O added to engine time (model load excluded)",
                     "value": f"{100 * summary['overhead_vs_engine']:.1f}%"})
        rows.append({"metric": "model load seconds (once per worker process)", "value": round(summary["model_load_seconds"], 2)})
    rows += [{"metric": f"K = {k}", "value": c} for k, c in summary["k_distribution"].items()]
    rows += [
        {"metric": f"seconds per image: {stage}", "value": round(s, 4)}
        for stage, s in summary["seconds_per_image_per_stage"].items()
    ]
    rows += [{"metric": f"failed: {reason}", "value": c} for reason, c in summary["failure_reasons"].items()]
    return rows
