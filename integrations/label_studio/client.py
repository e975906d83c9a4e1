"""A small Label Studio REST client (httpx): projects, storages, bulk import, export.

- Transient failures (connection errors, timeouts, HTTP 5xx, 429) are retried with
  exponential backoff; after the last try `LabelStudioUnavailable` is raised.
- 401/403 raise `LabelStudioAuthError`, naming the token setting (LABEL_STUDIO_API_KEY).
- A response that is not the JSON we expect raises `LabelStudioResponseError` with an
  excerpt of the body.
- The token lives in a `SecretStr`; it never appears in `repr`, messages or logs
  (excerpts are scrubbed, just in case a server echoes it).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Iterable

import httpx
from pydantic import SecretStr

log = logging.getLogger(__name__)

TOKEN_SETTING = "LABEL_STUDIO_API_KEY (or LABEL_STUDIO_API_KEY_FILE)"
EXCERPT_CHARS = 300


class LabelStudioError(RuntimeError):
    """Base class of everything this client raises."""


class LabelStudioUnavailable(LabelStudioError):
    """Label Studio could not be reached or kept failing (5xx) after all retries."""


class LabelStudioAuthError(LabelStudioError):
    """401/403: the token is missing, wrong or lacks permission."""


class LabelStudioResponseError(LabelStudioError):
    """Label Studio answered something we cannot use (non-JSON, unexpected shape, 4xx)."""

    def __init__(self, message: str, status: int | None = None, excerpt: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.excerpt = excerpt


@dataclass(frozen=True)
class Project:
    id: int
    title: str
    label_config: str


def _is_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


class LabelStudioClient:
    def __init__(
        self,
        url: str,
        token: SecretStr | str | None,
        *,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url:
            raise LabelStudioError("Label Studio URL is not set (LABEL_STUDIO_URL)")
        if token is None or (isinstance(token, SecretStr) and not token.get_secret_value()) or token == "":
            raise LabelStudioAuthError(f"no Label Studio API token: set {TOKEN_SETTING}")
        self.url = url.rstrip("/")
        self._token = token if isinstance(token, SecretStr) else SecretStr(token)
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport, follow_redirects=False)
        self._auth_header: str | None = None

    @classmethod
    def from_settings(cls, settings=None, **kw) -> "LabelStudioClient":
        from integrations.settings import Settings

        s = settings or Settings()
        return cls(s.label_studio_url, s.label_studio_token(), **kw)

    def __repr__(self) -> str:
        return f"LabelStudioClient(url={self.url!r}, token='**********')"

    __str__ = __repr__

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "LabelStudioClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- plumbing ---
    def _scrub(self, text: str) -> str:
        secret = self._token.get_secret_value()
        if secret and secret in text:
            text = text.replace(secret, "**********")
        return text

    def _excerpt(self, resp: httpx.Response) -> str:
        try:
            text = resp.text
        except Exception:  # noqa: BLE001
            text = repr(resp.content[:EXCERPT_CHARS])
        text = self._scrub(" ".join(text.split()))
        return text[:EXCERPT_CHARS] + ("…" if len(text) > EXCERPT_CHARS else "")

    def _authorization(self) -> str:
        if self._auth_header is None:
            token = self._token.get_secret_value()
            if _is_jwt(token):
                # a personal access token is a refresh token: trade it for an access token
                resp = self._send("POST", "/api/token/refresh", json={"refresh": token}, auth=False)
                access = self._json(resp, "POST /api/token/refresh").get("access") if resp.status_code == 200 else None
                if not access:
                    raise LabelStudioAuthError(
                        f"Label Studio refused the personal access token (HTTP {resp.status_code}) at {self.url}: "
                        f"check {TOKEN_SETTING}"
                    )
                self._auth_header = f"Bearer {access}"
            else:
                self._auth_header = f"Token {token}"
        return self._auth_header

    def _sleep(self, attempt: int) -> None:
        delay = min(self.max_backoff, self.backoff * (2**attempt))
        time.sleep(delay * (0.75 + 0.5 * random.random()))

    def _send(self, method: str, path: str, *, auth: bool = True, retry: bool = True, **kw) -> httpx.Response:
        headers = dict(kw.pop("headers", {}) or {})
        if auth:
            headers["Authorization"] = self._authorization()
        tries = self.retries + 1 if retry else 1
        last: str = ""
        for attempt in range(tries):
            try:
                resp = self._http.request(method, path, headers=headers, **kw)
            except httpx.TransportError as e:  # connect refused, timeouts, reset ...
                last = f"{type(e).__name__}: {self._scrub(str(e))}"
            else:
                if resp.status_code < 500 and resp.status_code != 429:
                    return resp
                last = f"HTTP {resp.status_code}: {self._excerpt(resp)}"
            if attempt < tries - 1:
                log.warning("Label Studio %s %s failed (%s); retry %d/%d", method, path, last, attempt + 1, tries - 1)
                self._sleep(attempt)
        raise LabelStudioUnavailable(
            f"Label Studio at {self.url} is unavailable: {method} {path} failed {tries} time(s); last error: {last}"
        )

    def _json(self, resp: httpx.Response, what: str) -> Any:
        try:
            return resp.json()
        except ValueError:
            raise LabelStudioResponseError(
                f"Label Studio returned a malformed response to {what} (HTTP {resp.status_code}, "
                f"content-type {resp.headers.get('content-type')!r}): {self._excerpt(resp)}",
                resp.status_code,
                self._excerpt(resp),
            ) from None

    def request(self, method: str, path: str, *, expect: type | tuple = (dict, list), retry: bool = True, **kw) -> Any:
        return self._checked(self._send(method, path, retry=retry, **kw), f"{method} {path}", expect)

    def _checked(self, resp: httpx.Response, what: str, expect: type | tuple = (dict, list)) -> Any:
        """The response's JSON, or the error that its status or shape calls for (401/403, other 4xx, wrong type)."""
        if resp.status_code in (401, 403):
            raise LabelStudioAuthError(
                f"Label Studio rejected the API token (HTTP {resp.status_code}) for {what} at {self.url}: "
                f"check {TOKEN_SETTING}"
            )
        if resp.status_code == 204:
            return None
        if resp.status_code >= 400:
            raise LabelStudioResponseError(
                f"Label Studio refused {what} (HTTP {resp.status_code}): {self._excerpt(resp)}",
                resp.status_code,
                self._excerpt(resp),
            )
        data = self._json(resp, what)
        if expect and not isinstance(data, expect):
            raise LabelStudioResponseError(
                f"Label Studio returned an unexpected response to {what}: expected "
                f"{getattr(expect, '__name__', expect)}, got {type(data).__name__}: {self._excerpt(resp)}",
                resp.status_code,
                self._excerpt(resp),
            )
        return data

    @staticmethod
    def _field(data: dict, key: str, what: str, kind: type | tuple = object):
        if not isinstance(data, dict) or key not in data or not isinstance(data[key], kind):
            excerpt = str(data)[:EXCERPT_CHARS]
            raise LabelStudioResponseError(f"Label Studio response to {what} lacks {key!r}: {excerpt}", None, excerpt)
        return data[key]

    # --- API ---
    def version(self) -> dict:
        return self.request("GET", "/api/version", expect=dict)

    def whoami(self) -> dict:
        return self.request("GET", "/api/current-user/whoami", expect=dict)

    def projects(self, title: str | None = None) -> list[dict]:
        out: list[dict] = []
        page = 1
        while True:
            params: dict[str, Any] = {"page": page, "page_size": 100}
            if title:
                params["title"] = title
            data = self.request("GET", "/api/projects", params=params)
            if isinstance(data, list):  # older servers: no pagination
                return data
            results = self._field(data, "results", "GET /api/projects", list)
            out.extend(results)
            if not data.get("next"):
                return out
            page += 1

    def get_project(self, project_id: int) -> Project:
        d = self.request("GET", f"/api/projects/{project_id}", expect=dict)
        return Project(int(self._field(d, "id", "GET project")), d.get("title", ""), self._field(d, "label_config", "GET project", str))

    def find_or_create_project(self, title: str, label_config: str, *, update_config: bool = True) -> Project:
        """The project titled `title` (exact match), created with `label_config` if absent.

        An existing project whose config differs gets the new config when `update_config`
        (Label Studio refuses a change that would orphan existing labels: that raises).
        """
        matches = [p for p in self.projects(title) if p.get("title") == title]
        if matches:
            p = sorted(matches, key=lambda d: d["id"])[0]
            if update_config and p.get("label_config", "").strip() != label_config.strip():
                p = self.request("PATCH", f"/api/projects/{p['id']}", json={"label_config": label_config}, expect=dict)
            return Project(int(p["id"]), p["title"], p.get("label_config", label_config))
        d = self.request("POST", "/api/projects", json={"title": title, "label_config": label_config}, expect=dict)
        return Project(int(self._field(d, "id", "POST /api/projects")), d.get("title", title), d.get("label_config", label_config))

    def local_storages(self, project_id: int) -> list[dict]:
        return self.request("GET", "/api/storages/localfiles", params={"project": project_id}, expect=list)

    def ensure_local_storage(self, project_id: int, path: str) -> dict:
        """Attach a Local Files import storage for `path` (never synced: it only authorises serving)."""
        for s in self.local_storages(project_id):
            if s.get("path") == str(path):
                return s
        return self.request(
            "POST",
            "/api/storages/localfiles",
            json={"project": project_id, "path": str(path), "use_blob_urls": True, "title": f"clasp {path}"[:200],
                  "regex_filter": None, "description": "attached by CLASP to serve review images"},
            expect=dict,
        )

    def import_tasks(self, project_id: int, tasks: list[dict]) -> list[int]:
        """Bulk import (many tasks, predictions inline) in one request; the new task ids in order."""
        data = self.request(
            "POST", f"/api/projects/{project_id}/import", params={"return_task_ids": "true"}, json=tasks,
            expect=dict, retry=False,  # not idempotent: the caller reconciles before retrying
        )
        ids = self._field(data, "task_ids", "POST import", list)
        if len(ids) != len(tasks) or not all(isinstance(i, int) for i in ids):
            raise LabelStudioResponseError(
                f"Label Studio import returned {len(ids)} task ids for {len(tasks)} tasks: {str(data)[:EXCERPT_CHARS]}"
            )
        return ids

    def tasks(self, project_id: int, *, include: str | None = "id,data", page_size: int = 500) -> Iterable[dict]:
        page = 1
        seen = 0
        while True:
            params: dict[str, Any] = {"project": project_id, "page": page, "page_size": page_size}
            if include:
                params["include"] = include
            resp = self._send("GET", "/api/tasks", params=params)
            if resp.status_code == 404 and page > 1:
                return  # past the last page
            data = self._checked(resp, "GET /api/tasks")
            items = data.get("tasks") if isinstance(data, dict) else data
            if not isinstance(items, list):
                raise LabelStudioResponseError(f"Label Studio response to GET /api/tasks lacks 'tasks': {self._excerpt(resp)}")
            yield from items
            seen += len(items)
            total = data.get("total") if isinstance(data, dict) else None
            if not items or (total is not None and seen >= total) or len(items) < page_size:
                return
            page += 1

    def predictions(self, project_id: int) -> list[dict]:
        return self.request("GET", "/api/predictions", params={"project": project_id}, expect=list)

    def task_predictions(self, task_id: int) -> list[dict]:
        preds = self.request("GET", "/api/predictions", params={"task": task_id}, expect=list)
        return [p for p in preds if p.get("task") == task_id]

    def task(self, task_id: int) -> dict:
        return self.request("GET", f"/api/tasks/{task_id}", expect=dict)

    def annotated_tasks(self, project_id: int) -> list[dict]:
        """Every task with at least one annotation, annotations included (JSON export)."""
        return self.request(
            "GET", f"/api/projects/{project_id}/export", params={"exportType": "JSON", "download_all_tasks": "false"},
            expect=list,
        )

    def create_annotation(self, task_id: int, result: list[dict], **extra) -> dict:
        return self.request("POST", f"/api/tasks/{task_id}/annotations", json={"result": result, **extra}, expect=dict)

    def delete_project(self, project_id: int) -> None:
        self.request("DELETE", f"/api/projects/{project_id}", expect=None)
