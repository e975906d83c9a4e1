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
