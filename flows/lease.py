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

A worker that is alive but stuck (an engine call that never returns) would renew
forever, so an image is renewed for at most `max_hold` seconds after it was
claimed (`flows.timeouts.MAX_CLAIM_HOLD`: the longest a healthy batch can take).
Past that the keeper drops it with a warning: its lease runs out and another
worker takes it back; should the stuck batch ever finish, its store finds the
lease lost and writes nothing for that image.

The tasks that claim and store run on threads of the flow's process (the
ThreadPoolTaskRunner), so they find the keeper by the worker id in a
process-wide table.
"""

from __future__ import annotations

import logging
import threading
import time
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
                 interval: float | None = None, max_hold: float | None = None, clock=time.monotonic):
        from flows.timeouts import MAX_CLAIM_HOLD

        self.database_url = database_url
        self.worker_id = worker_id
        self.lease_seconds = float(lease_seconds)
        self.run_id = run_id
        self.interval = renew_interval(lease_seconds) if interval is None else interval
        self.max_hold = float(MAX_CLAIM_HOLD if max_hold is None else max_hold)
        self.renewals = 0  # successful ticks, for tests and logs
        self.overdue: list[int] = []  # images given up on because they were held past max_hold
        self._clock = clock
        self._held: dict[int, float] = {}  # image id -> when it was first held
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the set of held images
    def hold(self, image_ids: Iterable[int]) -> None:
        now = self._clock()
        with self._lock:
            for i in image_ids:
                self._held.setdefault(int(i), now)

    def let_go(self, image_ids: Iterable[int]) -> None:
        with self._lock:
            for i in image_ids:
                self._held.pop(int(i), None)

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

        self._drop_overdue()
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

    def _drop_overdue(self) -> None:
        """Stop renewing images held longer than max_hold (a stuck batch): their leases will run out."""
        now = self._clock()
        with self._lock:
            overdue = sorted(i for i, since in self._held.items() if now - since > self.max_hold)
            for i in overdue:
                del self._held[i]
        if overdue:
            self.overdue += overdue
            log.warning("worker %s held %d images for more than %.0f s (a stuck batch?): no longer renewing "
                        "their leases, so another worker takes them back when they expire: %s",
                        self.worker_id, len(overdue), self.max_hold, overdue[:20])
