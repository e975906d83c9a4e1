"""`clasp run` keeps its history where the user looks, and says where in one line.

With PREFECT_API_URL set it reports to that server (tests/test_flows_secrets.py
runs it against a real one and checks the line links the run there). Here: the
profile is honoured as well as the environment, and without any server the
local history is the default, its place named.
"""

from __future__ import annotations

import re

import pytest

from clasp_cli.run_history import configured_api_url, history_line, ui_url
from prefect_server import clasp, quiet_env


def test_api_url_from_environment_then_profile(tmp_path, monkeypatch):
    for key in ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    assert configured_api_url() is None  # no profile file at all
    (tmp_path / "profiles.toml").write_text(
        'active = "team"\n[profiles.team]\nPREFECT_API_URL = "http://prefect.internal:4200/api"\n[profiles.local]\n'
    )
    assert configured_api_url() == "http://prefect.internal:4200/api"
    monkeypatch.setenv("PREFECT_PROFILE", "local")
    assert configured_api_url() is None
    monkeypatch.setenv("PREFECT_API_URL", "http://10.0.0.5:4200/api")
    assert configured_api_url() == "http://10.0.0.5:4200/api"
    assert ui_url("http://10.0.0.5:4200/api/") == "http://10.0.0.5:4200"


def test_history_line_names_the_server_page_or_the_local_home():
    line = history_line("abc", api_url="http://10.0.0.5:4200/api")
    assert line == "run history   Prefect server http://10.0.0.5:4200/api: http://10.0.0.5:4200/runs/flow-run/abc"
    local = history_line("abc", api_url="", prefect_home="/w/.clasp/prefect")
    assert "local" in local and "PREFECT_HOME=/w/.clasp/prefect prefect server start" in local and "\n" not in local


@pytest.mark.slow
def test_clasp_run_without_a_server_keeps_history_locally_and_says_where(shared_data, tmp_path):
    images = sorted(p for p in shared_data.glob("bsds500/images/*") if p.suffix.lower() in (".jpg", ".png"))[:2]
    src = tmp_path / "uris.txt"
    src.write_text("".join(f"{p}\n" for p in images))
    env = quiet_env(HOME=str(tmp_path), CLASP_DATABASE_URL=f"sqlite:///{tmp_path / 'clasp.db'}")
    proc = clasp(["run", str(src), "--no-review", "--backbone", "classic", "--variant", "patch", "--max-side", "128"],
                 env, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    history = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip().startswith("run history")]
    home = tmp_path / ".clasp" / "prefect"
    assert len(history) == 1 and "local (no PREFECT_API_URL set)" in history[0], proc.stdout
    assert f"PREFECT_HOME={home}" in history[0]
    assert re.search(r"/runs/flow-run/[0-9a-f-]{36}", history[0])
    assert (home / "prefect.db").exists()  # the temporary server kept the history there
