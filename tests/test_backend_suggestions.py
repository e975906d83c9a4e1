"""The ML backend with suggestions (`clasp label-studio backend --suggestions`): regions whose kNN vote
over the reviewed exemplars is confident come back with that moderation label.

No Label Studio server is needed: tasks carry data: URLs, and the exemplars are written
straight into a SQLite database (`insert_exemplars`, as the review sync does).
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
from conftest_db import sqlite_url  # noqa: F401
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from integrations.db.embeddings import embedding_model
from integrations.label_studio.backend import BrushTarget, ImageFetcher, ProposalModel
from integrations.label_studio.config import LabelingConfig, is_proposal_label
from integrations.review.exemplars import insert_exemplars
from integrations.review.suggestions import LiveSuggestions
from integrations.samples import sample_image_paths

TAXONOMY = ["violence", "weapon", "drugs", "nudity", "hate-symbol", "personal-data"]


@pytest.fixture
def photo():
    path = sample_image_paths()[0]
    return path, "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()


def test_backend_labels_regions_with_confident_suggestions(sqlite_url, photo):  # noqa: F811
    from integrations.db.schema import upgrade

    upgrade(sqlite_url, "head")
    live = LiveSuggestions(sqlite_url, threshold=0.5, refresh_seconds=0)  # re-read exemplars on every request
    model = ProposalModel(backbone="classic", variant="patch", fetcher=ImageFetcher(None), suggest=live)
    config = LabelingConfig().xml()
    task = {"id": 1, "data": {"image": photo[1]}}

    before = model.predict([task], config)["results"][0][0]
    assert before["model_version"] == model.model_version  # no exemplars yet: proposals as without suggestions
    assert all(is_proposal_label(r["value"]["brushlabels"][0]) for r in before["result"])

    # A reviewer labelled each segment of this photo with a different moderation label.
    from clasp_engine.images import load_image

    seg = model.segmenter(load_image(str(photo[0])))
    emb = np.asarray(seg.region_embeddings, np.float32)
    present = [g for g in range(len(emb)) if np.any(emb[g])]
    assert len(present) >= 2
    label_of = {g: TAXONOMY[i % len(TAXONOMY)] for i, g in enumerate(present)}
    with Session(create_engine(sqlite_url)) as s:
        insert_exemplars(s, [label_of[g] for g in present], emb[present], embedding_model(seg.diagnostics))
        s.commit()

    after = model.predict([task], config)["results"][0][0]
    assert after["model_version"].startswith(model.model_version + "+ex-")
    suggested = {}
    for region in after["result"]:
        g = int(region["id"].rsplit("-", 1)[-1])
        label = region["value"]["brushlabels"][0]
        if not is_proposal_label(label):
            suggested[g] = label
            assert region["score"] >= 0.5
    assert suggested, "no region took a suggestion"
    assert all(label_of[g] == label for g, label in suggested.items()), (suggested, label_of)
    assert after["score"] == max(r["score"] for r in after["result"] if r["id"].split("-")[-1].isdigit()
                                 and int(r["id"].rsplit("-", 1)[-1]) in suggested)


def test_suggestions_only_carry_labels_the_config_defines(sqlite_url, photo):  # noqa: F811
    """A config without moderation labels (only sky / ground): nothing to suggest, plain proposals."""
    from integrations.db.schema import upgrade

    upgrade(sqlite_url, "head")
    calls = []

    def suggest(prediction, regions, segmentation, allowed):
        calls.append(allowed)
        return prediction

    target = BrushTarget.from_config(LabelingConfig().xml())
    assert set(target.moderation_labels) == set(TAXONOMY) | {"safe"}
    model = ProposalModel(backbone="classic", variant="patch", fetcher=ImageFetcher(None), suggest=suggest)
    only_regions = LabelingConfig(taxonomy={"region": "#FF00FF"}).xml()
    out = model.predict([{"id": 1, "data": {"image": photo[1]}}], only_regions)
    assert out["results"][0] and calls == []  # no label to suggest: the hook is not even called
    model.predict([{"id": 1, "data": {"image": photo[1]}}], LabelingConfig().xml())
    assert calls and set(calls[0]) == set(TAXONOMY) | {"safe"}


def test_live_index_is_refreshed_only_when_stale(sqlite_url):  # noqa: F811
    from integrations.db.schema import upgrade

    upgrade(sqlite_url, "head")
    now = [0.0]
    live = LiveSuggestions(sqlite_url, refresh_seconds=60, clock=lambda: now[0])
    assert live.index("m") is None  # no exemplars of model "m"
    x = np.eye(4, 8, dtype=np.float32)
    with Session(create_engine(sqlite_url)) as s:
        insert_exemplars(s, ["violence", "drugs", "weapon", "safe"], x, "m")
        s.commit()
    now[0] = 30.0
    assert live.index("m") is None  # read 30 s ago: not stale yet
    now[0] = 61.0
    index = live.index("m")
    assert index is not None and index.size == 4
    with Session(create_engine(sqlite_url)) as s:
        insert_exemplars(s, ["nudity"], np.eye(1, 8, 5, dtype=np.float32), "m")
        s.commit()
    now[0] = 122.0
    assert live.index("m").size == 5  # refreshed in place


def test_backend_suggestions_with_an_unreachable_database_fail_before_serving(monkeypatch, capsys):
    from clasp_cli.main import main

    monkeypatch.setenv("CLASP_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    rc = main(["label-studio", "backend", "--suggestions", "--port", "9"])
    err = capsys.readouterr().err
    assert rc == 2 and "--suggestions: database" in err and "127.0.0.1:1" in err


def test_database_away_keeps_the_last_index_and_tries_again_later(sqlite_url, caplog):  # noqa: F811
    from sqlalchemy.exc import OperationalError

    from integrations.db.schema import upgrade

    upgrade(sqlite_url, "head")
    with Session(create_engine(sqlite_url)) as s:
        insert_exemplars(s, ["violence", "drugs"], np.eye(2, 8, dtype=np.float32), "m")
        s.commit()
    now = [0.0]
    live = LiveSuggestions(sqlite_url, refresh_seconds=60, clock=lambda: now[0])
    assert live.index("m").size == 2
    sessions, attempts = live.sessions, []

    def database_away():
        attempts.append(now[0])
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    live.sessions = database_away
    now[0] = 61.0
    with caplog.at_level("WARNING", logger="integrations.review.suggestions"):
        assert live.index("m").size == 2  # the last read still serves
        assert live.index("m").size == 2  # and the database is not asked again at once
    assert attempts == [61.0]
    assert "connection refused" in caplog.text and "suggestions from the last read" in caplog.text
    assert live.index("other") is None and attempts == [61.0, 61.0]  # never read: no suggestions
    live.sessions = sessions
    now[0] = 122.0
    assert live.index("m").size == 2 and live.index("other") is None  # back: read again
