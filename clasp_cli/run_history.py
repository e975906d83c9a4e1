"""Where `clasp run` keeps its run history, and the one line that says so.

- A Prefect server is configured (PREFECT_API_URL in the environment, or in the
  active Prefect profile): the flow runs report to it, and the line links the
  run's page there.
- None is configured: a temporary local server the first flow starts, its
  history in PREFECT_HOME (default `.clasp/prefect` in the working directory);
  the line says how to open it.

The profile is read from its TOML file rather than through Prefect, because
Prefect fixes its settings when imported, and `clasp run` must decide on
PREFECT_HOME before that.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path


def _profiles_path() -> Path:
    if os.environ.get("PREFECT_PROFILES_PATH"):
        return Path(os.environ["PREFECT_PROFILES_PATH"]).expanduser()
    home = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    return home / "profiles.toml"


def configured_api_url() -> str | None:
    """PREFECT_API_URL from the environment, else from the active Prefect profile; None when neither sets it."""
    url = os.environ.get("PREFECT_API_URL", "").strip()
    if url:
        return url
    path = _profiles_path()
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
    value = (profiles.get("profiles", {}).get(active) or {}).get("PREFECT_API_URL")
    return str(value).strip() or None if value else None


def ui_url(api_url: str) -> str:
    """The UI root of a Prefect server from its API URL (`http://host:4200/api` -> `http://host:4200`)."""
    url = api_url.rstrip("/")
    return url[: -len("/api")] if url.endswith("/api") else url


def history_line(flow_run_id: str | None, api_url: str | None = None, prefect_home: str | None = None) -> str:
    """One line: where this run's history went and how to look at it."""
    api_url = api_url if api_url is not None else configured_api_url()
    if api_url:
        page = f"{ui_url(api_url)}/runs/flow-run/{flow_run_id}" if flow_run_id else ui_url(api_url)
        return f"run history   Prefect server {api_url}: {page}"
    home = prefect_home or os.environ.get("PREFECT_HOME") or "~/.prefect"
    return (f"run history   local (no PREFECT_API_URL set): PREFECT_HOME={home}; to browse it: "
            f"PREFECT_HOME={home} prefect server start, then http://127.0.0.1:4200/runs/flow-run/{flow_run_id}")
