"""A local Label Studio server for the demo and the tests: own venv, loopback, SQLite.

Label Studio cannot share the project's venv (it pins python-json-logger, redis and
pytz versions that break prefect), so it is installed into `.venv-label-studio`
(`pip install label-studio`, ~70 s once). The server binds 127.0.0.1 only, keeps its
SQLite database and media in a data dir, and gets a generated 40-hex legacy API token
(`LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true` must be set at the first start). The
token and the login are written to files with mode 0600 in the data dir; they are
never printed by this module except where the caller asks (`clasp label-studio start`
prints the login for the demo, not the token).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPO_ROOT / ".venv-label-studio"
DEFAULT_DATA_DIR = REPO_ROOT / ".clasp" / "label-studio"
DEFAULT_PORT = 8080
DEFAULT_USERNAME = "reviewer@clasp.local"
LABEL_STUDIO_REQUIREMENT = "label-studio>=1.20,<2"


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def ensure_venv(venv: Path = DEFAULT_VENV, *, python: str | None = None, quiet: bool = True) -> Path:
    """The `label-studio` executable in `venv`, installing it there first if missing."""
    exe = venv / "bin" / "label-studio"
    if exe.exists():
        return exe
    py = python or _python311()
    if not (venv / "bin" / "python").exists():
        subprocess.run([py, "-m", "venv", str(venv)], check=True)
    cmd = [str(venv / "bin" / "python"), "-m", "pip", "install", LABEL_STUDIO_REQUIREMENT]
    if quiet:
        cmd.insert(4, "-q")
    res = subprocess.run(cmd, capture_output=quiet, text=True)
    if res.returncode != 0 or not exe.exists():
        tail = (res.stderr or "")[-2000:] if quiet else ""
        raise ServerError(f"installing Label Studio into {venv} failed (exit {res.returncode}): {tail}")
    return exe


def _python311() -> str:
    for name in ("python3.11", "python3.12", "python3"):
        for d in os.environ.get("PATH", "").split(os.pathsep):
            p = Path(d) / name
            if p.exists():
                return str(p)
    return sys.executable


@dataclass
class Credentials:
    url: str
    username: str
    password: str
    token_file: Path

    def token(self) -> str:
        return self.token_file.read_text().strip()

    def __repr__(self) -> str:  # never show the password or the token
        return f"Credentials(url={self.url!r}, username={self.username!r}, password='**********', token_file={str(self.token_file)!r})"


class LocalLabelStudio:
    """Start / stop / inspect one Label Studio process with its state in `data_dir`."""

    def __init__(
        self,
        data_dir: Path = DEFAULT_DATA_DIR,
        *,
        port: int | None = None,
        venv: Path = DEFAULT_VENV,
        username: str = DEFAULT_USERNAME,
        document_root: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.venv = Path(venv)
        self.username = username
        self.document_root = Path(document_root).resolve() if document_root else None
        self._port = port
        self._proc: subprocess.Popen | None = None

    # --- files in the data dir ---
    @property
    def state_file(self) -> Path:
        return self.data_dir / "clasp-server.json"

    @property
    def token_file(self) -> Path:
        return self.data_dir / "api-token"

    @property
    def password_file(self) -> Path:
        return self.data_dir / "password"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    def _state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    @property
    def port(self) -> int:
        if self._port is None:
            self._port = int(self._state().get("port") or DEFAULT_PORT)
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def credentials(self) -> Credentials:
        return Credentials(self.url, self.username, self.password_file.read_text().strip(), self.token_file)

    def _secret(self, path: Path, make) -> str:
        if path.exists():
            return path.read_text().strip()
        value = make()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value)
        return value

    # --- life cycle ---
    def healthy(self, timeout: float = 2.0) -> bool:
        try:
            r = httpx.get(f"{self.url}/health", timeout=timeout)
            return r.status_code == 200 and "UP" in r.text
        except httpx.HTTPError:
            return False

    def pid(self) -> int | None:
        pid = self._state().get("pid")
        if not pid:
            return None
        try:
            os.kill(pid, 0)
        except OSError:
            return None
        return pid

    def start(self, *, timeout: float = 120.0, install: bool = True) -> Credentials:
        """Start the server (installing it if needed) and wait until /health says UP."""
        if self.pid() and self.healthy():
            return self.credentials()
        exe = ensure_venv(self.venv) if install else self.venv / "bin" / "label-studio"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._port is None:
            self._port = int(self._state().get("port") or 0) or (DEFAULT_PORT if not port_in_use(DEFAULT_PORT) else free_port())
        if port_in_use(self.port):
            # Label Studio silently moves to the next free port; refuse instead.
            raise ServerError(f"port {self.port} on 127.0.0.1 is already in use")
        token = self._secret(self.token_file, lambda: secrets.token_hex(20))
        password = self._secret(self.password_file, lambda: secrets.token_urlsafe(12))
        env = dict(os.environ)
        for k in list(env):  # do not leak the project's settings into the server
            if k.startswith(("LABEL_STUDIO_", "DJANGO_", "VIRTUAL_ENV", "PYTHON")):
                env.pop(k)
        env.update(
            LABEL_STUDIO_BASE_DATA_DIR=str(self.data_dir),
            DJANGO_DB="sqlite",
            LABEL_STUDIO_USERNAME=self.username,
            LABEL_STUDIO_PASSWORD=password,
            LABEL_STUDIO_USER_TOKEN=token,
            LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
            LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
            SENTRY_DSN="",
            FRONTEND_SENTRY_DSN="",
            COLLECT_ANALYTICS="false",
            LATEST_VERSION_CHECK="false",
            # let Label Studio call an ML backend on loopback (`clasp label-studio backend`):
            # 1.23 refuses reserved addresses with 403 unless both are off; the server binds 127.0.0.1 only
            ML_BLOCK_LOCAL_IP="false",
            SSRF_PROTECTION_ENABLED="false",
            PATH=f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        )
        if self.document_root:
            env.update(
                LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
                LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(self.document_root),
            )
        log = open(self.log_file, "ab")
        self._proc = subprocess.Popen(
            [str(exe), "start", "--internal-host", "127.0.0.1", "--port", str(self.port), "--no-browser"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() ends it and its children
        )
        log.close()
        self.state_file.write_text(
            json.dumps({"pid": self._proc.pid, "port": self.port, "url": self.url,
                        "document_root": str(self.document_root) if self.document_root else None})
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerError(f"Label Studio exited with {self._proc.returncode}; see {self.log_file}")
            if self.healthy():
                return self.credentials()
            time.sleep(0.5)
        self.stop()
        raise ServerError(f"Label Studio did not become healthy on {self.url} within {timeout:.0f}s; see {self.log_file}")

    def stop(self, timeout: float = 20.0) -> bool:
        """Stop the server started from this data dir. True if one was running."""
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.killpg(pid, signal.SIGTERM)  # the group we created at start
        except OSError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                break
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.2)
        else:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        state = self._state()
        state["pid"] = None
        self.state_file.write_text(json.dumps(state))
        # wait until the port is free again, so a restart can bind it
        deadline = time.monotonic() + 10
        while port_in_use(self.port) and time.monotonic() < deadline:
            time.sleep(0.2)
        return True

    def env(self) -> dict[str, str]:
        """Environment for the project's side: where the server is, the token file, the local-files root."""
        out = {"LABEL_STUDIO_URL": self.url, "LABEL_STUDIO_API_KEY_FILE": str(self.token_file)}
        root = self.document_root or (self._state().get("document_root") and Path(self._state()["document_root"]))
        if root:
            out["CLASP_LABEL_STUDIO_DOCUMENT_ROOT"] = str(root)
        return out

    def status(self) -> dict:
        return {"url": self.url, "pid": self.pid(), "healthy": self.healthy(), "data_dir": str(self.data_dir),
                "venv": str(self.venv), "username": self.username, "token_file": str(self.token_file)}


def start_demo(*, port: int | None = None, document_root: Path | None = None, timeout: float = 180.0) -> Credentials:
    """Start (or reuse) the demo server in `.clasp/label-studio` and point this process at it.

    Sets LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY_FILE and CLASP_LABEL_STUDIO_DOCUMENT_ROOT in
    `os.environ` (and drops a LABEL_STUDIO_API_KEY meant for another server), so that
    `Settings()` and `ImageResolver.from_env()` find it. Returns the login to print.
    """
    server = LocalLabelStudio(DEFAULT_DATA_DIR, port=port, document_root=document_root or REPO_ROOT)
    creds = server.start(timeout=timeout)
    os.environ.pop("LABEL_STUDIO_API_KEY", None)
    os.environ.pop("CLASP_LABEL_STUDIO_API_KEY", None)
    os.environ.update(server.env())
    return creds
