"""Push segmentations into a Label Studio project as tasks with inline predictions.

`push_segmentations(client, project, items)` is a plain function (the flow calls it
through `integrations.db.reviews.push_for_review`, which adds the SQL glue):

- tasks are imported in bulk (`batch_size` per request, predictions inline);
- idempotent: every task carries `clasp_key = "<image id>@<model version>"`; keys
  already in the project are not sent again (and are reported, so a lost DB record
  can be restored);
- one retry layer: every call is retried by the client with the push's
  `RetryPolicy(retries, backoff)`, never inside another loop; the import, which is not
  idempotent, is retried only here, after reconciling with the server by key (a batch
  that did land is not sent twice); after the last try the push stops, the rest stays unsent (`PushResult.unsent`, `.error`) and
  nothing is half-sent without a record: `on_batch` is called after every batch that
  landed, before the next one is sent.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from integrations.label_studio.client import LabelStudioClient, LabelStudioUnavailable, Project, RetryPolicy
from integrations.label_studio.config import LabelingConfig, validate_labels
from integrations.label_studio.images import ImageModeError, ImageResolver
from integrations.label_studio.predictions import (
    BuiltPrediction,
    RegionPolicy,
    alternative_model_version,
    base_model_version,
    build_prediction,
)

log = logging.getLogger(__name__)

KEY_FIELD = "clasp_key"


@dataclass
class PushItem:
    image_id: int
    image_uri: str
    labels: np.ndarray | Callable[[], np.ndarray]  # label map, or a loader (read from SQL lazily)
    model_version: str
    confidences: dict[int, float] = field(default_factory=dict)
    segmentation_id: int | None = None
    # granularity option: name ("coarser"/"finer") -> (K, label map); pushed as extra
    # predictions with their own model_version (`predictions.granularity_alternatives`)
    # (or a loader of them, called when the push reaches the item)
    alternatives: dict[str, tuple[int, np.ndarray]] | Callable[[], dict[str, tuple[int, np.ndarray]]] = field(
        default_factory=dict)
    # suggested labels: turns the built prediction into the one pushed (labels, scores, and a
    # model_version `<model_version>+<exemplar set>`); the task key keeps the base version
    refine: Callable[[BuiltPrediction], dict[str, Any]] | None = None

    @property
    def key(self) -> str:
        return task_key(self.image_id, self.model_version)

    def label_map(self) -> np.ndarray:
        return self.labels() if callable(self.labels) else self.labels

    def alternative_maps(self) -> dict[str, tuple[int, np.ndarray]]:
        return self.alternatives() if callable(self.alternatives) else self.alternatives


def task_key(image_id: int, model_version: str) -> str:
    return f"{image_id}@{model_version}"


@dataclass
class PushRecord:
    image_id: int
    segmentation_id: int | None
    model_version: str
    project_id: int
    task_id: int
    prediction_id: int | None = None
    n_regions: int | None = None
    score: float | None = None
    image_mode: str | None = None
    existed: bool = False  # the task was already in Label Studio


@dataclass
class PushResult:
    project_id: int
    project_title: str = ""
    sent: list[PushRecord] = field(default_factory=list)
    existing: list[PushRecord] = field(default_factory=list)
    unsent: list[int] = field(default_factory=list)  # image ids left for the next run
    failed: dict[int, str] = field(default_factory=dict)  # image id -> why it cannot be shown
    error: str | None = None
    image_modes: dict[str, int] = field(default_factory=dict)
    import_requests: int = 0
    seconds: float = 0.0
    encode_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failed

    @property
    def tasks_per_second(self) -> float:
        return len(self.sent) / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "project_id": self.project_id,
            "project_title": self.project_title,
            "sent": len(self.sent),
            "already_in_label_studio": len(self.existing),
            "unsent": len(self.unsent),
            "failed": len(self.failed),
            "error": self.error,
            "image_modes": dict(self.image_modes),
            "regions": sum(r.n_regions or 0 for r in self.sent),
            "import_requests": self.import_requests,
            "seconds": round(self.seconds, 3),
            "tasks_per_second": round(self.tasks_per_second, 2),
        }

    def to_dict(self) -> dict[str, Any]:
        d = self.summary()
        d["records"] = [asdict(r) for r in self.sent + self.existing]
        d["failures"] = {str(k): v for k, v in self.failed.items()}
        return d


def _existing_keys(client: LabelStudioClient, project_id: int, retry: bool | RetryPolicy = True) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in client.tasks(project_id, include="id,data", retry=retry):
        key = (t.get("data") or {}).get(KEY_FIELD)
        if key and key not in out:
            out[key] = int(t["id"])
    return out


def push_segmentations(
    client: LabelStudioClient,
    project: Project,
    items: Iterable[PushItem],
    *,
    labeling: LabelingConfig | None = None,
    policy: RegionPolicy | None = None,
    resolver: ImageResolver | None = None,
    batch_size: int = 50,
    retries: int = 4,
    backoff: float = 1.0,
    on_batch: Callable[[list[PushRecord]], None] | None = None,
    fetch_prediction_ids: bool = True,
) -> PushResult:
    labeling = labeling or LabelingConfig()
    policy = policy or RegionPolicy()
    resolver = resolver or ImageResolver.from_env()
    items = list(items)
    result = PushResult(project.id, project.title)
    t0 = time.perf_counter()
    log.info("Label Studio push to project %d (%s): %s", project.id, project.title, resolver.describe())
    validate_labels(labeling.proposal_labels or [labeling.neutral_label], project.label_config, labeling.from_name)

    retry = RetryPolicy(retries, backoff, max_backoff=30.0)
    try:
        existing = _existing_keys(client, project.id, retry)
    except LabelStudioUnavailable as e:
        result.error = str(e)
        result.unsent = [it.image_id for it in items]
        result.seconds = time.perf_counter() - t0
        return result

    todo: list[PushItem] = []
    for it in items:
        if it.key in existing:
            result.existing.append(
                PushRecord(it.image_id, it.segmentation_id, it.model_version, project.id, existing[it.key], existed=True)
            )
        else:
            todo.append(it)
    if result.existing and fetch_prediction_ids:
        # tasks already there (their DB record was lost): record the model version they were
        # pushed with (`<base>+<exemplar set>` when they carry suggested labels), not the base
        try:
            _fill_prediction_ids(client, project.id, result.existing, retry)
        except LabelStudioUnavailable as e:
            log.warning("could not read the predictions of tasks already in Label Studio: %s", e)
    if result.existing and on_batch:
        on_batch(result.existing)

    modes: Counter[str] = Counter()
    storages_done: set[str] = set()
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        tasks: list[dict] = []
        metas: list[tuple[PushItem, int, float, str]] = []
        for it in chunk:
            try:
                img = resolver.resolve(it.image_uri)
            except (ImageModeError, OSError) as e:
                result.failed[it.image_id] = str(e)
                continue
            te = time.perf_counter()
            built = build_prediction(
                it.label_map(), it.confidences, model_version=it.model_version, config=labeling, policy=policy
            )
            prediction = it.refine(built) if it.refine is not None else built.prediction
            if base_model_version(prediction.get("model_version", "")) != it.model_version:
                raise ValueError(f"image {it.image_id}: the refined prediction's model_version "
                                 f"{prediction.get('model_version')!r} does not extend {it.model_version!r}")
            result.encode_seconds += time.perf_counter() - te
            validate_labels(
                {lab for r in prediction["result"] for lab in r["value"]["brushlabels"]},
                project.label_config,
                labeling.from_name,
            )
            if img.storage_dir is not None and str(img.storage_dir) not in storages_done:
                try:
                    client.ensure_local_storage(project.id, str(img.storage_dir), retry)
                except LabelStudioUnavailable as e:
                    result.error = str(e)
                    break
                storages_done.add(str(img.storage_dir))
            tasks.append(
                {
                    "data": {
                        labeling.image_key: img.value,
                        KEY_FIELD: it.key,
                        "clasp_image_id": it.image_id,
                        "clasp_segmentation_id": it.segmentation_id,
                        "clasp_model_version": it.model_version,
                        "clasp_image_mode": img.mode,
                    },
                    "predictions": [prediction] + [
                        build_prediction(alt, None, model_version=alternative_model_version(it.model_version, name, k),
                                         config=labeling, policy=policy).prediction
                        for name, (k, alt) in sorted(it.alternative_maps().items())
                    ],
                }
            )
            metas.append((it, len(built.regions), prediction.get("score"), img.mode, prediction["model_version"]))
        if result.error:
            result.unsent.extend(it.image_id for it in todo[start:] if it.image_id not in result.failed)
            break
        if not tasks:
            continue
        task_ids = _import_with_reconcile(client, project.id, tasks, result, retry)
        if task_ids is None:  # gave up: this batch and the rest wait for the next run
            result.unsent.extend(it.image_id for it in todo[start:] if it.image_id not in result.failed)
            break
        records = [  # the link records the model version actually pushed (with its exemplar set)
            PushRecord(it.image_id, it.segmentation_id, pushed_mv, project.id, tid, None, n,
                       None if score is None else round(score, 6), mode)
            for (it, n, score, mode, pushed_mv), tid in zip(metas, task_ids)
        ]
        for (_, _, _, mode, _) in metas:
            modes[mode] += 1
        result.sent.extend(records)
        if on_batch:
            on_batch(records)

    result.image_modes = dict(modes)
    if fetch_prediction_ids and (result.sent or result.existing) and result.error is None:
        try:
            _fill_prediction_ids(client, project.id, result.sent + result.existing, retry)
            if on_batch:
                on_batch(result.sent + result.existing)
        except LabelStudioUnavailable as e:  # ids can be filled by a later run; the tasks are recorded
            log.warning("could not read prediction ids: %s", e)
    result.seconds = time.perf_counter() - t0
    log.info("Label Studio push: %s", result.summary())
    return result


def _import_with_reconcile(
    client: LabelStudioClient, project_id: int, tasks: list[dict], result: PushResult, retry: RetryPolicy
) -> list[int] | None:
    """Import `tasks`; after a transient failure, wait, find by key what landed anyway, import the rest.

    This loop is the import's only retry layer (the client does not retry imports): at most
    `retry.retries + 1` attempts, each either an import or, after a failed one, the
    reconcile read that must succeed before anything is sent again.
    """
    keys = [t["data"][KEY_FIELD] for t in tasks]
    landed: dict[str, int] = {}
    uncertain = False  # an import failed: what landed is unknown until the keys are read
    for attempt in range(retry.retries + 1):
        if attempt:
            delay = retry.delay(attempt - 1)
            log.warning("Label Studio import failed (%s); retry %d/%d in %.1fs", result.error, attempt, retry.retries, delay)
            time.sleep(delay)
        try:
            if uncertain:
                existing = _existing_keys(client, project_id, retry=False)
                landed.update({k: existing[k] for k in keys if k in existing})
                uncertain = False
            pending = [t for t in tasks if t["data"][KEY_FIELD] not in landed]
            if pending:
                result.import_requests += 1
                uncertain = True
                ids = client.import_tasks(project_id, pending)
                uncertain = False
                landed.update({t["data"][KEY_FIELD]: tid for t, tid in zip(pending, ids)})
            result.error = None
            return [landed[k] for k in keys]
        except LabelStudioUnavailable as e:
            result.error = str(e)
    log.error("Label Studio import gave up after %d tries: %s", retry.retries + 1, result.error)
    return None  # what did land (if anything) is found by key on the next run


def _fill_prediction_ids(
    client: LabelStudioClient, project_id: int, records: list[PushRecord], retry: bool | RetryPolicy = True
) -> None:
    """Prediction id of every record: the one of its model version, else (a task found by key,
    pushed earlier with suggested labels) the one with the same base version, whose model
    version the record then takes."""
    by_task: dict[tuple[int, str], int] = {}
    by_base: dict[tuple[int, str], tuple[int, str]] = {}
    for p in client.predictions(project_id, retry):
        mv = str(p.get("model_version"))
        by_task.setdefault((int(p.get("task")), mv), int(p["id"]))
        by_base.setdefault((int(p.get("task")), base_model_version(mv)), (int(p["id"]), mv))
    for r in records:
        exact = by_task.get((r.task_id, r.model_version))
        if exact is not None:
            r.prediction_id = exact
            continue
        found = by_base.get((r.task_id, base_model_version(r.model_version)))
        if found is not None:
            r.prediction_id, r.model_version = found
