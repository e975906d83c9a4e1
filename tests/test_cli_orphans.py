"""`clasp run` killed with kill -9 (issue 13.6): its temporary Prefect server does not outlive it,
and the next `clasp status` closes its run as `abandoned` with its claims back in the queue."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import flows_support as fs
from clasp_cli.main import main as clasp
from clasp_cli.temporary_server import SERVER_MARK

pytestmark = [pytest.mark.slow]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _running_runs(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            return conn.execute("SELECT COUNT(*) FROM segmentation_runs WHERE status = 'running'").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.timeout(300)
def test_killed_clasp_run_leaves_no_server_and_its_run_is_closed(shared_data, tmp_path, capsys):
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(str(p) for p in fs.shared_images(shared_data, limit=40)))
    db = tmp_path / "clasp.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), CLASP_DATABASE_URL=f"sqlite:///{db}",
               PYTHONPATH=str(fs.REPO_ROOT), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    cmd = [sys.executable, "-m", "clasp_cli.main", "run", str(listing), "--backbone", "classic", "--variant", "pixel",
           "--max-side", "160", "--batch-size", "2", "--no-review", "--no-overlays", "--quiet"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    try:
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline and proc.poll() is None:
            servers = [p for p in _children(proc.pid) if SERVER_MARK in _cmdline(p)]
            if servers and _running_runs(db):
                server = servers[0]
                break
            time.sleep(0.2)
        assert server is not None, f"clasp run never got to segmenting (exit code {proc.poll()})"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and SERVER_MARK in _cmdline(server):
            time.sleep(0.2)
        orphan = SERVER_MARK in _cmdline(server)
    finally:
        if proc.poll() is None:
            proc.kill()
        if server is not None and SERVER_MARK in _cmdline(server):
            os.kill(server, signal.SIGKILL)
    print(f"\nkill -9 of clasp run {proc.pid}: its Prefect server {server} "
          f"{'is still running (orphan)' if orphan else 'is gone'}")
    assert not orphan, f"the temporary Prefect server {server} outlived clasp run"
    capsys.readouterr()

    assert clasp(["status", "--json", "--database-url", f"sqlite:///{db}"]) == 0
    data = json.loads(capsys.readouterr().out)
    run = data["runs"][0]
    assert run["status"] == "abandoned" and data["abandoned_runs_closed"] == [run["id"]]
    assert data["images"]["claimed"] == 0  # the dead run's claims are back in the queue
    assert clasp(["status", "--json", "--database-url", f"sqlite:///{db}"]) == 0
    assert json.loads(capsys.readouterr().out)["abandoned_runs_closed"] == []  # closed once
