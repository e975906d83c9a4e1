"""Helpers shared by the flow and deployment tests (imported by tests/test_flows_*.py, test_deployment.py).

- one Prefect test harness per test process (a temporary API server on SQLite),
  started by the first test that needs it, with flow heartbeats off;
- databases: a SQLite file in tmp, or a PostgreSQL database created for the test
  and dropped afterwards (on CLASP_TEST_PG_SERVER's server, see conftest_db);
- a fast engine configuration (classic backbone, patch variant, small images).
"""

from __future__ import annotations

import atexit
import contextlib
import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

FAST = dict(backbone="classic", variant="patch", max_side=128)

_harness: contextlib.ExitStack | None = None


def ensure_harness(request=None) -> None:
    """Start Prefect's test harness once for this test session (stopped when the session ends)."""
    global _harness
    if _harness is not None:
        return
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    stack = contextlib.ExitStack()
    stack.enter_context(prefect_test_harness(server_startup_timeout=60))
    stack.enter_context(temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}))
    _harness = stack
    if request is not None:
        # Stop it at the end of the session, while pytest's output capture still works.
        request.session.addfinalizer(stop_harness)
    else:
        atexit.register(stop_harness)


def stop_harness() -> None:
    global _harness
    stack, _harness = _harness, None
    if stack is not None:
        stack.close()


def api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


def postgres_available() -> bool:
    from conftest_db import pg_unavailable_reason

    return pg_unavailable_reason() is None


@contextlib.contextmanager
def postgres_database():
    """A fresh PostgreSQL database (URL yielded), dropped at the end (conftest_db's helpers)."""
    from conftest_db import create_pg_database, drop_pg_database

    url = create_pg_database()
    try:
        yield url
    finally:
        from flows import resources

        resources.dispose_engines()
        drop_pg_database(url)


@contextlib.contextmanager
def database(kind: str, tmp_path: Path):
    """A migrated, empty database of `kind` ("sqlite" or "postgres")."""
    from flows import resources
    from integrations.db.schema import ensure_schema

    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'clasp.db'}"
        ensure_schema(url)
        try:
            yield url
        finally:
            resources.dispose_engines()
        return
    if not postgres_available():
        pytest.skip("needs PostgreSQL on 127.0.0.1:5432 (trust auth)")
    with postgres_database() as url:
        ensure_schema(url, upgrade=True)
        yield url


def shared_images(shared_data: Path, limit: int | None = None) -> list[Path]:
    paths = sorted(p for p in shared_data.glob("*/images/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return paths[:limit] if limit is not None else paths


REPO_ROOT = Path(__file__).resolve().parents[1]

# A segment worker in its own process: loads the model, says it is ready, waits
# for the start signal, runs one `segment` flow and prints its summary as JSON.
WORKER_SCRIPT = r"""
import json, sys, time
from pathlib import Path
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from flows import resources
from flows.segment import segment
from integrations.settings import load_settings

url, ready, go, batch_size = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
# pixel variant (DenseCRF): enough work per image that both workers are still
# claiming when the slower one's flow run has started
fast = dict(backbone="classic", variant="pixel", max_side=160)
resources.get_segmenter(load_settings(device="auto", **fast).engine_config())  # the model, loaded once
ready.touch()
while not go.exists():
    time.sleep(0.02)
with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
    result = segment(database_url=url, batch_size=batch_size, overlays=False, **fast)
print("RESULT " + json.dumps(result, default=str))
"""


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PREFECT_API_URL"] = api_url()
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("DO_NOT_TRACK", "1")
    return env


# --- fixtures for the flow tests (import them by name: `from flows_support import db_url, harness`) ---
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="module", autouse=True)
def harness(request):
    """The Prefect test harness, once per module."""
    ensure_harness(request)


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path):
    """A fresh, migrated database URL: SQLite, then PostgreSQL."""
    with database(request.param, tmp_path) as url:
        yield url
