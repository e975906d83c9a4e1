"""Push segmentations for review: choose what to push, push it, record the links.

- `unsent_segmentations(session)`: segmented images whose latest segmentation has
  no review link for its model version yet;
- `push_unsent(session, client, project) -> PushResult`: pushes them with
  `push_segmentations` and records a `review_links` row after every batch that
  landed (image status `segmented` -> `sent_for_review`); images that could not be
  sent stay `segmented` for the next run;
- `push_to_project(session, settings, title) -> dict`: the same from settings
  (client, labeling config, region policy, image mode), as the flow reports it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from integrations.db.models import Image, SegmentationRecord
from integrations.db.reviews import latest_segmented, linked_keys, record_links, segment_confidences
from integrations.db.results import record_label_map
from integrations.label_studio.client import LabelStudioClient, Project
from integrations.label_studio.config import LabelingConfig
from integrations.label_studio.images import ImageResolver
from integrations.label_studio.predictions import RegionPolicy, model_version_from_diagnostics
from integrations.label_studio.push import PushItem, PushResult, push_segmentations
from integrations.settings import Settings


def segmentation_model_version(seg: SegmentationRecord) -> str:
    """The Label Studio model version of a stored segmentation (from its diagnostics and variant)."""
    d = dict(seg.diagnostics or {})
    d.setdefault("variant", seg.variant)
    return model_version_from_diagnostics(d)


def unsent_segmentations(
    session: Session, *, model_version: str | None = None, variant: str | None = None, limit: int | None = None
) -> list[tuple[Image, SegmentationRecord, str]]:
    """(image, its latest segmentation, model version) for segmented images without a review link."""
    linked = linked_keys(session)
    out = []
    for image, seg in latest_segmented(session, variant=variant):
        mv = segmentation_model_version(seg)
        if model_version and mv != model_version:
            continue
        if (image.id, mv) in linked:
            continue
        out.append((image, seg, mv))
        if limit and len(out) >= limit:
            break
    return out


def push_items(session: Session, rows: list[tuple[Image, SegmentationRecord, str]]) -> list[PushItem]:
    """One PushItem per row; label maps are decoded when the push reaches them."""
    conf = segment_confidences(session, [seg.id for _, seg, _ in rows])
    return [
        PushItem(image.id, image.uri, (lambda s=seg: record_label_map(s)), mv, conf.get(seg.id, {}), seg.id)
        for image, seg, mv in rows
    ]


def push_unsent(
    session: Session,
    client: LabelStudioClient,
    project: Project,
    *,
    model_version: str | None = None,
    variant: str | None = None,
    limit: int | None = None,
    **push_options: Any,
) -> PushResult:
    """Push the unsent segmentations into `project`, recording links batch by batch.

    `push_options` go to `push_segmentations` as they are: labeling, policy,
    resolver, batch_size, retries, backoff.
    """
    rows = unsent_segmentations(session, model_version=model_version, variant=variant, limit=limit)
    items = push_items(session, rows)
    session.commit()  # end the read transaction before talking to Label Studio (SQLite write lock)
    return push_segmentations(client, project, items, on_batch=lambda recs: record_links(session, recs), **push_options)


def project_url(base_url: str, project_id: int) -> str:
    """The page of a Label Studio project's tasks."""
    return f"{base_url.rstrip('/')}/projects/{project_id}/data"


def push_to_project(
    session: Session, settings: Settings, title: str, *, limit: int | None = None, batch_size: int = 50
) -> dict[str, Any]:
    """Push unsent segmentations into the project `title` (created if absent); the summary
    with the image mode, the project's URL and `pushed` (tasks sent now)."""
    labeling = LabelingConfig()
    resolver = ImageResolver.from_env()
    policy = RegionPolicy(
        min_area=settings.label_studio_min_area,
        small=settings.label_studio_small_segments,
        max_regions=settings.label_studio_max_regions,
    )
    with LabelStudioClient.from_settings(settings) as client:
        project = client.find_or_create_project(title, labeling.xml())
        result = push_unsent(
            session, client, project, limit=limit, labeling=labeling, policy=policy, resolver=resolver, batch_size=batch_size
        )
    out = result.summary()
    out["image_mode"] = resolver.describe()
    out["project_url"] = project_url(client.url, project.id)
    out["pushed"] = out.get("sent", 0)
    return out


__all__ = [
    "project_url",
    "push_items",
    "push_to_project",
    "push_unsent",
    "segmentation_model_version",
    "unsent_segmentations",
]
