"""Which failures are retried: transient ones (network, database connection, 5xx), never bad input."""

from __future__ import annotations

import httpx
import pytest
import sqlalchemy.exc as sa_exc

from clasp_engine.errors import ConfigError, InvalidImageError
from flows import retry


def _status_error(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://example.test/x")
    return httpx.HTTPStatusError("boom", request=request, response=httpx.Response(code, request=request))


class _ApiError(Exception):  # shaped like label_studio_sdk.core.api_error.ApiError
    def __init__(self, status_code: int):
        self.status_code = status_code


@pytest.mark.parametrize(
    "exc",
    [
        sa_exc.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly")),
        sa_exc.InterfaceError("SELECT 1", {}, Exception("connection already closed")),
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        _status_error(503),
        _ApiError(502),
        ConnectionResetError("reset"),
        TimeoutError("timed out"),
    ],
)
def test_transient(exc):
    assert retry.is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        InvalidImageError("x.jpg", "not an image"),
        ConfigError("bad"),
        ValueError("bad input"),
        _status_error(404),
        _ApiError(400),
        sa_exc.IntegrityError("INSERT", {}, Exception("duplicate key")),
        None,
    ],
)
def test_not_transient(exc):
    assert not retry.is_transient(exc)


def test_retry_condition_reads_the_failed_state():
    from prefect.states import Failed

    assert retry.retry_if_transient(None, None, Failed(data=httpx.ConnectError("refused")))
    assert not retry.retry_if_transient(None, None, Failed(data=InvalidImageError("x", "corrupt")))


def test_retry_condition_runs_in_prefect(request):
    """A task with the condition retries a transient error and gives up at once on bad input."""
    from prefect import task

    calls = {"transient": 0, "bad": 0}

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry.retry_if_transient)
    def flaky(kind: str) -> str:
        calls[kind] += 1
        if kind == "transient" and calls[kind] < 3:
            raise httpx.ConnectError("refused")
        if kind == "bad":
            raise InvalidImageError("x.jpg", "corrupt")
        return "ok"

    import flows_support as fs
    from prefect import flow

    @flow
    def run(kind: str) -> str:
        return flaky(kind)

    fs.ensure_harness(request)
    assert run("transient") == "ok" and calls["transient"] == 3
    with pytest.raises(InvalidImageError):
        run("bad")
    assert calls["bad"] == 1


def test_every_retried_flow_task_uses_the_one_policy():
    """The tasks that talk to the database or Label Studio share `flows.retry`'s policy, defined once."""
    from flows import ingest, pipeline, review, segment

    tasks = [segment.prepare_batch, segment.store_batch, segment.open_run, segment.close_run, ingest.register,
             pipeline.status_counts, review.push_task, review.sync_task]
    for t in tasks:
        assert (t.retries, t.retry_delay_seconds, t.retry_condition_fn) == (
            retry.RETRIES, retry.RETRY_DELAYS, retry.retry_if_transient), t.name
    assert not segment.prepare_batch.persist_result  # extra task options pass through
