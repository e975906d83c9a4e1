"""Keep a live worker's claims alive: a background thread renews the leases of the images a
`segment` flow run holds, and beats its run's heartbeat.

Without it, a batch that takes longer than the lease (a slow model, a lease set
short) was reclaimed while it was still being worked on, and its images ended
`failed` as if the worker had crashed (issue 13.3). With it, only a dead worker's
claims expire: a killed process stops renewing, its leases run out and another
worker takes the images back.

    with LeaseKeeper(url, worker_id, lease_seconds, run_id=run_id) as keeper:
        ...                          # prepare_batch: hold(worker_id, claimed ids)
        ...                          # store_batch:   let_go(worker_id, stored ids)
        keeper.held()                # what is still claimed (to fail with the real cause)

The tasks that claim and store run on threads of the flow's process (the
ThreadPoolTaskRunner), so they find the keeper by the worker id in a
process-wide table.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

_keepers: dict[str, "LeaseKeeper"] = {}
_keepers_lock = threading.Lock()


def renew_interval(lease_seconds: float) -> float:
    """Seconds between renewals: a third of the lease (two renewals may fail before it runs out), at most 60 s."""
    return max(0.2, min(float(lease_seconds) / 3.0, 60.0))


def hold(worker_id: str, image_ids: Iterable[int]) -> None:
    """`worker_id` claimed these images: keep their leases alive until `let_go`."""
    keeper = _keepers.get(worker_id)
    if keeper is not None:
        keeper.hold(image_ids)


def let_go(worker_id: str, image_ids: Iterable[int]) -> None:
    """These images are stored, failed or released: stop renewing them."""
    keeper = _keepers.get(worker_id)
    if keeper is not None:
        keeper.let_go(image_ids)


class LeaseKeeper:
    """A daemon thread that renews `worker_id`'s held leases every `renew_interval(lease)` seconds
    and beats run `run_id`'s heartbeat. A failed renewal (database briefly away) is logged and
    tried again at the next tick; an image another worker took back is dropped."""

    def __init__(self, database_url: str, worker_id: str, lease_seconds: float, *, run_id: Any = None,
                 interval: float | None = None):
        self.database_url = database_url
        self.worker_id = worker_id
        self.lease_seconds = float(lease_seconds)
        self.run_id = run_id
        self.interval = renew_interval(lease_seconds) if interval is None else interval
        self.renewals = 0  # successful ticks, for tests and logs
        self._held: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the set of held images
    def hold(self, image_ids: Iterable[int]) -> None:
        with self._lock:
            self._held.update(int(i) for i in image_ids)

    def let_go(self, image_ids: Iterable[int]) -> None:
        with self._lock:
            self._held.difference_update(int(i) for i in image_ids)

    def held(self) -> list[int]:
        with self._lock:
            return sorted(self._held)

    # -- the thread
    def start(self) -> "LeaseKeeper":
        with _keepers_lock:
            _keepers[self.worker_id] = self
        self._thread = threading.Thread(target=self._loop, name=f"lease-keeper-{self.worker_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 30)
        with _keepers_lock:
            if _keepers.get(self.worker_id) is self:
                del _keepers[self.worker_id]

    def __enter__(self) -> "LeaseKeeper":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.renew_now()
            except Exception as exc:  # noqa: BLE001 - keep beating; the next tick tries again
                log.warning("lease renewal for %s failed (%s: %s); retrying in %.1f s",
                            self.worker_id, type(exc).__name__, exc, self.interval)

    def renew_now(self) -> list[int]:
        """Renew every held lease and beat the run now; returns the ids still held."""
        from flows import resources
        from integrations import db as repo

        ids = self.held()
        with resources.session(self.database_url) as session:
            kept = repo.renew_leases(session, self.worker_id, ids, self.lease_seconds, commit=False) if ids else []
            if self.run_id is not None:
                repo.beat_run(session, self.run_id, commit=False)
            session.commit()
        lost = set(ids) - set(kept)
        if lost:  # reclaimed by another worker (this one was stalled past its lease): not ours any more
            log.warning("worker %s lost the lease of %d images: %s", self.worker_id, len(lost), sorted(lost)[:20])
            self.let_go(lost)
        self.renewals += 1
        return kept
