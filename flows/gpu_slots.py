"""GPU slots: how many segment batches run on accelerators at once, across every worker.

One Prefect global concurrency limit, `GPU_LIMIT`, holds one slot per GPU. A
`segment` run holds a slot whenever it hands a batch to the engine
(`SlotHolder.batch()`), so however many workers and flow runs there are, at most
CLASP_GPU_SLOTS runs are on the accelerators at the same moment; the rest wait
for a slot (visible on the dashboard under Concurrency). The limit lives on the
Prefect server, not in a process, so it holds across machines.

A run keeps its slot over consecutive batches for a time slice
(CLASP_GPU_SLICE_SECONDS, default 30 s), then hands it back between two batches
and queues again, so a waiting run gets the GPU within about a slice (and at once
when the holder waits for input: flows/segment.py hands the slot back when its
next batch is not ready within INPUT_WAIT_KEEPING_SLOT). Why not a
slot per batch: each acquisition is a round trip to the Prefect API, and the
embedded SQLite-backed server answers it with a 503 whenever one of its own
writes overlaps (SQLITE_BUSY_SNAPSHOT), after which Prefect's client waits
2 s before trying again. Measured on `clasp run`, 64 images, classic, pixel,
batch 16, this 2-core machine: 2 of 4 acquisitions took 1.8-2.3 s, 4.0 s of a
16.2 s segment flow; with a slice, one acquisition per run of that size.

Settings (environment):
- CLASP_GPU_SLOTS: the number of GPUs (default 1). Each segment run creates the
  limit with this many slots if it does not exist, and sets it to this number
  when the variable is set explicitly (so changing the fleet is an environment
  change, not an edit). The moderation queue starts this many `segment` runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

GPU_LIMIT = "clasp-gpu"
ENV = "CLASP_GPU_SLOTS"


def gpu_slots() -> int:
    """The number of GPU slots: `Settings.gpu_slots` (CLASP_GPU_SLOTS, default 1), validated there."""
    from integrations.settings import load_settings

    return load_settings().gpu_slots


def ensure_gpu_limit() -> int:
    """Create the global limit if missing; set its size when CLASP_GPU_SLOTS is set. Returns its size."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    slots = gpu_slots()
    explicit = bool(os.environ.get(ENV, "").strip())
    with get_client(sync_client=True) as client:
        for _ in range(3):  # two workers starting together: one creates, the other reads or updates
            try:
                current = int(client.read_global_concurrency_limit_by_name(GPU_LIMIT).limit)
            except ObjectNotFound:
                try:
                    client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=slots))
                    return slots
                except ObjectAlreadyExists:
                    continue
            if explicit and current != slots:
                client.update_global_concurrency_limit(GPU_LIMIT, GlobalConcurrencyLimitUpdate(limit=slots))
                return slots
            return current
    raise RuntimeError(f"could not create or read the global concurrency limit {GPU_LIMIT!r} on the Prefect server")


@contextmanager
def gpu_slot(timeout_seconds: float | None = None) -> Iterator[None]:
    """Hold one slot of `GPU_LIMIT` while the body runs (waits for a free one).

    `strict=True`: a missing limit is an error rather than an unlimited run;
    `ensure_gpu_limit()` at the start of each segment run creates it.
    """
    from prefect.concurrency.sync import concurrency

    # A failed lease renewal (a server hiccup during a long batch) must not kill the batch.
    with concurrency(GPU_LIMIT, occupy=1, timeout_seconds=timeout_seconds, strict=True,
                     raise_on_lease_renewal_failure=False):
        yield


class SlotHolder:
    """One run's hold on a GPU slot, kept over consecutive batches for up to `slice_seconds`.

        with SlotHolder(settings.gpu_slice_seconds) as slots:
            for batch in batches:
                with slots.batch():      # acquires if not held (waits for a free slot)
                    engine(batch)        # hands the slot back after the batch once the slice is over

    `slice_seconds=0` acquires and releases around every batch; `enabled=False` takes
    no slot at all (a private Prefect server, see `Settings.gpu_limit`). The slot is always
    handed back between batches, never during one, and when the holder closes
    (end of the run, or an error).
    """

    def __init__(self, slice_seconds: float, clock=time.monotonic, *, enabled: bool = True) -> None:
        self.slice_seconds = float(slice_seconds)
        self.enabled = enabled  # False: no slot is taken (CLASP_GPU_LIMIT=false)
        self.acquisitions = 0  # how many times a slot was taken (for the run summary and tests)
        self._clock = clock
        self._held: ExitStack | None = None
        self._since = 0.0

    @property
    def held(self) -> bool:
        return self._held is not None

    @contextmanager
    def batch(self) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        if self._held is None:
            stack = ExitStack()
            stack.enter_context(gpu_slot())
            self._held, self._since = stack, self._clock()
            self.acquisitions += 1
        try:
            yield
        finally:
            if self._clock() - self._since >= self.slice_seconds:
                self.release()

    def release(self) -> None:
        """Hand the slot back now (no-op when none is held)."""
        held, self._held = self._held, None
        if held is not None:
            held.close()

    def __enter__(self) -> "SlotHolder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
