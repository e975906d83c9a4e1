"""Review: hand proposals to Label Studio and bring the reviews back.

- `push.py`: choose what to push (segmented, not yet linked for its model version),
  push it with `integrations.label_studio.push_segmentations`, record the links;
- `sync.py`: pull finished annotations, store them with their survival figures,
  and the figures over everything stored (`clasp report`);
- `exemplars.py`, `exemplar_index.py`, `suggestions.py`: learning from reviews
  (exemplars from synced reviews, nearest-neighbour label suggestions);
- `simulate.py`: simulated reviewers for `clasp eval --suggestions`.

The SQL lives in `integrations.db.reviews`, the Label Studio client in
`integrations.label_studio`; this package joins the two, and the flows call it.
"""

from integrations.review.push import push_to_project, push_unsent, unsent_segmentations
from integrations.review.sync import SyncResult, pull_from_project, pull_reviews, review_statistics

__all__ = [
    "SyncResult",
    "pull_from_project",
    "pull_reviews",
    "push_to_project",
    "push_unsent",
    "review_statistics",
    "unsent_segmentations",
]
