"""What a worker process keeps between flow runs: one Segmenter per engine configuration, one
database engine per URL, and the lock that lets one batch at a time onto the accelerator.

The model is loaded once and reused by every batch and every flow run in the process. Both
caches are guarded by locks because two flow runs can share a process (tests, `flow.serve`,
a thread-pool task runner).
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

_segmenters: dict[tuple[str, str | None], Any] = {}
_segmenter_lock = threading.Lock()
# The cached Segmenter is shared by the flow runs of a process: one batch through it at a time.
# (How many batches run on a GPU across workers is Prefect's global limit: flows/gpu_slots.py.)
accelerator_lock = threading.Lock()

_engines: dict[str, Any] = {}
_engine_lock = threading.Lock()


def get_segmenter(config: SegmenterConfig) -> Any:
    """The process's Segmenter for this configuration, built (and its model loaded) once."""
    key = (config.fingerprint(), config.weights_dir)
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
