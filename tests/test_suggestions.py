"""kNN suggestions: the vote, the exemplar index (exact and IVF), refreshes, SQLite vs PostgreSQL."""

from __future__ import annotations

import numpy as np
import pytest
from conftest_db import pg_url, sqlite_url  # noqa: F401
from sqlalchemy import update
from sqlalchemy.orm import Session

from integrations.db.models import Exemplar
from integrations.review.exemplar_index import ExemplarIndex, index_path, load_or_build
from integrations.review.exemplars import deactivate_exemplars, insert_exemplars
from integrations.review.suggestions import Suggestion, apply_suggestions, knn_vote, suggest, task_score

LABELS = ["drugs", "safe", "violence", "weapon"]


def _clusters(rng, n_per, d=16, spread=0.3):
    centres = rng.normal(size=(len(LABELS), d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.repeat(centres, n_per, 0) + spread * rng.normal(size=(len(LABELS) * n_per, d)) / np.sqrt(d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), [lab for lab in LABELS for _ in range(n_per)], centres.astype(np.float32)


def test_knn_vote_weights_similar_neighbours_and_breaks_ties_by_name():
    s = knn_vote(np.array([0.9, 0.5, 0.5, 0.5]), ["weapon", "safe", "safe", "safe"], temperature=0.07)
    assert s.label == "weapon" and s.confidence > 0.9 and s.neighbours == 4  # exp(0.4/0.07) >> 3
    s = knn_vote(np.array([0.9, 0.5, 0.5, 0.5]), ["weapon", "safe", "safe", "safe"], temperature=10.0)
    assert s.label == "safe" and s.confidence == pytest.approx(0.75, abs=0.02)  # nearly a plain count
    s = knn_vote(np.array([0.7, 0.7]), ["weapon", "drugs"])
    assert s.label == "drugs" and s.confidence == pytest.approx(0.5)
    assert knn_vote(np.array([np.nan]), [None]).label is None


def test_suggestions_on_synthetic_clusters_recover_the_cluster_label(sqlite_url):  # noqa: F811
    from integrations.db.schema import upgrade

    upgrade(sqlite_url, "head")
    rng = np.random.default_rng(0)
    x, labels, centres = _clusters(rng, 30)
    from sqlalchemy import create_engine

    with Session(create_engine(sqlite_url)) as s:
        insert_exemplars(s, labels, x, "m")
        index = ExemplarIndex.build(s, "m")
    q = centres + 0.05 * rng.normal(size=centres.shape).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    got = suggest(index, q)
    assert [g.label for g in got] == LABELS
    assert all(g.confidence > 0.9 for g in got)
    assert suggest(index, np.zeros((1, 16), np.float32))[0].label is None  # a segment with no embedding


def _answers(url, x, labels, queries, *, exact_max, chunks):
    """Suggestions after inserting the exemplars in `chunks` pieces, refreshing between them."""
    from sqlalchemy import create_engine

    from integrations.db.schema import upgrade

    upgrade(url, "head")
    engine = create_engine(url)
    index = None
    with Session(engine) as s:
        for part in np.array_split(np.arange(len(x)), chunks):
            insert_exemplars(s, [labels[i] for i in part], x[part], "m")
            if index is None:
                index = ExemplarIndex.build(s, "m", exact_max=exact_max)
            else:
                index.refresh(s)
        fresh = ExemplarIndex.build(s, "m", exact_max=exact_max)
    engine.dispose()
    nb, nb_fresh = index.search(queries, 10), fresh.search(queries, 10)
    np.testing.assert_array_equal(nb.ids, nb_fresh.ids)  # incremental refreshes == a build from scratch
    return index.kind, nb.ids, nb.scores, [g.label for g in suggest(index, queries)]


@pytest.mark.postgres
@pytest.mark.parametrize("exact_max", [10_000, 100])  # exact search; IVF lists above 100 exemplars
def test_sqlite_and_postgres_give_the_same_suggestions(sqlite_url, pg_url, exact_max):  # noqa: F811
    rng = np.random.default_rng(1)
    x, labels, _ = _clusters(rng, 60, spread=0.8)
    x = np.concatenate([x, x[:5]])  # exact duplicates: ties, broken by the lower id
    labels = labels + ["weapon"] * 5
    queries = np.concatenate([x[:5], _clusters(rng, 5, spread=0.8)[0]])
    lite = _answers(sqlite_url, x, labels, queries, exact_max=exact_max, chunks=3)
    pg = _answers(pg_url, x, labels, queries, exact_max=exact_max, chunks=1)
    assert lite[0] == pg[0] == ("flat" if exact_max > 1000 else "ivf")
    np.testing.assert_array_equal(lite[1], pg[1])
    np.testing.assert_array_equal(lite[2], pg[2])
    assert lite[3] == pg[3]
    first = lite[1][0]
    assert first[0] < first[1]  # a query equal to two stored vectors: the lower id first


def test_refresh_follows_relabels_and_deactivations_and_persists(sqlite_url, tmp_path):  # noqa: F811
    from sqlalchemy import create_engine

    from integrations.db.schema import upgrade

    upgrade(sqlite_url, "head")
    rng = np.random.default_rng(2)
    x, labels, centres = _clusters(rng, 10)
    engine = create_engine(sqlite_url)
    with Session(engine) as s:
        insert_exemplars(s, labels, x, "m")
        index = load_or_build(s, "m", tmp_path)
        assert index_path(tmp_path, "m").is_file() and index.size == 40
        version = index.version
        weapon = [e for e, in s.execute(Exemplar.__table__.select().with_only_columns(Exemplar.id)
                                        .where(Exemplar.label == "weapon"))]
        s.execute(update(Exemplar).where(Exemplar.label == "drugs").values(label="safe"))
        s.commit()
        deactivate_exemplars(s, weapon)
        again = load_or_build(s, "m", tmp_path)  # loaded from the file, then refreshed
    r = again.search(centres, 10)
    assert again.size == 30 and "weapon" not in {lab for row in r.labels for lab in row}
    assert set(r.labels[0]) == {"safe"}  # the drugs cluster was relabelled
    assert again.version != version


def test_prediction_carries_confident_labels_and_a_risk_score():
    pred = {"model_version": "mv", "score": 0.5, "result": [
        {"id": f"clasp-{i}", "value": {"brushlabels": ["region"], "rle": [1]}} for i in range(4)]}
    sugs = {"clasp-0": Suggestion("safe", 0.95, 10), "clasp-1": Suggestion("weapon", 0.7, 10),
            "clasp-2": Suggestion("violence", 0.4, 10), "clasp-3": Suggestion("banana", 0.99, 10)}
    out = apply_suggestions(pred, sugs, threshold=0.6, exemplar_version="ex-1", taxonomy=["region", "safe", "weapon",
                                                                                         "violence"])
    assert [r["value"]["brushlabels"] for r in out["result"]] == [["safe"], ["weapon"], ["region"], ["region"]]
    assert out["score"] == pytest.approx(0.7)  # highest confident non-safe label
    assert out["model_version"] == "mv+ex-1" and pred["result"][0]["value"]["brushlabels"] == ["region"]
    assert task_score([Suggestion("safe", 0.9)], threshold=0.5) == 0.0


def test_pushed_regions_take_the_suggestion_of_the_segment_they_are_named_after():
    import numpy as np

    from integrations.label_studio.predictions import RegionPolicy, build_prediction
    from integrations.review.suggestions import region_suggestion_map

    labels = np.zeros((20, 20), np.int32)
    labels[:, 10:] = 1
    labels[0, 0] = 2  # one pixel: merged into segment 0
    built = build_prediction(labels, None, model_version="mv", policy=RegionPolicy(min_area=5))
    sugs = {0: Suggestion("safe", 0.9), 1: Suggestion("weapon", 0.8), 2: Suggestion("drugs", 0.99)}
    m = region_suggestion_map(built.regions, sugs)
    assert {k: v.label for k, v in m.items()} == {"clasp-0": "safe", "clasp-1": "weapon"}
