"""The flows' one retry policy: which errors are worth another try, and the task decorator that applies it.

Retries with backoff (2, 10, 30 s) for transient failures only: a dropped
database connection, a network error, a 5xx or 429. Bad input (an undecodable
image, an invalid configuration, a 4xx) fails at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from clasp_engine.errors import ClaspError

RETRIES = 3
RETRY_DELAYS = [2, 10, 30]


def is_transient(exc: BaseException | None) -> bool:
    """True for failures that may pass on a second try: network, database connection, 5xx.

    Bad input (an undecodable image, an invalid configuration, a 4xx) is never transient.
    """
    if exc is None:
        return False
    if isinstance(exc, ClaspError):  # InvalidImageError, ConfigError, WeightsNotFoundError, SettingsError
        return False
    try:
        import sqlalchemy.exc as sa_exc

        if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
            return True
        if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError)):
            return True
        if isinstance(exc, sa_exc.TimeoutError):  # connection pool exhausted
            return True
    except ImportError:  # pragma: no cover
        pass
    try:
        import httpx

        if isinstance(exc, httpx.TransportError):  # connect / read timeouts, refused connections
            return True
        if isinstance(exc, httpx.HTTPStatusError):
            return exc.response.status_code >= 500 or exc.response.status_code == 429
    except ImportError:  # pragma: no cover
        pass
    try:
        from integrations.label_studio.client import LabelStudioUnavailable

        if isinstance(exc, LabelStudioUnavailable):  # connection errors / 5xx after the client's own retries
            return True
    except ImportError:  # pragma: no cover
        pass
    status = getattr(exc, "status_code", None)  # label_studio_sdk ApiError and friends
    if not isinstance(status, int):
        status = getattr(exc, "status", None)  # integrations.label_studio LabelStudioResponseError
    if isinstance(status, int):
        return status >= 500 or status == 429
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return False


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry a failed task run only when its error is transient."""
    try:
        exc = state.result(raise_on_failure=False)
    except BaseException as err:  # the result itself could not be read
        exc = err
    return isinstance(exc, BaseException) and is_transient(exc)


TRANSIENT_RETRY = {"retries": RETRIES, "retry_delay_seconds": RETRY_DELAYS, "retry_condition_fn": retry_if_transient}


def transient_task(name: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
    """`@task(name=...)` with the retry policy above and no result cache (each call does fresh work).

    Extra keyword arguments go to `prefect.task` (e.g. `persist_result=False`).
    """
    return task(name=name, cache_policy=NO_CACHE, **TRANSIENT_RETRY, **kwargs)
