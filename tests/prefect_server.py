"""A real Prefect server for dashboard tests: `prefect server start` on a free loopback port.

Its history (SQLite) lives in a tmp PREFECT_HOME; flows run in subprocesses
with PREFECT_API_URL pointing at it, as deployed workers and `clasp run` do.
The helpers read back what the dashboard shows: flow runs and their
parameters, task runs, logs and artifacts.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quiet_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


class PrefectServer:
    """`prefect server start` in its own process group; `url` is the UI, `api` the API root."""

    def __init__(self, home: Path):
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = f"{self.url}/api"
        self.log = home / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> "PrefectServer":
        self.home.mkdir(parents=True, exist_ok=True)
        # PREFECT_UI_API_URL: the UI's JavaScript calls this API (its default is port 4200).
        env = quiet_env(PREFECT_HOME=str(self.home), PREFECT_UI_API_URL=self.api)
        self.proc = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.api}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"prefect server not healthy after {timeout} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)

    def env(self, **extra: str) -> dict[str, str]:
        """Environment of a process that reports to this server."""
        return quiet_env(PREFECT_API_URL=self.api, **extra)

    # ------------------------------------------------------------ reading back
    def post(self, path: str, body: dict | None = None) -> list | dict:
        r = httpx.post(f"{self.api}{path}", json=body or {}, timeout=30)
        r.raise_for_status()
        return r.json()

    def flow_runs(self, **flow_run_filter) -> list[dict]:
        body = {"limit": 200}
        if flow_run_filter:
            body["flow_runs"] = flow_run_filter
        return self.post("/flow_runs/filter", body)

    def flow_runs_named(self, flow_name: str) -> list[dict]:
        return self.post("/flow_runs/filter", {"flows": {"name": {"any_": [flow_name]}}, "limit": 200})

    def task_runs(self, flow_run_id: str) -> list[dict]:
        return self.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200})

    def logs(self, flow_run_id: str | None = None) -> list[dict]:
        body: dict = {"limit": 200, "sort": "TIMESTAMP_ASC"}
        if flow_run_id:
            body["logs"] = {"flow_run_id": {"any_": [flow_run_id]}}
        out, offset = [], 0
        while True:
            page = self.post("/logs/filter", {**body, "offset": offset})
            out += page
            if len(page) < 200:
                return out
            offset += 200

    def artifacts(self, flow_run_id: str | None = None) -> list[dict]:
        body: dict = {"limit": 200}
        if flow_run_id:
            body["artifacts"] = {"flow_run_id": {"any_": [flow_run_id]}}
        return self.post("/artifacts/filter", body)


def run_python(server: PrefectServer, script: str, *args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """Run a Python script in a subprocess that reports to `server`."""
    return subprocess.run(
        [sys.executable, "-c", script, *args], env=server.env(**env), cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=timeout,
    )


def clasp(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """`clasp ARGS` (python -m clasp_cli.main) in a subprocess."""
    return subprocess.run([sys.executable, "-m", "clasp_cli.main", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
