"""What every flow shares: which errors are worth a retry, and the per-process caches.

A worker process keeps one `Segmenter` per engine configuration (the model is
loaded once and reused by every batch and every flow run in that process) and
one database engine per URL. Both caches are guarded by locks because two flow
runs can share a process (tests, `flow.serve`, a thread-pool task runner).
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from clasp_engine import SegmenterConfig
from clasp_engine.errors import ClaspError
from integrations.settings import Settings

# Retries with backoff, for transient failures only (see `is_transient`).
RETRIES = 3
RETRY_DELAYS = [2, 10, 30]

_segmenters: dict[str, Any] = {}
_segmenter_lock = threading.Lock()
# One batch at a time on the accelerator per process, whichever flow run asks.
accelerator_lock = threading.Lock()


def is_transient(exc: BaseException | None) -> bool:
    """True for failures that may pass on a second try: network, database connection, 5xx.

    Bad input (an undecodable image, an invalid configuration, a 4xx) is never transient.
    """
    if exc is None:
        return False
    if isinstance(exc, ClaspError):  # InvalidImageError, ConfigError, WeightsNotFoundError
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


def get_segmenter(config: SegmenterConfig) -> Any:
    """The process's Segmenter for this configuration, built (and its model loaded) once."""
    key = config.fingerprint()
    seg = _segmenters.get(key)
    if seg is not None:
        return seg
    with _segmenter_lock:
        seg = _segmenters.get(key)
        if seg is None:
            from clasp_engine import Segmenter

            seg = Segmenter(config)
            _segmenters[key] = seg
    return seg


def cached_segmenter_count() -> int:
    return len(_segmenters)


def new_worker_id() -> str:
    """Names the holder of a claim: host, process, and a per-flow-run suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def engine_config(
    backbone: str | None = None,
    variant: str | None = None,
    weights: str | None = None,
    max_side: int | None = None,
    device: str | None = None,
    k: int | None = None,
) -> SegmenterConfig:
    """Engine configuration: defaults, then CLASP_* environment variables, then these parameters."""
    return SegmenterConfig.from_env(
        backbone=backbone, variant=variant, weights=weights, max_side=max_side, device=device, k=k
    )


# ---------------------------------------------------------------- settings and database
_SOURCE_FIELDS = {
    "lease_seconds", "max_attempts", "http_timeout_s", "max_download_bytes", "max_image_pixels", "allow_private_hosts",
}


def settings(**overrides: Any) -> Settings:
    """Settings from the environment, with the non-None overrides (flow parameters, CLI flags) on top."""
    values = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**values)


def settings_json(s: Settings) -> dict[str, Any]:
    """The part of Settings a task needs to read images (no secrets, JSON-ready)."""
    return s.model_dump(include=_SOURCE_FIELDS, mode="json")


_engines: dict[str, Any] = {}
_engine_lock = threading.Lock()


def db_engine(database_url: str) -> Any:
    """The process's SQLAlchemy Engine (connection pool) for this URL, created once."""
    engine = _engines.get(database_url)
    if engine is None:
        with _engine_lock:
            engine = _engines.get(database_url)
            if engine is None:
                from integrations.db.session import make_engine

                engine = _engines[database_url] = make_engine(database_url)
    return engine


def dispose_engines() -> None:
    with _engine_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@contextmanager
def session(database_url: str) -> Iterator[Any]:
    """A SQLAlchemy Session on the process-wide engine for this URL; rolled back on error."""
    from integrations.db.session import session_scope

    with session_scope(db_engine(database_url)) as s:
        yield s


# ---------------------------------------------------------------- thin adapters over the integrations
# Each is one call into the data layer or the Label Studio client; they live here so
# that the flows read as orchestration only.
def display_url(url: str) -> str:
    from integrations.db.session import display_url as _display

    return _display(url)


def source_uris(source: str, limit: int | None = None) -> list[str]:
    """The image URIs a source names: a folder (recursive), a glob, a text file of URIs, or one URI."""
    from integrations.ingest import expand_source

    uris = expand_source(source)
    return uris[:limit] if limit is not None else uris


def register_images(session: Any, uris: list[str], s: Settings, hash_content: bool = False) -> dict[str, int]:
    """Register URIs as waiting, idempotently, in one transaction; with `hash_content` each image is
    read, hashed and decode-checked first (8 threads), an unreadable one recorded with its reason."""
    from integrations.ingest import ingest_uris

    result = ingest_uris(session, uris, s, lazy=not hash_content, jobs=8, chunk=len(uris))
    counts = result.counts()
    return {"registered": counts["new"], "already_known": counts["known"], "unreadable": counts["unreadable"]}


def ensure_schema(database_url: str, upgrade: bool | None = None) -> Any:
    """Create or upgrade the schema (automatic on SQLite; on PostgreSQL only with upgrade=True)."""
    from integrations.db.schema import ensure_schema as _ensure

    return _ensure(database_url, upgrade=upgrade)


def counts_by_status(session: Any) -> dict[str, int]:
    """Images per status, every status present (zeros included)."""
    from integrations.db import stats

    return stats.counts_by_status(session)
