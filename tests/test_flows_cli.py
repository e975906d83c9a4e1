"""`clasp run --samples` and `clasp status` as a user runs them: a subprocess in an empty folder.

No Prefect server to start and no PREFECT_API_URL: the command starts its own
local backend (history under ./.clasp/prefect), uses ./clasp.db, writes overlays.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

CLASP = [sys.executable, "-m", "clasp_cli.main"]
REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CLASP_", "LABEL_STUDIO_"))}
    env["PYTHONPATH"] = str(REPO)
    return env


def test_clasp_run_samples_then_status(tmp_path):
    run = subprocess.run(
        [*CLASP, "run", "--samples", "--backbone", "classic", "--variant", "pixel", "--max-side", "160"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=420,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert "segmented     3" in out
    assert "Label Studio  not used" in out
    assert "clasp.db" in out and "overlays" in out
    assert len(list((tmp_path / "clasp-output" / "overlays").glob("*.jpg"))) == 3
    assert (tmp_path / ".clasp" / "prefect").is_dir()  # Prefect's local history stays in the project folder
    # its own temporary server: no GPU limit on it (nobody else could see it), so no slot round trips
    import sqlite3

    with sqlite3.connect(tmp_path / ".clasp" / "prefect" / "prefect.db") as db:
        assert db.execute("select name from concurrency_limit_v2").fetchall() == []
    assert "Failed to send telemetry" not in run.stdout + run.stderr

    status = subprocess.run([*CLASP, "status", "--json"], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                            timeout=120)
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["images"]["segmented"] == 3 and data["images"]["waiting"] == 0
    assert data["runs"] and data["runs"][0]["status"] == "finished" and data["runs"][0]["segmented"] == 3

    text = subprocess.run([*CLASP, "status"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and "segmented" in text.stdout and "latest runs" in text.stdout


def test_clasp_run_needs_a_source(tmp_path):
    r = subprocess.run([*CLASP, "run"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "SOURCE" in r.stderr


def test_clasp_status_on_an_empty_folder(tmp_path):
    r = subprocess.run([*CLASP, "status", "--json"], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["images"] == {}


# --- `clasp run --label-studio-demo` (what `make demo` runs) ---
# The command would start the demo server in .clasp/label-studio; here `start_demo` is
# replaced (in the subprocess) by one that points at the session's test server, or fails.

_DEMO_WRAPPER = """
import os, sys
from pathlib import Path
from integrations.label_studio import server

def fake_start_demo(**kw):
    if os.environ.get("T_LS_FAIL"):
        raise server.ServerError("installing Label Studio into .venv-label-studio failed (exit 1): no registry")
    srv = server.LocalLabelStudio(Path(os.environ["T_LS_DATA"]), port=int(os.environ["T_LS_PORT"]))
    os.environ.update(srv.env())
    return srv.credentials()

server.start_demo = fake_start_demo
from clasp_cli.main import main
sys.exit(main(sys.argv[1:]))
"""
_DEMO_ARGS = ["run", "--samples", "--label-studio-demo", "--backbone", "classic", "--variant", "pixel",
              "--max-side", "160", "--project", "CLASP demo (test)"]


@pytest.mark.label_studio
def test_label_studio_demo_pushes_and_prints_the_login(tmp_path, label_studio_server):
    env = {**_env(), "T_LS_DATA": str(label_studio_server.data_dir), "T_LS_PORT": str(label_studio_server.port)}
    run = subprocess.run([sys.executable, "-c", _DEMO_WRAPPER, *_DEMO_ARGS], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=420)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    creds = label_studio_server.credentials()
    out = run.stdout
    assert "segmented     3" in out and "(3 pushed)" in out
    assert f"open         {creds.url}/projects/" in out
    assert f"login        {creds.username}" in out and f"password     {creds.password}" in out
    assert "clasp label-studio stop" in out
    assert creds.token() not in run.stdout + run.stderr


def test_label_studio_demo_that_cannot_start_still_segments(tmp_path):
    env = {**_env(), "T_LS_FAIL": "1"}
    run = subprocess.run([sys.executable, "-c", _DEMO_WRAPPER, *_DEMO_ARGS], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=420)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "segmented     3" in run.stdout
    assert "NOT STARTED, nothing pushed for review" in run.stdout and "no registry" in run.stdout
    assert "WARNING: nothing was pushed for review" in run.stderr
    assert "password" not in run.stdout
