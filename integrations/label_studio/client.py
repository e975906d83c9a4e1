"""Label Studio through `label-studio-sdk`: projects, storages, bulk import, tasks, predictions, export, ML backends.

Every call goes through the SDK (`label_studio_sdk.LabelStudio`); this module adds
what the project needs around it:

- **One retry layer.** The SDK's own retries are switched off (`max_retries=0`);
  `_call` retries transient failures (connection errors, timeouts, HTTP 5xx, 429)
  with exponential backoff and raises `LabelStudioUnavailable` after the last try.
  A caller that has its own loop (the push's reconcile-before-retry import) passes
  `retry=False` or its own `RetryPolicy`, so attempts never multiply.
- 401/403 raise `LabelStudioAuthError`, naming the token setting (LABEL_STUDIO_API_KEY).
- An answer we cannot use (non-JSON, wrong shape, other 4xx) raises
  `LabelStudioResponseError` with an excerpt of the body.
- The token lives in a `SecretStr`; it never appears in `repr`, messages or logs
  (excerpts are scrubbed, in case a server echoes it). Personal access tokens (JWT)
  are detected and exchanged by the SDK.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, TypeVar

import httpx
from pydantic import BaseModel, SecretStr

log = logging.getLogger(__name__)

TOKEN_SETTING = "LABEL_STUDIO_API_KEY (or LABEL_STUDIO_API_KEY_FILE)"
EXCERPT_CHARS = 300
T = TypeVar("T")


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


class _Transient(Exception):
    """One failed attempt worth retrying (internal)."""


@dataclass(frozen=True)
class Project:
    id: int
    title: str
    label_config: str


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently one call is retried: `retries` extra tries, backoff doubling up to `max_backoff`."""

    retries: int = 4
    backoff: float = 0.5
    max_backoff: float = 8.0

    def delay(self, attempt: int) -> float:
        return min(self.max_backoff, self.backoff * (2**attempt)) * (0.75 + 0.5 * random.random())


def plain(obj: Any) -> Any:
    """An SDK answer (pydantic models, lists of them) as plain JSON-ready Python."""
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json", by_alias=True, exclude_unset=True)
    if isinstance(obj, list):
        return [plain(x) for x in obj]
    return obj


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
        from label_studio_sdk import LabelStudio

        if not url:
            raise LabelStudioError("Label Studio URL is not set (LABEL_STUDIO_URL)")
        if token is None or (isinstance(token, SecretStr) and not token.get_secret_value()) or token == "":
            raise LabelStudioAuthError(f"no Label Studio API token: set {TOKEN_SETTING}")
        self.url = url.rstrip("/")
        self._token = token if isinstance(token, SecretStr) else SecretStr(token)
        self.policy = RetryPolicy(retries, backoff, max_backoff)
        self._http = httpx.Client(timeout=timeout, transport=transport, follow_redirects=False)
        # max_retries=0: the SDK makes one attempt per call; `_call` is the only retry layer
        self.sdk = LabelStudio(
            base_url=self.url, api_key=self._token.get_secret_value(), httpx_client=self._http,
            timeout=timeout, max_retries=0,
        )

    @classmethod
    def from_settings(cls, settings=None, **kw) -> "LabelStudioClient":
        from integrations.settings import Settings

        s = settings or Settings()
        return cls(s.label_studio_url, s.label_studio_token(), **kw)

    # kept for callers that tuned retries through the old attributes
    @property
    def retries(self) -> int:
        return self.policy.retries

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

    def _excerpt(self, body: Any) -> str:
        text = body if isinstance(body, str) else json.dumps(body, default=str) if body is not None else ""
        text = self._scrub(" ".join(text.split()))
        return text[:EXCERPT_CHARS] + ("…" if len(text) > EXCERPT_CHARS else "")

    def _attempt(self, what: str, fn: Callable[[], T], expect: type | None = None) -> T:
        """One SDK call; errors mapped to ours (`_Transient` for those worth another try)."""
        from label_studio_sdk.core.api_error import ApiError

        try:
            return fn()
        except httpx.TransportError as e:  # connect refused, timeouts, reset ...
            raise _Transient(f"{type(e).__name__}: {self._scrub(str(e))}") from None
        except ApiError as e:
            status = e.status_code or 0
            excerpt = self._excerpt(e.body)
            if status in (401, 403):
                raise LabelStudioAuthError(
                    f"Label Studio rejected the API token (HTTP {status}) for {what} at {self.url}: check {TOKEN_SETTING}"
                ) from None
            if status >= 500 or status == 429:
                raise _Transient(f"HTTP {status}: {excerpt}") from None
            if 200 <= status < 300:  # the SDK could not parse a 2xx body
                raise LabelStudioResponseError(
                    f"Label Studio returned a malformed response to {what} (HTTP {status}): {excerpt}", status, excerpt
                ) from None
            raise LabelStudioResponseError(
                f"Label Studio refused {what} (HTTP {status}): {excerpt}", status, excerpt
            ) from None
        except (ValueError, TypeError, AttributeError) as e:  # JSON of an unexpected shape
            excerpt = self._excerpt(str(e))
            wanted = f"expected {expect.__name__}: " if expect else ""
            raise LabelStudioResponseError(
                f"Label Studio returned an unexpected response to {what}: {wanted}{excerpt}", None, excerpt
            ) from None

    def _call(self, what: str, fn: Callable[[], T], retry: bool | RetryPolicy = True, expect: type | None = None) -> T:
        """`fn()` with the retry policy (the client's, the given one, or none when `retry=False`)."""
        policy = self.policy if retry is True else (retry or RetryPolicy(retries=0))
        tries = policy.retries + 1
        last = ""
        for attempt in range(tries):
            try:
                return self._attempt(what, fn, expect)
            except _Transient as e:
                last = str(e)
            if attempt < tries - 1:
                delay = policy.delay(attempt)
                log.warning("Label Studio %s failed (%s); retry %d/%d in %.1fs", what, last, attempt + 1, tries - 1, delay)
                time.sleep(delay)
        raise LabelStudioUnavailable(
            f"Label Studio at {self.url} is unavailable: {what} failed {tries} time(s); last error: {last}"
        )

    @staticmethod
    def _expect(data: Any, kind: type | tuple, what: str) -> Any:
        if not isinstance(data, kind):
            excerpt = str(data)[:EXCERPT_CHARS]
            raise LabelStudioResponseError(
                f"Label Studio returned an unexpected response to {what}: expected "
                f"{getattr(kind, '__name__', kind)}, got {type(data).__name__}: {excerpt}", None, excerpt,
            )
        return data

    @staticmethod
    def _field(data: dict, key: str, what: str, kind: type | tuple = object):
        if not isinstance(data, dict) or data.get(key) is None or not isinstance(data[key], kind):
            excerpt = str(data)[:EXCERPT_CHARS]
            raise LabelStudioResponseError(f"Label Studio response to {what} lacks {key!r}: {excerpt}", None, excerpt)
        return data[key]

    # --- API ---
    def version(self, retry: bool | RetryPolicy = True) -> dict:
        return self._expect(plain(self._call("GET /api/version", self.sdk.versions.get, retry, dict)), dict, "GET /api/version")

    def whoami(self) -> dict:
        return self._expect(plain(self._call("GET whoami", self.sdk.users.whoami)), dict, "GET whoami")

    def projects(self, title: str | None = None) -> list[dict]:
        out: list[dict] = []
        page = 1
        while True:
            kw: dict[str, Any] = {"page": page, "page_size": 100}
            if title:
                kw["title"] = title
            pager = self._call("GET /api/projects", lambda: self.sdk.projects.list(**kw))
            items = plain(list(pager.items or []))
            out.extend(items)
            if not items or not pager.has_next or len(items) < 100:
                return out
            page += 1

    def get_project(self, project_id: int) -> Project:
        d = self._expect(plain(self._call("GET project", lambda: self.sdk.projects.get(project_id))), dict, "GET project")
        return Project(int(self._field(d, "id", "GET project")), d.get("title", ""), self._field(d, "label_config", "GET project", str))

    def find_or_create_project(self, title: str, label_config: str, *, update_config: bool = True) -> Project:
        """The project titled `title` (exact match), created with `label_config` if absent.

        An existing project whose config differs gets the new config when `update_config`
        (Label Studio refuses a change that would orphan existing labels: that raises).
        """
        matches = [p for p in self.projects(title) if p.get("title") == title]
        if matches:
            p = sorted(matches, key=lambda d: d["id"])[0]
            if update_config and (p.get("label_config") or "").strip() != label_config.strip():
                p = plain(self._call("PATCH project", lambda: self.sdk.projects.update(p["id"], label_config=label_config)))
            return Project(int(p["id"]), p.get("title", title), p.get("label_config") or label_config)
        d = plain(self._call("POST /api/projects", lambda: self.sdk.projects.create(title=title, label_config=label_config)))
        d = self._expect(d, dict, "POST /api/projects")
        return Project(int(self._field(d, "id", "POST /api/projects")), d.get("title") or title, d.get("label_config") or label_config)

    def local_storages(self, project_id: int, retry: bool | RetryPolicy = True) -> list[dict]:
        return self._expect(
            plain(self._call("GET local storages", lambda: self.sdk.import_storage.local.list(project=project_id), retry)),
            list, "GET local storages",
        )

    def ensure_local_storage(self, project_id: int, path: str, retry: bool | RetryPolicy = True) -> dict:
        """Attach a Local Files import storage for `path` (never synced: it only authorises serving)."""
        for s in self.local_storages(project_id, retry):
            if s.get("path") == str(path):
                return s
        return plain(self._call(
            "POST local storage",
            lambda: self.sdk.import_storage.local.create(
                project=project_id, path=str(path), use_blob_urls=True, title=f"clasp {path}"[:200],
                regex_filter=None, description="attached by CLASP to serve review images",
            ),
            retry,
        ))

    def _raw(self, method: str, path: str, **kw) -> Any:
        """A request through the SDK's own HTTP client (auth, base URL, JWT refresh), JSON answer.

        For the two calls where the SDK's typed method does not fit: the bulk import (see
        `import_tasks`) and a multipart upload (no typed call). Errors become the SDK's
        ApiError, so `_call` maps them like every other call.
        """
        from label_studio_sdk.core.api_error import ApiError

        resp = self.sdk._client_wrapper.httpx_client.request(path, method=method, request_options={"max_retries": 0}, **kw)
        if resp.status_code >= 300:
            raise ApiError(status_code=resp.status_code, headers=dict(resp.headers), body=resp.text)
        try:
            return resp.json()
        except ValueError:
            raise ApiError(status_code=resp.status_code, headers=dict(resp.headers), body=resp.text) from None

    def import_tasks(self, project_id: int, tasks: list[dict]) -> list[int]:
        """Bulk import (many tasks, predictions inline) in one request; the new task ids in order.

        Never retried here: an import is not idempotent; the push reconciles by key before trying again.

        The body is serialised once with `json.dumps` and sent through the SDK's HTTP client
        rather than `sdk.projects.import_tasks`, whose `jsonable_encoder` and annotation
        converter visit every integer of every brush RLE in Python: 100 tasks x 10 regions
        (480x640) spent ~19 s there under cProfile, and the push fell to 7.4 tasks/s on a loaded
        2-core machine, against 14.4 for a plain JSON body (benchmarks/bench_push.py).
        """
        body = json.dumps(tasks, separators=(",", ":")).encode()
        data = self._call(
            "POST import",
            lambda: self._raw("POST", f"api/projects/{int(project_id)}/import", params={"return_task_ids": "true"},
                              content=body, headers={"content-type": "application/json"}),
            retry=False,
        )
        data = self._expect(data, dict, "POST import")
        ids = self._field(data, "task_ids", "POST import", list)
        if len(ids) != len(tasks) or not all(isinstance(i, int) for i in ids):
            raise LabelStudioResponseError(
                f"Label Studio import returned {len(ids)} task ids for {len(tasks)} tasks: {str(data)[:EXCERPT_CHARS]}"
            )
        return ids

    def tasks(
        self, project_id: int, *, include: str | None = "id,data", page_size: int = 500, retry: bool | RetryPolicy = True
    ) -> Iterable[dict]:
        """Every task of the project (page by page, each page retried on its own)."""
        from label_studio_sdk.core.api_error import ApiError

        page = 1
        while True:
            def fetch(page=page):
                try:
                    return self.sdk.tasks.list(project=project_id, include=include, page=page, page_size=page_size)
                except ApiError as e:
                    if e.status_code == 404 and page > 1:
                        return None  # past the last page
                    raise

            pager = self._call("GET /api/tasks", fetch, retry)
            if pager is None:
                return
            items = pager.items
            if not isinstance(items, list):
                raise LabelStudioResponseError(f"Label Studio response to GET /api/tasks lacks 'tasks': {self._excerpt(str(pager.response)[:400])}")
            for t in items:
                yield {"id": t.id, "data": t.data} if include == "id,data" else plain(t)
            total = getattr(pager.response, "total", None)
            if not items or len(items) < page_size or (total is not None and page * page_size >= total):
                return
            page += 1

    def predictions(self, project_id: int, retry: bool | RetryPolicy = True) -> list[dict]:
        return self._expect(
            plain(self._call("GET /api/predictions", lambda: self.sdk.predictions.list(project=project_id), retry)),
            list, "GET /api/predictions",
        )

    def task_predictions(self, task_id: int) -> list[dict]:
        preds = self._expect(
            plain(self._call("GET /api/predictions", lambda: self.sdk.predictions.list(task=task_id))), list, "GET /api/predictions"
        )
        return [p for p in preds if p.get("task") == task_id]

    def task(self, task_id: int) -> dict:
        return self._expect(plain(self._call("GET task", lambda: self.sdk.tasks.get(str(task_id)))), dict, "GET task")

    def annotated_tasks(self, project_id: int) -> list[dict]:
        """Every task with at least one annotation, annotations included (JSON export)."""

        def export() -> Any:
            blob = b"".join(self.sdk.projects.exports.download_sync(project_id, export_type="JSON", download_all_tasks=False))
            return json.loads(blob)

        return self._expect(self._call("GET export", export), list, "GET export")

    def create_annotation(self, task_id: int, result: list[dict], **extra) -> dict:
        return plain(self._call("POST annotation", lambda: self.sdk.annotations.create(task_id, result=result, **extra)))

    def delete_project(self, project_id: int) -> None:
        self._call("DELETE project", lambda: self.sdk.projects.delete(project_id))

    def upload_images(self, project_id: int, paths: list) -> list[int]:
        """Upload image files into the project (one task each, image served by Label Studio); the new task ids.

        The SDK has no typed call for a multipart import, so this goes through the SDK's own
        HTTP client (same auth, base URL and error mapping). Each file needs its own field name:
        with a repeated name Label Studio keeps only the last file.
        """
        from pathlib import Path

        def upload() -> Any:
            files = {f"file{i}": (Path(p).name, Path(p).read_bytes()) for i, p in enumerate(paths)}
            return self._raw("POST", f"api/projects/{int(project_id)}/import", params={"return_task_ids": "true"},
                             files=files)

        data = self._expect(self._call("POST import (upload)", upload, retry=False), dict, "POST import (upload)")
        return [int(i) for i in self._field(data, "task_ids", "POST import (upload)", list)]

    # --- ML backends ---
    def ml_backends(self, project_id: int) -> list[dict]:
        return self._expect(plain(self._call("GET /api/ml", lambda: self.sdk.ml.list(project=project_id))), list, "GET /api/ml")

    def connect_ml_backend(self, project_id: int, url: str, title: str = "CLASP proposals", **extra) -> dict:
        """Connect the ML backend at `url` to the project (reuses one already connected there)."""
        for b in self.ml_backends(project_id):
            if (b.get("url") or "").rstrip("/") == url.rstrip("/"):
                return b
        return plain(self._call(
            "POST /api/ml", lambda: self.sdk.ml.create(project=project_id, url=url, title=title, **extra), retry=False
        ))

    def retrieve_predictions(self, project_id: int) -> None:
        """Ask Label Studio to fetch predictions for every task from the project's ML backend."""
        self._call(
            "POST retrieve_tasks_predictions",
            lambda: self.sdk.actions.create(
                id="retrieve_tasks_predictions", project=project_id, selected_items={"all": True, "excluded": []}
            ),
            retry=False,
        )
