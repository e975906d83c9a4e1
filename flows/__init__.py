"""Prefect flows of the moderation pipeline: they order the work, retry what is transient, report.

- `flows.ingest.ingest`: register images from a source as waiting;
- `flows.segment.segment`: claim batches, run the engine, store masks and diagnostics;
- `flows.review.push_for_review` / `flows.review.sync_reviews`: Label Studio hand-off;
- `flows.pipeline.moderation_pipeline`: the parent flow (`clasp run`, the scheduled queue).

Shared by all of them: `flows.retry` (the one retry policy: `transient_task`) and
`flows.resources` (the per-process Segmenter and database-engine caches). Settings
come from `integrations.settings.load_settings`.

Flows only orchestrate: SQL lives in `integrations.db`, HTTP in `integrations.sources`
and `integrations.label_studio`, array maths in `clasp_engine`. Deployments: prefect.yaml.
"""

from flows import run_logs as _run_logs  # integration logs reach the flow run's logs

_run_logs.attach()
