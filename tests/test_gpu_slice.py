"""A run keeps its GPU slot over consecutive batches for a time slice (flows/gpu_slots.SlotHolder).

The Prefect limit itself is exercised with a real server in test_gpu_slots.py;
here `gpu_slot` is replaced by a recorder so the holding logic is checked alone.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from flows import gpu_slots


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def events(monkeypatch):
    log: list[str] = []

    @contextmanager
    def fake_slot(timeout_seconds=None):
        log.append("acquire")
        try:
            yield
        finally:
            log.append("release")

    monkeypatch.setattr(gpu_slots, "gpu_slot", fake_slot)
    return log


def run_batches(holder: gpu_slots.SlotHolder, clock: Clock, durations: list[float], log: list[str]) -> None:
    for seconds in durations:
        with holder.batch():
            assert holder.held == holder.enabled
            log.append("batch")
            clock.now += seconds


def test_slot_kept_over_batches_within_the_slice(events):
    clock = Clock()
    with gpu_slots.SlotHolder(10.0, clock=clock) as holder:
        run_batches(holder, clock, [3.0, 3.0, 3.0], events)
        assert holder.held
    assert events == ["acquire", "batch", "batch", "batch", "release"]
    assert holder.acquisitions == 1 and not holder.held


def test_slot_handed_back_between_batches_when_the_slice_is_over(events):
    clock = Clock()
    with gpu_slots.SlotHolder(5.0, clock=clock) as holder:
        run_batches(holder, clock, [3.0, 3.0, 3.0, 3.0], events)
    # 3 + 3 >= 5: handed back after the second batch, queued again for the third
    assert events == ["acquire", "batch", "batch", "release", "acquire", "batch", "batch", "release"]
    assert holder.acquisitions == 2


def test_zero_slice_is_one_slot_per_batch(events):
    clock = Clock()
    with gpu_slots.SlotHolder(0.0, clock=clock) as holder:
        run_batches(holder, clock, [0.0, 0.0], events)
        assert not holder.held
    assert events == ["acquire", "batch", "release", "acquire", "batch", "release"]


def test_an_error_in_a_batch_hands_the_slot_back_on_close(events):
    clock = Clock()
    with pytest.raises(RuntimeError):
        with gpu_slots.SlotHolder(60.0, clock=clock) as holder:
            with holder.batch():
                raise RuntimeError("engine failed")
    assert events == ["acquire", "release"] and not holder.held


def test_disabled_holder_takes_no_slot(events):
    clock = Clock()
    with gpu_slots.SlotHolder(30.0, clock=clock, enabled=False) as holder:
        run_batches(holder, clock, [1.0, 1.0], events)
    assert events == ["batch", "batch"] and holder.acquisitions == 0


def test_slice_setting_is_validated():
    from integrations.settings import SettingsError, load_settings

    assert load_settings(gpu_slice_seconds=0).gpu_slice_seconds == 0.0
    with pytest.raises(SettingsError, match="gpu_slice_seconds|GPU_SLICE_SECONDS"):
        load_settings(gpu_slice_seconds=-1)
