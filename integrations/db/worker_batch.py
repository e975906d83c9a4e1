"""Store one worker batch: its results, its failed images and its failed side steps.

`store_worker_batch` writes everything in one transaction (`results.store_batch`
for the results). If that transaction fails for a reason that is not transient,
it goes again image by image, so that one result that cannot be stored (bad data,
a codec bug) fails that image alone, at stage "store", and nothing stays claimed.
A transient error (the database away) is raised for the caller's retries, and an
image whose lease another worker took is skipped and reported, never written.

    outcome = store_worker_batch(open_session, run_id, worker_id, results, failures,
                                 failed_steps, max_attempts=3, is_transient=is_transient)
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from clasp_engine.errors import reason_of


@dataclass
class FailedImage:
    image_id: int
    message: str  # "<stage>: <reason>", as stored in images.last_error
    retryable: bool = False


@dataclass
class StoreOutcome:
    statuses: dict[int, str] = field(default_factory=dict)  # failed image id -> its new status (failed | waiting)
    lost: set[int] = field(default_factory=set)  # another worker holds these now: nothing written for them
    unstorable: dict[int, str] = field(default_factory=dict)  # id -> why its result could not be stored


def store_worker_batch(
    open_session: Callable[[], AbstractContextManager[Session]],
    run_id: Any,
    worker_id: str,
    results: list[tuple[int, Any]],
    failures: list[FailedImage],
    failed_steps: list[FailedImage] = (),
    *,
    max_attempts: int,
    is_transient: Callable[[BaseException], bool],
    on_fallback: Callable[[BaseException], None] | None = None,
) -> StoreOutcome:
    """Store `results` ((image id, Segmentation) pairs), record `failures` (the images end failed, or
    waiting when retryable and attempts remain) and `failed_steps` (stored images whose side step,
    e.g. the overlay, failed). `on_fallback(exc)` is called before the image-by-image path."""
    from integrations import db as repo  # through the package: tests replace its functions

    with open_session() as session:
        try:
            lost = set(repo.store_batch(
                session, run_id, worker_id, [(image_id, [seg]) for image_id, seg in results], commit=False
            ).lost)
            for f in failed_steps:
                if f.image_id not in lost:
                    repo.record_failed_step(session, f.image_id, f.message, worker_id, run_id=run_id, commit=False)
            statuses = {
                f.image_id: repo.record_failure(session, f.image_id, f.message, worker_id, f.retryable,
                                                max_attempts=max_attempts, run_id=run_id, commit=False)
                for f in failures
            }
            session.commit()
            return StoreOutcome(statuses, lost)
        except repo.LeaseLostError:
            session.rollback()
            cause: BaseException | None = None
        except Exception as exc:
            session.rollback()
            if is_transient(exc):
                raise
            cause = exc
    if cause is not None and on_fallback is not None:
        on_fallback(cause)
    return _one_by_one(open_session, run_id, worker_id, results, failures, failed_steps, max_attempts, is_transient)


def _one_by_one(open_session, run_id, worker_id, results, failures, failed_steps, max_attempts, is_transient):
    from integrations import db as repo

    out = StoreOutcome()
    step_failed = {f.image_id: f for f in failed_steps}
    with open_session() as session:
        for image_id, segmentation in results:
            try:
                repo.store_segmentation(session, image_id, run_id, segmentation, worker_id)
            except repo.LeaseLostError:
                out.lost.add(image_id)
                continue
            except Exception as exc:
                session.rollback()
                if is_transient(exc):
                    raise
                out.unstorable[image_id] = reason_of(exc)
                continue
            f = step_failed.get(image_id)
            if f is not None:
                repo.record_failed_step(session, image_id, f.message, worker_id, run_id=run_id)
        store_failures = [FailedImage(i, f"store: {reason}") for i, reason in out.unstorable.items()]
        for f in list(failures) + store_failures:
            try:
                out.statuses[f.image_id] = repo.record_failure(
                    session, f.image_id, f.message, worker_id, f.retryable, max_attempts=max_attempts, run_id=run_id
                )
            except repo.LeaseLostError:
                out.lost.add(f.image_id)
    return out

