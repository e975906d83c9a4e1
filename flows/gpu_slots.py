"""GPU slots: how many segment batches run on accelerators at once, across every worker.

One Prefect global concurrency limit, `GPU_LIMIT`, holds one slot per GPU. A
`segment` run occupies a slot for each batch it hands to the engine
(`gpu_slot()`), so however many workers and flow runs there are, at most
CLASP_GPU_SLOTS batches are on the accelerators at the same moment; the rest
wait for a slot (visible on the dashboard under Concurrency). The limit lives
on the Prefect server, not in a process, so it holds across machines.

Settings (environment):
- CLASP_GPU_SLOTS: the number of GPUs (default 1). Each segment run creates the
  limit with this many slots if it does not exist, and sets it to this number
  when the variable is set explicitly (so changing the fleet is an environment
  change, not an edit). The moderation queue starts this many `segment` runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

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
