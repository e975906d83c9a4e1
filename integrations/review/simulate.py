"""Simulated reviews on a labelled dataset: how good would the suggestions be?

A fraction of the images (chosen with a fixed seed) is "reviewed": each of their
proposals gets its majority ground-truth class as label and becomes an exemplar,
through the same SQL table and index as real reviews (an in-memory SQLite
database). The proposals of the other images get suggestions from those
exemplars alone; the records say how often the suggestion is the proposal's
majority class.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import numpy as np

from integrations.review.suggestions import K, TEMPERATURE, suggest

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SEED = 0
SIM_MODEL = "simulation"


@dataclass
class Proposal:
    image: str
    region: int
    true: str | None  # majority ground-truth class; None when mostly ignore pixels
    embedding: np.ndarray | None


@dataclass
class SuggestionRecord:
    image: str
    region: int
    true: str | None
    suggested: str | None
    confidence: float
    reviewed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def proposal_truth(pred: np.ndarray, gt: np.ndarray, class_names: list[str], ignore: int = 255
                   ) -> dict[int, str | None]:
    """Majority ground-truth class of every predicted segment (None when over half its pixels are ignore)."""
    pred = np.asarray(pred).astype(np.int64).ravel()
    gt = np.asarray(gt).astype(np.int64).ravel()
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
    n = len(class_names)
    k = int(pred.max()) + 1 if pred.size else 0
    slot = np.where(gt == ignore, n, np.clip(gt, 0, n))  # n = the ignore column
    table = np.bincount(pred * (n + 1) + slot, minlength=k * (n + 1)).reshape(k, n + 1)
    out: dict[int, str | None] = {}
    for s in range(k):
        total = table[s].sum()
        if total == 0:
            continue
        if table[s, n] * 2 > total or table[s, :n].sum() == 0:
            out[s] = None
        else:
            out[s] = class_names[int(np.argmax(table[s, :n]))]
    return out


def reviewed_images(images: list[str], fraction: float, seed: int = SEED) -> set[str]:
    """The images a simulated reviewer labels: round(fraction * n), a seeded permutation."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"reviewed fraction {fraction}: must be between 0 and 1")
    order = sorted(set(images))
    n = int(round(fraction * len(order)))
    perm = np.random.default_rng(seed).permutation(len(order))
    return {order[i] for i in perm[:n]}


def simulate(proposals: list[Proposal], fraction: float, *, seed: int = SEED, k: int = K,
             temperature: float = TEMPERATURE) -> list[SuggestionRecord]:
    """Label the proposals of a seeded fraction of the images; suggest for the rest from them alone."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from integrations.db.models import Base
    from integrations.review.exemplar_index import ExemplarIndex
    from integrations.review.exemplars import insert_exemplars

    reviewed = reviewed_images([p.image for p in proposals], fraction, seed)
    exemplars = [p for p in proposals if p.image in reviewed and p.true is not None and p.embedding is not None]
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    index = None
    with Session(engine) as session:
        if exemplars:
            insert_exemplars(session, [p.true for p in exemplars], np.stack([p.embedding for p in exemplars]),
                             SIM_MODEL)
            index = ExemplarIndex.build(session, SIM_MODEL)
    engine.dispose()
    todo = [p for p in proposals if p.image not in reviewed]
    emb = [p.embedding if p.embedding is not None else None for p in todo]
    dims = {e.shape[0] for e in emb if e is not None}
    dim = dims.pop() if dims else 1
    matrix = np.stack([e if e is not None else np.zeros(dim, np.float32) for e in emb]) if emb else None
    got = suggest(index, matrix, k=k, temperature=temperature, where="simulation: ")
    by_key = {(p.image, p.region): s for p, s in zip(todo, got)}
    records = []
    for p in proposals:
        if p.image in reviewed:
            records.append(SuggestionRecord(p.image, p.region, p.true, p.true, 1.0 if p.true else 0.0, True))
        else:
            s = by_key[(p.image, p.region)]
            records.append(SuggestionRecord(p.image, p.region, p.true, s.label, round(float(s.confidence), 6),
                                            False))
    return records


def summary(records: Iterable[SuggestionRecord], thresholds: Iterable[float] = THRESHOLDS) -> dict[str, Any]:
    """Top-1 accuracy over unreviewed proposals with a true class, the majority baseline, and per threshold."""
    records = list(records)
    scored = [r for r in records if not r.reviewed and r.true is not None]
    train = Counter(r.true for r in records if r.reviewed and r.true is not None)
    majority = min(train, key=lambda c: (-train[c], c)) if train else None
    n = len(scored)

    def acc(rs: list[SuggestionRecord]) -> float | None:
        return round(sum(r.suggested == r.true for r in rs) / len(rs), 4) if rs else None

    per_threshold = []
    for t in thresholds:
        covered = [r for r in scored if r.suggested is not None and r.confidence >= t]
        per_threshold.append({"threshold": t, "coverage": round(len(covered) / n, 4) if n else None,
                              "accuracy": acc(covered), "n": len(covered)})
    return {
        "n_proposals": len(records),
        "n_reviewed": sum(r.reviewed for r in records),
        "n_exemplars": sum(train.values()),
        "n_scored": n,
        "top1_accuracy": acc(scored),
        "majority_class": majority,
        "majority_baseline": round(sum(r.true == majority for r in scored) / n, 4) if n and majority else None,
        "thresholds": per_threshold,
    }
