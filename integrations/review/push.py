"""Push segmentations for review: choose what to push, push it, record the links.

- `unsent_segmentations(session)`: segmented images whose latest segmentation has
  no review link for its model version yet (compared without the exemplar suffix);
- `push_unsent(session, client, project) -> PushResult`: pushes them with
  `push_segmentations` and records a `review_links` row after every batch that
  landed (image status `segmented` -> `sent_for_review`); images that could not be
  sent stay `segmented` for the next run;
- suggested labels (issue 12): every stored segment gets a kNN vote over the reviewed
  exemplars of its embedding model (`suggestions.SuggestionSource`, one index load or
  build per model per push). A confident suggestion is pushed with its taxonomy label and
  score, the rest keep the coloured proposal labels `region-1..6`; the prediction's score
  is the highest non-`safe` confidence (the Data Manager sorts by risk) and its
  `model_version` is `<engine model version>+<exemplar set version>`, which the review
  link records. No exemplars (or only another backbone's) leave the prediction as it was;
- `push_to_project(session, settings, title) -> dict`: the same from settings
  (client, labeling config, region policy, image mode), as the flow reports it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from integrations.db.granularity import decode_alternatives
from integrations.db.models import Image, SegmentationRecord
from integrations.db.reviews import latest_segmented, linked_keys, record_links, segment_confidences
from integrations.db.results import record_label_map
from integrations.label_studio.client import LabelStudioClient, Project
from integrations.label_studio.config import LabelConfigError, LabelingConfig, labels_in_config
from integrations.label_studio.images import ImageResolver
from integrations.label_studio.predictions import (
    RegionPolicy,
    alternatives_at_size,
    base_model_version,
    model_version_from_diagnostics,
)
from integrations.label_studio.push import PushItem, PushResult, push_segmentations
from integrations.review.suggestions import DEFAULT_THRESHOLD, SuggestionSource
from integrations.settings import Settings

log = logging.getLogger(__name__)


def segmentation_model_version(seg: SegmentationRecord) -> str:
    """The Label Studio model version of a stored segmentation (from its diagnostics and variant)."""
    d = dict(seg.diagnostics or {})
    d.setdefault("variant", seg.variant)
    return model_version_from_diagnostics(d)


def unsent_segmentations(
    session: Session, *, model_version: str | None = None, variant: str | None = None, limit: int | None = None
) -> list[tuple[Image, SegmentationRecord, str]]:
    """(image, its latest segmentation, model version) for segmented images without a review link.

    A link pushed with suggested labels (`<model version>+<exemplar set>`) counts for its base
    model version: a new exemplar set does not make an image unsent again."""
    linked = {(image_id, base_model_version(mv)) for image_id, mv in linked_keys(session)}
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


def stored_alternatives(seg: SegmentationRecord) -> dict[str, tuple[int, Any]]:
    """The coarser and finer partitions stored with a segmentation, at the label map's size
    (``{}`` for segmentations stored without them)."""
    return alternatives_at_size(decode_alternatives(seg.diagnostics), int(seg.mask_height), int(seg.mask_width))


def suggestion_labels(project: Project, labeling: LabelingConfig) -> list[str]:
    """The taxonomy labels a suggestion may carry: moderation labels that the project's config defines
    (a label the config lacks is logged and stays neutral)."""
    try:
        known = labels_in_config(project.label_config, labeling.from_name)
    except LabelConfigError as e:
        log.info("project %s: %s: suggestions stay neutral", project.id, e)
        return []
    missing = [lab for lab in labeling.moderation_labels if lab not in known]
    if missing:
        log.info("project %s: labels %s are not in its config: suggestions of them stay neutral", project.id, missing)
    return [lab for lab in labeling.moderation_labels if lab in known]


def push_items(
    session: Session,
    rows: list[tuple[Image, SegmentationRecord, str]],
    *,
    suggestions: SuggestionSource | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    taxonomy: list[str] | None = None,
    granularity: bool = False,
) -> list[PushItem]:
    """One PushItem per row; label maps are decoded (and suggestions computed) when the push reaches them.

    With `suggestions`, each item's prediction gets the confident suggested labels among
    `taxonomy` (`SuggestionSource.refine`). With `granularity`, the coarser and finer
    partitions stored with the segmentation go along as extra predictions."""
    conf = segment_confidences(session, [seg.id for _, seg, _ in rows])
    items = []
    for image, seg, mv in rows:
        refine = None
        if suggestions is not None:
            refine = suggestions.refine(seg.id, threshold=threshold, taxonomy=taxonomy or [])
        alternatives = (lambda s=seg: stored_alternatives(s)) if granularity else {}
        items.append(PushItem(image.id, image.uri, (lambda s=seg: record_label_map(s)), mv, conf.get(seg.id, {}),
                              seg.id, alternatives=alternatives, refine=refine))
    return items


def push_unsent(
    session: Session,
    client: LabelStudioClient,
    project: Project,
    *,
    model_version: str | None = None,
    variant: str | None = None,
    limit: int | None = None,
    suggest: bool = True,
    threshold: float = DEFAULT_THRESHOLD,
    index_dir: str | Path | None = None,
    granularity: bool = False,
    **push_options: Any,
) -> PushResult:
    """Push the unsent segmentations into `project`, recording links batch by batch.

    With `suggest`, confident suggested labels (kNN over the exemplars of the same embedding
    model, at or above `threshold`) replace the proposal labels; the exemplar indexes are
    read from / saved to `index_dir` and refreshed once per push. `push_options` go to
    `push_segmentations` as they are: labeling, policy, resolver, batch_size, retries, backoff.
    With `granularity`, the stored coarser and finer partitions are pushed as extra predictions.
    """
    rows = unsent_segmentations(session, model_version=model_version, variant=variant, limit=limit)
    labeling = push_options.get("labeling") or LabelingConfig()
    source = SuggestionSource(session, index_dir) if suggest and rows else None
    items = push_items(session, rows, suggestions=source, threshold=threshold,
                       taxonomy=suggestion_labels(project, labeling) if source else None, granularity=granularity)
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
            session, client, project, limit=limit, labeling=labeling, policy=policy, resolver=resolver,
            batch_size=batch_size, threshold=settings.suggestion_threshold, index_dir=settings.exemplar_index_dir,
            granularity=settings.label_studio_granularity,
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
    "stored_alternatives",
    "suggestion_labels",
    "unsent_segmentations",
]
