"""`push_for_review` and `sync_reviews`: hand proposals to Label Studio and bring reviews back.

The work is done by `integrations.review` (push.py, sync.py); these flows only
order the calls, retry transient failures (connection errors, 5xx) with
backoff, and publish a link to the project on the dashboard.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_table_artifact

from flows import resources, timeouts
from flows.retry import transient_task
from integrations.settings import load_settings
from integrations.review.push import push_to_project
from integrations.review.sync import pull_from_project


def label_studio_configured(settings: Any) -> bool:
    return bool(settings.label_studio_url) and settings.label_studio_token() is not None


@transient_task("push-segmentations", timeout_seconds=timeouts.PUSH)
def push_task(database_url: str, project: str, limit: int | None, batch_size: int) -> dict[str, Any]:
    with resources.session(database_url) as db:
        return push_to_project(db, load_settings(), project, limit=limit, batch_size=batch_size)


@transient_task("sync-reviews", timeout_seconds=timeouts.SYNC)
def sync_task(database_url: str, project: str) -> dict[str, Any]:
    with resources.session(database_url) as db:
        return pull_from_project(db, load_settings(), project)


def _link(result: dict[str, Any], project: str) -> None:
    url = result.get("project_url")
    if url:
        create_link_artifact(
            link=url,
            link_text=f"Label Studio project: {project}",
            key="label-studio-project",
            description="Open the project to review the proposed regions.",
        )


@flow(name="push_for_review")
def push_for_review(
    project: str | None = None,
    limit: int | None = None,
    batch_size: int = 50,
    database_url: str | None = None,
) -> dict[str, Any]:
    """Send segmented images (not yet sent) to the Label Studio project as brush pre-annotations."""
    logger = get_run_logger()
    settings = load_settings(database_url=database_url)
    project = project or settings.label_studio_project
    if not label_studio_configured(settings):
        logger.warning("Label Studio is not configured (LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY): nothing pushed")
        return {"skipped": True, "reason": "Label Studio not configured", "pushed": 0}
    result = push_task(settings.database_url, project, limit, batch_size)
    _link(result, project)
    create_table_artifact(
        table=[{"metric": k, "value": v} for k, v in result.items() if isinstance(v, (int, float, str))],
        key="push-for-review-summary",
        description=f"Pushed to Label Studio project {project!r}",
    )
    logger.info("pushed to %r: %s", project, result)
    return result


@flow(name="sync_reviews")
def sync_reviews(project: str | None = None, database_url: str | None = None) -> dict[str, Any]:
    """Bring finished reviews of the project back into SQL."""
    logger = get_run_logger()
    settings = load_settings(database_url=database_url)
    project = project or settings.label_studio_project
    if not label_studio_configured(settings):
        logger.warning("Label Studio is not configured: no reviews to sync")
        return {"skipped": True, "reason": "Label Studio not configured", "synced": 0}
    result = sync_task(settings.database_url, project)
    _link(result, project)
    logger.info("synced reviews of %r: %s", project, result)
    return result
