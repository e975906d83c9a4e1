"""Review adapters used by `flows.review` (moving to the `integrations.review` package).

What used to share this module now has a home of its own: the retry policy in
`flows.retry`, the per-process caches in `flows.resources`, the settings in
`integrations.settings.load_settings`, URL display in `integrations.db.session`.
"""

from __future__ import annotations

from typing import Any

from flows import resources
from integrations.settings import load_settings


def label_studio_project_url(base_url: str, project_id: int) -> str:
    return f"{base_url.rstrip('/')}/projects/{project_id}/data"


def push_segmentations(database_url: str, project: str, limit: int | None, batch_size: int) -> dict[str, Any]:
    """Push segmented, not yet pushed images into the project (created if absent)."""
    from integrations.db.reviews import push_for_review
    from integrations.label_studio.client import LabelStudioClient
    from integrations.label_studio.config import LabelingConfig
    from integrations.label_studio.images import ImageResolver
    from integrations.label_studio.predictions import RegionPolicy

    s = load_settings()
    labeling = LabelingConfig()
    # The resolver's variables as validated by Settings (not re-read from the environment).
    resolver = ImageResolver.from_env({
        name: str(value) for name, value in (
            ("CLASP_LABEL_STUDIO_IMAGE_MODE", s.label_studio_image_mode),
            ("CLASP_LABEL_STUDIO_DOCUMENT_ROOT", s.label_studio_document_root),
            ("CLASP_LABEL_STUDIO_DATA_URL_MAX_BYTES", s.label_studio_data_url_max_bytes),
            ("LABEL_STUDIO_URL", s.label_studio_url),
        ) if value is not None
    })
    policy = RegionPolicy(
        min_area=s.label_studio_min_area, small=s.label_studio_small_segments, max_regions=s.label_studio_max_regions
    )
    with LabelStudioClient.from_settings(s) as client:
        proj = client.find_or_create_project(project, labeling.xml())
        with resources.session(database_url) as db:
            result = push_for_review(
                db, client, proj, limit=limit, labeling=labeling, policy=policy, resolver=resolver, batch_size=batch_size
            )
    out = result.summary()
    out["image_mode"] = resolver.describe()
    out["project_url"] = label_studio_project_url(client.url, proj.id)
    out["pushed"] = out.get("sent", 0)
    return out


def sync_reviews(database_url: str, project: str) -> dict[str, Any]:
    """Bring the project's finished annotations back into SQL (with survival figures)."""
    from integrations.db.reviews import sync_reviews as _sync
    from integrations.label_studio.client import LabelStudioClient
    from integrations.label_studio.config import LabelingConfig

    s = load_settings()
    labeling = LabelingConfig()
    with LabelStudioClient.from_settings(s) as client:
        proj = client.find_or_create_project(project, labeling.xml(), update_config=False)
        with resources.session(database_url) as db:
            result = _sync(client, proj, db, labeling=labeling)
    out = result.summary()
    out["project_url"] = label_studio_project_url(client.url, proj.id)
    out["synced"] = out.get("reviews_new", 0) + out.get("reviews_updated", 0)
    if result.error:
        raise LabelStudioUnavailableForSync(result.error)
    return out


class LabelStudioUnavailableForSync(ConnectionError):
    """Sync could not reach Label Studio (a ConnectionError: retried with backoff)."""
