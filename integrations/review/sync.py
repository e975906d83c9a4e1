"""Bring reviews back from Label Studio, with how much of each proposal survived.

- `pull_reviews(client, project, session) -> SyncResult`: pulls finished annotations,
  stores them in `reviews` with their survival figures (image -> `reviewed`);
- `pull_from_project(session, settings, title) -> dict`: the same from settings, as the
  flow reports it (raises `LabelStudioUnavailableForSync` when Label Studio is down);
- `review_statistics(session)`: the figures over the stored reviews (`clasp report`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from integrations.db.reviews import mark_reviewed, project_links, reviews_by_annotation, save_review, stored_survivals
from integrations.label_studio.client import LabelStudioClient, LabelStudioUnavailable, Project
from integrations.label_studio.config import LabelingConfig
from integrations.label_studio.predictions import base_model_version
from integrations.label_studio.review import aggregate, regions_from_result, survival
from integrations.review.exemplars import exemplars_from_reviews
from integrations.review.push import project_url
from integrations.settings import Settings


@dataclass
class SyncResult:
    project_id: int
    tasks_seen: int = 0
    reviews_new: int = 0
    reviews_updated: int = 0
    unchanged: int = 0
    unknown_tasks: list[int] = field(default_factory=list)  # annotated tasks with no review link
    cancelled: int = 0
    stats: dict[str, Any] = field(default_factory=dict)  # aggregate over the reviews seen now
    per_task: dict[int, dict[str, Any]] = field(default_factory=dict)  # task id -> survival (latest annotation)
    error: str | None = None
    exemplars: dict[str, Any] = field(default_factory=dict)  # what the new reviews taught (ExemplarUpdate)

    def summary(self) -> dict[str, Any]:
        return {
            "project_id": self.project_id,
            "tasks_seen": self.tasks_seen,
            "reviews_new": self.reviews_new,
            "reviews_updated": self.reviews_updated,
            "unchanged": self.unchanged,
            "unknown_tasks": len(self.unknown_tasks),
            "cancelled": self.cancelled,
            "error": self.error,
            "survival": self.stats,
        }


class LabelStudioUnavailableForSync(ConnectionError):
    """Sync could not reach Label Studio (a ConnectionError: the flows retry it with backoff)."""


def _reviewer(ann: dict) -> str | None:
    who = ann.get("completed_by")
    if isinstance(who, dict):
        return str(who.get("email") or who.get("username") or who.get("id"))[:200]
    return None if who is None else str(who)[:200]


def _when(ann: dict) -> dt.datetime | None:
    for k in ("updated_at", "created_at"):
        v = ann.get(k)
        if v:
            try:
                return dt.datetime.fromisoformat(str(v).replace("Z", "+00:00"))
            except ValueError:
                continue
    return None


def pull_reviews(
    client: LabelStudioClient,
    project: Project,
    session: Session,
    *,
    labeling: LabelingConfig | None = None,
    match_iou: float = 0.5,
) -> SyncResult:
    """Pull finished annotations, store them with survival figures, mark images reviewed."""
    labeling = labeling or LabelingConfig()
    result = SyncResult(project.id)
    try:
        tasks = client.annotated_tasks(project.id)
    except LabelStudioUnavailable as e:
        result.error = str(e)
        return result
    links = project_links(session, project.id)
    stored = reviews_by_annotation(
        session,
        [
            int(ann["id"])
            for task in tasks
            if int(task["id"]) in links
            for ann in task.get("annotations") or []
            if not ann.get("was_cancelled")
        ],
    )
    seen_stats = []
    changed: list = []  # new or edited reviews: their exemplars are upserted after the commit
    reviewed_images: set[int] = set()
    for task in tasks:
        result.tasks_seen += 1
        tid = int(task["id"])
        link = links.get(tid)
        if link is None:
            result.unknown_tasks.append(tid)
            continue
        preds = [p for p in task.get("predictions") or [] if isinstance(p, dict)]
        if not preds:  # the export lists prediction ids only: read the task's predictions
            preds = client.task_predictions(tid)
        # the prediction the link names: same base model version (it may carry suggested labels
        # of an exemplar set, `<base>+<exemplar version>`); the exact one first
        base = base_model_version(link.model_version)
        preds = sorted((p for p in preds if base_model_version(p.get("model_version") or "") == base),
                       key=lambda p: p.get("model_version") != link.model_version)
        proposals = regions_from_result(preds[0].get("result", []), labeling.from_name) if preds else []
        for ann in sorted(task.get("annotations") or [], key=lambda a: a.get("id", 0)):
            if ann.get("was_cancelled"):
                result.cancelled += 1
                continue
            final = regions_from_result(ann.get("result", []), labeling.from_name)
            stats = survival(proposals, final, neutral_label=labeling.neutral_label, match_iou=match_iou)
            stats["model_version"] = link.model_version
            outcome = save_review(
                session,
                stored,
                link,
                int(ann["id"]),
                ann.get("result", []),
                reviewer=_reviewer(ann),
                completed_at=_when(ann),
                survival=stats,
            )
            if outcome == "new":
                result.reviews_new += 1
            elif outcome == "updated":
                result.reviews_updated += 1
            if outcome in ("new", "updated"):
                changed.append(stored[int(ann["id"])])
            else:
                result.unchanged += 1
            result.per_task[tid] = stats
            seen_stats.append(stats)
            reviewed_images.add(link.image_id)
    mark_reviewed(session, reviewed_images)
    session.commit()
    result.stats = aggregate(seen_stats)
    if changed:  # learning from reviews: exemplars for label suggestions
        update = exemplars_from_reviews(session, changed, labeling=labeling, match_iou=match_iou)
        result.exemplars = asdict(update)
    return result


def pull_from_project(session: Session, settings: Settings, title: str) -> dict[str, Any]:
    """Bring the project's finished annotations back into SQL (with survival figures); the
    summary with the project's URL and `synced` (reviews new or updated)."""
    labeling = LabelingConfig()
    with LabelStudioClient.from_settings(settings) as client:
        project = client.find_or_create_project(title, labeling.xml(), update_config=False)
        result = pull_reviews(client, project, session, labeling=labeling)
    out = result.summary()
    out["project_url"] = project_url(client.url, project.id)
    out["synced"] = out.get("reviews_new", 0) + out.get("reviews_updated", 0)
    if result.error:
        raise LabelStudioUnavailableForSync(result.error)
    return out


def review_statistics(session: Session, *, model_version: str | None = None) -> dict[str, Any]:
    """Survival figures over the stored reviews (latest review per task), overall and per model version."""
    per_mv, sent = stored_survivals(session, model_version=model_version)
    by_version = {}
    for mv in sorted(set(sent) | set(per_mv)):
        agg = aggregate(per_mv.get(mv, []))
        by_version[mv] = {"tasks_sent": int(sent.get(mv, 0)), "tasks_reviewed": agg["tasks"], **agg}
    overall = aggregate([s for v in per_mv.values() for s in v])
    return {"tasks_sent": int(sum(sent.values())), "tasks_reviewed": overall["tasks"], **overall, "by_model_version": by_version}


__all__ = ["LabelStudioUnavailableForSync", "SyncResult", "pull_from_project", "pull_reviews", "review_statistics"]
