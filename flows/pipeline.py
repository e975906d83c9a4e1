"""`moderation_pipeline`: ingest -> segment -> push_for_review -> sync_reviews, as subflows.

Scheduled by the moderation team (see prefect.yaml), or run in-process by
`clasp run SOURCE` on a laptop. Without Label Studio configured it still
ingests, segments and stores, and says so.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows import children, gpu_slots, resources
from flows.ingest import ingest
from flows.review import label_studio_configured, push_for_review, sync_reviews
from flows.retry import transient_task
from flows.segment import segment
from integrations.db.session import display_url
from integrations.settings import check_count, load_settings


@task(name="run-segment-deployment", cache_policy=NO_CACHE)  # waits as long as the child runs (its own limits apply)
def run_segment_deployment(deployment: str, parameters: dict[str, Any], index: int) -> dict[str, Any]:
    """Trigger one `segment` run on the GPU pool and wait for it to finish."""
    from prefect.deployments import run_deployment

    run = run_deployment(deployment, parameters=parameters, flow_run_name=None, as_subflow=True)
    state = run.state
    return {"flow_run_id": str(run.id), "name": run.name, "state": state.type.value if state else None}


@transient_task("status-counts")
def status_counts(database_url: str) -> dict[str, int]:
    """Images per status, every status present (zeros included)."""
    from integrations.db.stats import counts_by_status

    with resources.session(database_url) as session:
        return counts_by_status(session)


@flow(name="moderation_pipeline", task_runner=ThreadPoolTaskRunner(max_workers=8))
def moderation_pipeline(
    source: str | list[str] | None = None,
    batch_size: int | None = None,
    limit: int | None = None,
    backbone: str | None = None,
    variant: str | None = None,
    weights: str | None = None,
    max_side: int | None = None,
    device: str | None = None,
    project: str | None = None,
    database_url: str | None = None,
    output_dir: str | None = None,
    overlays: bool = True,
    review: bool = True,
    segment_deployment: str | None = None,
    segment_runs: int | None = None,
    hash_content: bool = False,
) -> dict[str, Any]:
    """Register `source` (if given), segment what waits, push proposals and sync reviews (if Label Studio is set).

    In-process (`clasp run`), segmentation is a subflow of this run. Deployed,
    `segment_deployment` (e.g. "segment/gpu") fans it out: `segment_runs` runs
    of that deployment on the GPU pool, which share the queue through the
    database claim.
    """
    # database_url is passed on as given (None: each flow reads CLASP_DATABASE_URL), so a
    # password from the environment never becomes a flow parameter on the dashboard.
    check_count("limit", limit, 0)
    check_count("segment_runs", segment_runs, 1)
    logger = get_run_logger()
    settings = load_settings(
        database_url=database_url, batch_size=batch_size, output_dir=output_dir,
        backbone=backbone, variant=variant, weights=weights, max_side=max_side, device=device,
    )
    url = settings.database_url
    result: dict[str, Any] = {}
    if source:
        result["ingest"] = ingest(source, limit=limit, database_url=database_url, hash_content=hash_content)
    seg_params = dict(
        batch_size=batch_size,
        limit=limit,
        backbone=backbone,
        variant=variant,
        weights=weights,
        max_side=max_side,
        device=device,
        overlays=overlays,
    )
    if segment_deployment:
        # Deployed: the GPU workers read the database URL and output dir from their own environment.
        params = {k: v for k, v in seg_params.items() if v is not None}
        n_runs = segment_runs if segment_runs is not None else gpu_slots.gpu_slots()
        futures = [run_segment_deployment.submit(segment_deployment, params, i) for i in range(max(1, n_runs))]
        runs = [f.result() for f in futures]
        failed_runs = children.failed_children(runs)
        counts = status_counts(url)
        result["segment"] = {"runs": runs, "images": counts, "done": counts.get("segmented", 0), "failed": counts.get("failed", 0)}
    else:
        result["segment"] = segment(database_url=database_url, output_dir=output_dir, **seg_params)
    project = project or settings.label_studio_project
    if review and label_studio_configured(settings):
        result["push"] = push_for_review(project=project, database_url=database_url)
        result["sync"] = sync_reviews(project=project, database_url=database_url)
    else:
        reason = "disabled" if not review else "Label Studio not configured (set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)"
        logger.info("review hand-off skipped: %s", reason)
        result["review"] = {"skipped": True, "reason": reason}
    create_markdown_artifact(
        key="moderation-pipeline",
        markdown=_markdown(result, display_url(url), settings, project),
        description="What this run did and where to look",
    )
    if segment_deployment and failed_runs:
        from prefect.states import Failed

        message = children.failure_message(failed_runs, len(runs))
        logger.error(message)
        create_markdown_artifact(key="segment-runs-failed", markdown=children.failure_markdown(failed_runs, len(runs)),
                                 description="Segment runs that did not complete")
        return Failed(message=message, data=result)
    return result


def _markdown(result: dict[str, Any], url: str, settings: Any, project: str) -> str:
    seg = result["segment"]
    lines = ["## Moderation pipeline", ""]
    if "ingest" in result:
        ing = result["ingest"]
        lines.append(f"- registered **{ing['registered']}** new of {ing['found']} found")
    if "images_per_second" in seg:
        lines.append(f"- segmented **{seg['done']}**, failed **{seg['failed']}** ({seg['images_per_second']:.2f} images/s)")
    else:
        lines.append(f"- segment runs: {seg['runs']}; images by status: {seg['images']}")
    lines.append(f"- database: `{url}` (`clasp status`)")
    lines.append(f"- overlays: `{settings.output_dir}/overlays/`")
    if "push" in result:
        link = result["push"].get("project_url") or settings.label_studio_url
        lines.append(f"- Label Studio: [{project}]({link})")
    else:
        lines.append(f"- Label Studio: {result['review']['reason']}")
    return "\n".join(lines) + "\n"
