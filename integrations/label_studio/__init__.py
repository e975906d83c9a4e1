"""Label Studio integration: labeling config, brush RLE, predictions, client, push, review figures.

Entry points for the flows (plain functions):
- `push_segmentations(client, project, items) -> PushResult` (this package, no SQL);
- `integrations.label_studio.backend.serve(host, port)`: the ML backend (`clasp label-studio backend`);
- `integrations.db.reviews.push_for_review(session, client, ...)` and
  `integrations.db.reviews.sync_reviews(client, project, session) -> SyncResult` (SQL glue).
"""

from integrations.label_studio.client import (
    LabelStudioAuthError,
    LabelStudioClient,
    LabelStudioError,
    LabelStudioResponseError,
    LabelStudioUnavailable,
    Project,
    RetryPolicy,
)
from integrations.label_studio.config import DEFAULT_TAXONOMY, NEUTRAL_LABEL, LabelConfigError, LabelingConfig
from integrations.label_studio.images import ImageModeError, ImageResolver
from integrations.label_studio.predictions import (
    RegionPolicy,
    build_prediction,
    colour_regions,
    granularity_alternatives,
    model_version,
)
from integrations.label_studio.push import PushItem, PushRecord, PushResult, push_segmentations

__all__ = [
    "DEFAULT_TAXONOMY",
    "NEUTRAL_LABEL",
    "ImageModeError",
    "ImageResolver",
    "LabelConfigError",
    "LabelStudioAuthError",
    "LabelStudioClient",
    "LabelStudioError",
    "LabelStudioResponseError",
    "LabelStudioUnavailable",
    "LabelingConfig",
    "Project",
    "PushItem",
    "PushRecord",
    "PushResult",
    "RegionPolicy",
    "RetryPolicy",
    "build_prediction",
    "colour_regions",
    "granularity_alternatives",
    "model_version",
    "push_segmentations",
]
