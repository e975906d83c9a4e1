"""Suggested labels for new proposals: a k-nearest-neighbour vote over reviewed exemplars.

For each proposal embedding, the ``k`` most similar exemplars of the same
embedding model vote with weight ``exp(cosine / TEMPERATURE)`` (the weighting of
the kNN evaluation of self-supervised ViTs, Wu et al. 2018 / DINO); the label
with the largest share wins and its share is the confidence. A suggestion at
or above the threshold (setting ``suggestion_threshold``) is pushed with that
label and score; anything else stays on the neutral label.

No exemplars, or exemplars of other backbones only, give neutral proposals and
one log line, never an error.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from integrations.review.exemplar_index import ExemplarIndex

log = logging.getLogger(__name__)

K = 10
TEMPERATURE = 0.07
# Chosen by measurement (`clasp eval --suggestions`, classic backbone, F = 0.5, seeds 0-9, README):
# on COCO-Stuff-27 only the suggestions at >= 0.9 were more accurate than all of them
# (24.2 % on 12.5 % coverage vs 12.4 % overall); lower thresholds were no better than the overall top-1.
DEFAULT_THRESHOLD = 0.9
SAFE_LABEL = "safe"


@dataclass(frozen=True)
class Suggestion:
    """The vote for one proposal; ``label`` is None when there was nothing to vote with."""

    label: str | None
    confidence: float  # share of the vote, 0..1
    neighbours: int = 0

    def confident(self, threshold: float) -> bool:
        return self.label is not None and self.confidence >= threshold


NEUTRAL = Suggestion(None, 0.0, 0)


def knn_vote(scores: np.ndarray, labels: Iterable[str | None], *, temperature: float = TEMPERATURE) -> Suggestion:
    """Similarity-weighted vote of one proposal's neighbours.

    Parameters
    ----------
    scores : ndarray (k,)
        Cosine similarities (NaN for padding).
    labels : sequence of str or None
        The neighbours' labels (None for padding).
    temperature : float
        Weight ``exp(score / temperature)``; smaller trusts the closest more.

    Returns
    -------
    Suggestion
        Winning label (ties: the alphabetically first) and its share of the weight.
    """
    weights: dict[str, float] = {}
    s = np.asarray(scores, dtype=np.float64)
    valid = [(float(x), lab) for x, lab in zip(s, labels) if lab is not None and np.isfinite(x)]
    if not valid:
        return NEUTRAL
    top = max(x for x, _ in valid)
    for x, lab in valid:
        weights[lab] = weights.get(lab, 0.0) + float(np.exp((x - top) / temperature))  # shifted: no overflow
    total = sum(weights.values())
    label = min(weights, key=lambda name: (-weights[name], name))
    return Suggestion(label, weights[label] / total, len(valid))


def suggest(index: ExemplarIndex | None, embeddings: np.ndarray | None, *, k: int = K,
            temperature: float = TEMPERATURE, where: str = "") -> list[Suggestion]:
    """One suggestion per embedding row (neutral ones when there is no index or no embedding)."""
    n = 0 if embeddings is None else len(embeddings)
    if index is None or index.size == 0:
        log.info("%sno exemplars for this embedding model yet: %d proposal(s) stay neutral", where, n)
        return [NEUTRAL] * n
    if embeddings is None or n == 0:
        return []
    emb = np.asarray(embeddings, dtype=np.float32)
    nb = index.search(emb, k)
    return [
        NEUTRAL if not np.any(emb[r]) else knn_vote(nb.scores[r], nb.labels[r], temperature=temperature)
        for r in range(n)
    ]


def task_score(suggestions: Iterable[Suggestion], *, threshold: float, safe_label: str = SAFE_LABEL) -> float:
    """Highest confidence of a confident suggestion that is not ``safe``: the queue's risk order."""
    return max((s.confidence for s in suggestions if s.confident(threshold) and s.label != safe_label), default=0.0)


def apply_suggestions(
    prediction: dict[str, Any],
    region_suggestions: dict[str, Suggestion],
    *,
    threshold: float,
    exemplar_version: str,
    taxonomy: Iterable[str],
    safe_label: str = SAFE_LABEL,
) -> dict[str, Any]:
    """A copy of a Label Studio prediction with the confident suggestions as region labels.

    ``region_suggestions`` maps a result region id (``clasp-<g>``) to its suggestion.
    Confident ones get the label and their confidence as score; the others keep
    the neutral label. The prediction score becomes the highest non-``safe``
    confidence, and ``model_version`` gets ``+<exemplar_version>`` (cut to 100).
    Labels outside ``taxonomy`` stay neutral (logged).
    """
    allowed = set(taxonomy)
    out = dict(prediction)
    result = []
    used = []
    for region in prediction.get("result", []):
        region = dict(region)
        sug = region_suggestions.get(region.get("id"))
        if sug is not None and sug.confident(threshold):
            if sug.label in allowed:
                region["value"] = {**region["value"], "brushlabels": [sug.label]}
                region["score"] = round(sug.confidence, 6)
                used.append(sug)
            else:
                log.info("suggested label %r is not in the project's config: region %s stays neutral",
                         sug.label, region.get("id"))
        result.append(region)
    out["result"] = result
    out["score"] = round(task_score(used, threshold=threshold, safe_label=safe_label), 6)
    out["model_version"] = f"{prediction.get('model_version', '')}+{exemplar_version}"[:100]
    return out


def region_suggestion_map(regions: Iterable[Any], suggestions_by_segment: dict[int, Suggestion]
                          ) -> dict[str, Suggestion]:
    """Suggestion of each pushed region (``Region``: ``region_id`` ``clasp-<g>``, member segments
    ``labels``): that of segment ``g``, the one the smaller members were merged into."""
    out = {}
    for r in regions:
        g = int(str(r.region_id).rsplit("-", 1)[-1])
        if g in suggestions_by_segment:
            out[r.region_id] = suggestions_by_segment[g]
    return out


class SuggestionSource:
    """Suggestions for stored segmentations during one push: each embedding model's exemplar
    index is loaded (or built) and refreshed from SQL once, on first use, then reused.

    Parameters
    ----------
    session : Session
        Where the segments' embeddings and the exemplars are read.
    index_dir : path, optional
        Where the persisted indexes live (setting ``exemplar_index_dir``); None builds in memory.
    k : int
        Neighbours per vote.
    """

    def __init__(self, session: Any, index_dir: Any = None, *, k: int = K):
        self.session = session
        self.index_dir = index_dir
        self.k = k
        self._indexes: dict[str, ExemplarIndex | None] = {}

    def index(self, model: str) -> ExemplarIndex | None:
        """The exemplar index of ``model`` (None when it has no exemplar), built once per source."""
        if model not in self._indexes:
            from integrations.review.exemplar_index import load_or_build

            self._indexes[model] = load_or_build(self.session, model, self.index_dir)
        return self._indexes[model]

    @property
    def builds(self) -> int:
        """How many embedding models' indexes were loaded or built."""
        return len(self._indexes)

    def for_segmentation(self, segmentation_id: int) -> tuple[dict[int, Suggestion], str | None]:
        """Suggestion of every stored segment (segment label -> Suggestion) and the exemplar set's
        version (None when there is no exemplar of this embedding model: all neutral)."""
        from sqlalchemy import select

        from integrations.db.models import SegmentRow

        rows = self.session.execute(
            select(SegmentRow.label, SegmentRow.embedding, SegmentRow.embedding_model)
            .where(SegmentRow.segmentation_id == segmentation_id).order_by(SegmentRow.label)).all()
        with_emb = [(lab, emb, model) for lab, emb, model in rows if emb is not None]
        out = {int(lab): NEUTRAL for lab, _, _ in rows}
        if not with_emb:
            log.info("segmentation %s: no region embeddings stored: its proposals stay neutral", segmentation_id)
            return out, None
        model = with_emb[0][2]
        first_use = model not in self._indexes
        index = self.index(model)
        if index is None or index.size == 0:  # one log line per model and push, not one per image
            if first_use:
                log.info("no exemplars of embedding model %s yet: its proposals stay neutral", model)
            return out, None
        got = suggest(index, np.stack([np.asarray(e, dtype=np.float32) for _, e, _ in with_emb]), k=self.k,
                      where=f"segmentation {segmentation_id} ({model}): ")
        out.update({int(lab): s for (lab, _, _), s in zip(with_emb, got)})
        return out, index.version

    def refine(self, segmentation_id: int, *, threshold: float, taxonomy: Iterable[str],
               safe_label: str = SAFE_LABEL):
        """A ``PushItem.refine`` for one stored segmentation: the built prediction with the
        confident suggestions as labels (``apply_suggestions``); unchanged, with its base
        model_version, when there is no exemplar of the segmentation's embedding model."""
        allowed = list(taxonomy)

        def refine(built: Any) -> dict[str, Any]:
            by_segment, version = self.for_segmentation(segmentation_id)
            if version is None:
                return built.prediction
            return apply_suggestions(built.prediction, region_suggestion_map(built.regions, by_segment),
                                     threshold=threshold, exemplar_version=version, taxonomy=allowed,
                                     safe_label=safe_label)

        return refine


def segmentation_suggestions(session: Any, segmentation_id: int, index_dir: Any = None, *, k: int = K
                             ) -> tuple[dict[int, Suggestion], str | None]:
    """Suggestion of every stored segment of one segmentation (segment label -> Suggestion) and the
    exemplar set's version (None when there is no exemplar of this embedding model: all neutral).
    For many segmentations, use one ``SuggestionSource`` (one index build)."""
    return SuggestionSource(session, index_dir, k=k).for_segmentation(segmentation_id)


class LiveSuggestions:
    """Suggested labels for a server that runs for days (the ML backend): the prediction built for
    a fresh Segmentation gets its confident suggestions (`apply_suggestions`).

    Each embedding model's exemplar index is built from SQL on first use and refreshed
    (new and relabelled exemplars, `ExemplarIndex.refresh`) when it is older than
    `refresh_seconds`, so reviews synced while the server runs are used within that time.
    When the database cannot be read, the last index read is used (none: no suggestions),
    and the read is tried again after `refresh_seconds`; proposals are always answered.
    Indexes stay in memory (the push's files under `exemplar_index_dir` are not written
    from here). Call it as `(prediction, regions, segmentation, allowed_labels) -> prediction`.
    """

    def __init__(self, database_url: str, *, threshold: float = DEFAULT_THRESHOLD, refresh_seconds: float = 60.0,
                 k: int = K, clock=time.monotonic):
        from integrations.db.session import make_session_factory

        self.sessions = make_session_factory(database_url)
        self.threshold = float(threshold)
        self.refresh_seconds = float(refresh_seconds)
        self.k = k
        self._clock = clock
        self._indexes: dict[str, tuple[ExemplarIndex | None, float]] = {}
        self._lock = threading.Lock()  # requests run on a thread pool

    def index(self, model: str) -> ExemplarIndex | None:
        """The exemplar index of `model` (None while it has no exemplar), refreshed when stale."""
        with self._lock:
            index, read_at = self._indexes.get(model, (None, None))
            now = self._clock()
            if read_at is not None and now - read_at < self.refresh_seconds:
                return index
            try:
                with self.sessions() as session:
                    if index is None:
                        index = ExemplarIndex.build(session, model)
                    else:
                        index.refresh(session)
            except Exception as exc:  # noqa: BLE001 - the database away: serve with what is known
                log.warning("exemplars of %s not read (%s: %s): %s; trying again in %.0f s", model,
                            type(exc).__name__, exc, "suggestions from the last read" if index is not None
                            else "proposals without suggestions", self.refresh_seconds)
            self._indexes[model] = (index, now)
            return index

    def __call__(self, prediction: dict[str, Any], regions: list[Any], segmentation: Any,
                 allowed_labels: list[str]) -> dict[str, Any]:
        from integrations.db.embeddings import embedding_model

        emb = getattr(segmentation, "region_embeddings", None)
        if emb is None or len(emb) == 0:
            return prediction
        index = self.index(embedding_model(segmentation.diagnostics))
        if index is None or index.size == 0:
            return prediction
        by_segment = dict(enumerate(suggest(index, np.asarray(emb, dtype=np.float32), k=self.k)))
        return apply_suggestions(prediction, region_suggestion_map(regions, by_segment), threshold=self.threshold,
                                 exemplar_version=index.version, taxonomy=allowed_labels)
