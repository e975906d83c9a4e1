"""No secret on the dashboard: a PostgreSQL password appears in no flow run parameter, log or artifact.

`clasp run` reports to a real Prefect server (PREFECT_API_URL) with
CLASP_DATABASE_URL carrying a password (a role created for the test; the
server trusts local connections, so the password is never checked, only
carried). Everything the dashboard can show is read back from the API:
flow runs (parameters, state messages), task runs, logs, artifacts.
"""

from __future__ import annotations

import json
import re

import pytest

from prefect_server import PrefectServer, clasp

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

PASSWORD = "s3cret"
ROLE = "clasp_secret_user"
FAST = ["--backbone", "classic", "--variant", "patch", "--max-side", "128"]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    server = PrefectServer(tmp_path_factory.mktemp("prefect-home")).start()
    yield server
    server.stop()


@pytest.fixture
def secret_database_url():
    """A fresh database owned by a role with a password; the URL carries the password."""
    from conftest_db import create_pg_database, drop_pg_database, pg_admin_conninfo, pg_unavailable_reason
    import psycopg
    from sqlalchemy.engine import make_url

    if pg_unavailable_reason() is not None:
        pytest.skip("needs PostgreSQL on 127.0.0.1:5432 (trust auth)")
    admin_url = create_pg_database()
    name = make_url(admin_url).database
    with psycopg.connect(pg_admin_conninfo(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone()
        if not exists:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
        conn.execute(f'ALTER DATABASE "{name}" OWNER TO {ROLE}')
    admin = make_url(admin_url)
    with psycopg.connect(f"host={admin.host} port={admin.port or 5432} dbname={name} user={admin.username}",
                         autocommit=True) as conn:
        conn.execute(f"GRANT ALL ON SCHEMA public TO {ROLE}")
    url = f"postgresql://{ROLE}:{PASSWORD}@{admin.host}:{admin.port or 5432}/{name}"
    from flows import resources
    from integrations.db import ensure_schema

    ensure_schema(url, upgrade=True)  # migrated as the role, like an operator would
    resources.dispose_engines()
    try:
        yield url
    finally:
        drop_pg_database(admin_url)


def test_password_is_in_no_parameter_log_or_artifact(prefect_server, secret_database_url, shared_data, tmp_path):
    images = sorted(p for p in shared_data.glob("bsds500/images/*") if p.suffix.lower() in (".jpg", ".png"))[:3]
    src = tmp_path / "uris.txt"
    src.write_text("".join(f"{p}\n" for p in images))
    env = prefect_server.env(CLASP_DATABASE_URL=secret_database_url)
    proc = clasp(["run", str(src), "--batch-size", "2", "--no-review", *FAST], env, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert PASSWORD not in proc.stdout and PASSWORD not in proc.stderr
    # the run history went to the configured server, and the command says so in one line linking the run
    history = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip().startswith("run history")]
    assert len(history) == 1, proc.stdout
    m = re.search(rf"{re.escape(prefect_server.url)}/runs/flow-run/([0-9a-f-]{{36}})", history[0])
    assert m and prefect_server.api in history[0], history[0]
    parent = prefect_server.flow_runs(id={"any_": [m.group(1)]})
    assert parent and parent[0]["state_type"] == "COMPLETED"

    runs = prefect_server.flow_runs()
    names = {r["name"]: r for r in runs}
    flows = {prefect_server.post(f"/flows/filter", {"flow_runs": {"id": {"any_": [r["id"]]}}})[0]["name"] for r in runs}
    assert {"moderation_pipeline", "ingest", "segment"} <= flows, flows
    seen = {"parameters": [r["parameters"] for r in runs], "states": [r.get("state") for r in runs]}
    seen["task_runs"] = [prefect_server.task_runs(r["id"]) for r in runs]
    seen["logs"] = prefect_server.logs()
    seen["artifacts"] = prefect_server.artifacts()
    assert len(seen["logs"]) > 5 and len(seen["artifacts"]) >= 3 and any(seen["task_runs"]), names
    for what, value in seen.items():
        text = json.dumps(value, default=str)
        assert PASSWORD not in text, f"the database password is shown on the dashboard in {what}"
    # the parent run's summary names the database, password masked
    summary = [a for a in seen["artifacts"] if a.get("key") == "moderation-pipeline"]
    assert summary and f"{ROLE}:***@" in summary[0]["data"]
