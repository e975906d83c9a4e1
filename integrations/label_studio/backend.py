"""A Label Studio ML backend serving CLASP proposals: `clasp label-studio backend --host H --port P`.

Speaks the protocol Label Studio 1.23 uses for "Model" connections:

- `GET /health` -> `{"status": "UP", "model_class": ...}`;
- `POST /setup` (project, schema, hostname, access_token, extra_params) -> `{"model_version": ...}`;
- `POST /predict` (tasks, project, label_config, params) -> `{"results": [[prediction, ...] | [], ...]}`,
  one entry per task, in order (with `--granularity`, the coarser and finer partitions of
  the K search follow as extra predictions with their own model_version); a task that fails gets `[]` (no prediction) and its
  reason in `errors` (task id -> message) and in the log, the other tasks go on;
  With suggestions on (`--suggestions`), regions whose kNN vote over the reviewed
  exemplars in CLASP's database is confident carry that moderation label instead
  of a proposal label, as in `clasp run`'s push (model_version `...+ex-...`);
- `POST /webhook` -> `{"status": "ok"}` (Label Studio sends annotation events; CLASP
  does not train, so they are acknowledged and ignored).

Built on starlette + uvicorn (already installed through prefect) rather than
`label-studio-ml` 1.0.9 (2023), which pins its own Flask stack and predates this
Label Studio. The model (one `Segmenter`) is loaded once at start and serves every
request. It works with any labeling config that has an `<Image>` and a `<BrushLabels>`
over it: tag names and labels come from the config Label Studio sends, and only those
labels are used (coloured proposal labels `region-1..N` when the config has them,
else `region`, else its first label).

Images: task values that live in Label Studio (`/data/upload/...`,
`/data/local-files/?d=...`, or absolute URLs on `LABEL_STUDIO_URL`) are fetched from
`LABEL_STUDIO_URL` with the API token (`LABEL_STUDIO_API_KEY` or `..._FILE`); other
http(s) URLs go through `integrations.sources` with its host policy (private and
loopback hosts refused unless allowed); `data:` URLs are decoded. Nothing else is read.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np

from integrations.label_studio.config import (
    LabelConfigError,
    LabelingConfig,
    brush_tags,
    is_proposal_label,
    proposal_label,
)
from integrations.label_studio.predictions import (
    RegionPolicy,
    alternative_model_version,
    build_prediction,
    granularity_alternatives,
    model_version,
)

log = logging.getLogger(__name__)

LABEL_STUDIO_PATHS = ("/data/", "/storage-data/", "/tasks/", "/api/")
NEUTRAL = "region"


# (prediction, its regions, the Segmentation, labels a suggestion may carry) -> the prediction to answer
Suggester = Callable[[dict, list, Any, list[str]], dict]


class BackendError(ValueError):
    """One task cannot get a prediction (its image, the config, the token); the message says why."""


@dataclass(frozen=True)
class BrushTarget:
    """What a labeling config asks for: control and object names, the data key, the labels to use."""

    from_name: str
    to_name: str
    image_key: str
    labeling: LabelingConfig
    label: str | None  # a single label for every region, or None to colour with labeling.proposal_labels
    labels: tuple[str, ...] = ()  # every label the config defines

    @property
    def moderation_labels(self) -> list[str]:
        """The config's labels other than the proposal labels: those a suggestion may carry."""
        neutral = self.labeling.neutral_label
        return [lab for lab in self.labels if lab != neutral and not is_proposal_label(lab, neutral)]

    @classmethod
    def from_config(cls, xml: str) -> "BrushTarget":
        from_name, to_name, image_key, labels = brush_tags(xml)
        numbered: list[str] = []
        while proposal_label(NEUTRAL, len(numbered)) in labels:  # region-1, region-2, ... as long as contiguous
            numbered.append(proposal_label(NEUTRAL, len(numbered)))
        if len(numbered) >= 2:
            neutral, label = NEUTRAL, None
        elif NEUTRAL in labels:
            neutral, label, numbered = NEUTRAL, NEUTRAL, []
        else:
            neutral = label = next((lab for lab in labels if is_proposal_label(lab, NEUTRAL)), labels[0])
            numbered = []
        labeling = LabelingConfig(
            taxonomy={neutral: "#FF00FF"}, neutral_label=neutral, from_name=from_name, to_name=to_name,
            image_key=image_key, palette=tuple("#000000" for _ in numbered),
        )
        return cls(from_name, to_name, image_key, labeling, label, tuple(labels))


@dataclass
class ImageFetcher:
    """Reads a task's image value: Label Studio URLs with the token, others under the host policy."""

    label_studio_url: str | None
    token: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    max_bytes: int = 50 * 1024 * 1024

    def _in_label_studio(self, value: str) -> str | None:
        if value.startswith(LABEL_STUDIO_PATHS):
            return value
        if self.label_studio_url and value.startswith(self.label_studio_url.rstrip("/") + "/"):
            return value[len(self.label_studio_url.rstrip("/")):]
        return None

    def read(self, value: Any) -> np.ndarray:
        from clasp_engine.errors import InvalidImageError
        from clasp_engine.images import load_image

        if not isinstance(value, str) or not value.strip():
            raise BackendError(f"the task has no image reference (got {value!r})")
        data = self._bytes(value.strip())
        try:
            return load_image(data)
        except InvalidImageError as e:
            raise BackendError(f"image {value[:200]!r} cannot be decoded: {e.reason}") from None

    def _bytes(self, value: str) -> bytes:
        if value.startswith("data:"):
            head, _, payload = value.partition(",")
            if ";base64" not in head:
                raise BackendError("data URL is not base64-encoded")
            try:
                return base64.b64decode(payload, validate=True)
            except ValueError:
                raise BackendError("data URL holds invalid base64") from None
        path = self._in_label_studio(value)
        if path is not None:
            return self._from_label_studio(path, value)
        scheme = urlparse(value).scheme.lower()
        if scheme in ("http", "https"):
            from integrations.sources import SourceError, read_image_bytes

            try:
                return read_image_bytes(value)
            except SourceError as e:
                raise BackendError(str(e)) from None
        raise BackendError(
            f"image {value[:200]!r}: only Label Studio URLs (/data/...), http(s) URLs and data URLs are read"
        )

    def _from_label_studio(self, path: str, shown: str) -> bytes:
        if not self.label_studio_url:
            raise BackendError(f"image {shown[:200]!r} lives in Label Studio: set LABEL_STUDIO_URL for the backend")
        if not self.token:
            raise BackendError(
                f"image {shown[:200]!r} lives in Label Studio and needs an API token: set LABEL_STUDIO_API_KEY "
                "(or LABEL_STUDIO_API_KEY_FILE) for the backend"
            )
        url = self.label_studio_url.rstrip("/") + path
        headers = {"Authorization": f"Token {self.token}"}
        try:
            with httpx.stream("GET", url, headers=headers, timeout=self.timeout, follow_redirects=False) as r:
                if r.status_code in (401, 403):
                    raise BackendError(
                        f"Label Studio refused the image {shown[:200]!r} (HTTP {r.status_code}): check LABEL_STUDIO_API_KEY"
                    )
                if r.status_code != 200:
                    raise BackendError(f"Label Studio answered HTTP {r.status_code} for the image {shown[:200]!r}")
                chunks, size = [], 0
                for chunk in r.iter_bytes():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise BackendError(f"image {shown[:200]!r} is larger than {self.max_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as e:
            raise BackendError(f"cannot read the image {shown[:200]!r} from Label Studio: {type(e).__name__}") from None


class ProposalModel:
    """One Segmenter, loaded once; turns tasks into brush predictions for a given labeling config."""

    def __init__(self, backbone: str = "classic", variant: str = "pixel", weights: str | None = None,
                 policy: RegionPolicy | None = None, fetcher: ImageFetcher | None = None,
                 granularity: bool = False, suggest: Suggester | None = None) -> None:
        from clasp_engine import Segmenter, SegmenterConfig
        from clasp_engine import __version__ as engine_version

        self.config = SegmenterConfig(backbone=backbone, variant=variant, weights=weights)
        t0 = time.perf_counter()
        self.segmenter = Segmenter(self.config)
        self.load_seconds = time.perf_counter() - t0
        self.policy = policy or RegionPolicy(min_area_fraction=0.001, max_regions=40)
        self.fetcher = fetcher or ImageFetcher(None)
        name = getattr(getattr(self.segmenter, "backbone", None), "name", backbone)
        self.model_version = model_version(engine_version, name, self.config.to_dict(), variant)
        self.granularity = granularity  # also answer the coarser / finer partitions of the K search
        self.suggest = suggest  # suggested labels from past reviews (integrations.review.suggestions.LiveSuggestions)
        self._lock = threading.Lock()  # one segmentation at a time: the engine uses all cores anyway
        self.served = 0

    def predict_task(self, task: dict, target: BrushTarget) -> list[dict]:
        """The task's predictions: the chosen partition, then (with `granularity`) coarser and finer."""
        data = task.get("data") or {}
        if target.image_key not in data:
            raise BackendError(f"task {task.get('id')} has no data field {target.image_key!r} (the <Image> value)")
        image = self.fetcher.read(data[target.image_key])
        with self._lock:
            seg = self.segmenter(image)
        built = build_prediction(
            seg.labels, {s.label: s.confidence for s in seg.segments}, model_version=self.model_version,
            config=target.labeling, policy=self.policy, label=target.label,
        )
        prediction = built.prediction
        if self.suggest is not None and target.moderation_labels:
            prediction = self.suggest(prediction, built.regions, seg, target.moderation_labels)
        out = [prediction]
        if self.granularity:
            for name, (k, alt) in sorted(granularity_alternatives(seg).items()):
                out.append(build_prediction(
                    alt, None, model_version=alternative_model_version(self.model_version, name, k),
                    config=target.labeling, policy=self.policy, label=target.label,
                ).prediction)
        self.served += 1
        return out

    def predict(self, tasks: list[dict], label_config: str) -> dict:
        target = BrushTarget.from_config(label_config)  # a bad config fails the whole request, clearly
        results: list[list[dict]] = []
        errors: dict[str, str] = {}
        for task in tasks:
            try:
                results.append(self.predict_task(task, target))
            except (BackendError, LabelConfigError) as e:
                errors[str(task.get("id"))] = str(e)
                results.append([])
                log.warning("task %s: %s", task.get("id"), e)
            except Exception as e:  # noqa: BLE001 - one bad task must not take the backend down
                errors[str(task.get("id"))] = f"{type(e).__name__}: {e}"
                results.append([])
                log.exception("task %s failed", task.get("id"))
        out: dict[str, Any] = {"results": results, "model_version": self.model_version}
        if errors:
            out["errors"] = errors
        return out


def create_app(model: ProposalModel):
    """The starlette application answering Label Studio's ML backend protocol."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def body(request: Request) -> dict:
        try:
            data = await request.json()
        except ValueError:
            raise BackendError("the request body is not JSON") from None
        if not isinstance(data, dict):
            raise BackendError("the request body must be a JSON object")
        return data

    def bad(message: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"status": "error", "error": message}, status_code=status)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "UP", "model_class": "CLASP proposals", "model_version": model.model_version,
                             "backbone": model.config.backbone, "served": model.served})

    async def setup(request: Request) -> JSONResponse:
        try:
            data = await body(request)
            if data.get("schema"):
                BrushTarget.from_config(data["schema"])  # refuse a project we cannot serve at connect time
        except (BackendError, LabelConfigError) as e:
            return bad(str(e))
        return JSONResponse({"model_version": model.model_version})

    async def predict(request: Request) -> JSONResponse:
        from starlette.concurrency import run_in_threadpool

        try:
            data = await body(request)
            tasks = data.get("tasks")
            if not isinstance(tasks, list):
                raise BackendError("the request has no 'tasks' list")
            config = data.get("label_config")
            if not isinstance(config, str) or not config.strip():
                raise BackendError("the request has no 'label_config' (the project's labeling config)")
            BrushTarget.from_config(config)
        except (BackendError, LabelConfigError) as e:
            return bad(str(e))
        t0 = time.perf_counter()
        out = await run_in_threadpool(model.predict, tasks, config)
        log.info("predicted %d task(s) in %.2fs", len(tasks), time.perf_counter() - t0)
        return JSONResponse(out)

    async def webhook(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[
        Route("/", health, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/setup", setup, methods=["POST"]),
        Route("/predict", predict, methods=["POST"]),
        Route("/webhook", webhook, methods=["POST"]),
    ])


def fetcher_from_settings(settings=None) -> ImageFetcher:
    from integrations.settings import Settings

    s = settings or Settings()
    token = s.label_studio_token()
    return ImageFetcher(s.label_studio_url, token.get_secret_value() if token else None)


def serve(host: str, port: int, *, backbone: str = "classic", variant: str = "pixel", weights: str | None = None,
          granularity: bool = False, suggest: Suggester | None = None, log_level: str = "info") -> None:
    """Load the model once, then serve until interrupted."""
    import uvicorn

    fetcher = fetcher_from_settings()
    if not fetcher.token:
        log.warning("no LABEL_STUDIO_API_KEY: images uploaded to Label Studio cannot be read (those tasks fail)")
    model = ProposalModel(backbone=backbone, variant=variant, weights=weights, fetcher=fetcher, granularity=granularity,
                          suggest=suggest)
    log.info("CLASP ML backend: %s loaded in %.1fs; serving on http://%s:%d", model.model_version,
             model.load_seconds, host, port)
    uvicorn.run(create_app(model), host=host, port=port, log_level=log_level)
