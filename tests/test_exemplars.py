"""Exemplars from synced reviews, the portable vector column, and dimension checks."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from conftest_db import db_url, make_segmentation, migrated_url, pg_url, session, sqlite_url  # noqa: F401
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from integrations.db import add_images, claim_batch, start_run, store_segmentation
from integrations.db.embeddings import embedding_model
from integrations.db.models import Exemplar, Review, ReviewLink, SegmentRow
from integrations.db import ImageInput
from integrations.db.vector import Vector, VectorDimensionError, vector_bytes
from integrations.label_studio.config import LabelingConfig
from integrations.label_studio.predictions import build_prediction
from integrations.review.exemplar_index import load_or_build
from integrations.review.exemplars import exemplars_from_reviews, insert_exemplars

H, W = 48, 64


def _bands() -> np.ndarray:
    """Three vertical bands: segments 0, 1, 2."""
    return (np.arange(W)[None, :] * 3 // W).repeat(H, 0).astype(np.int32)


def _stored(session, embeddings: np.ndarray, backbone: str = "dino_vits8", uri: str | None = None) -> tuple[int, str]:
    """A stored segmentation of the three bands with the given region embeddings; (segmentation id, model)."""
    seg = make_segmentation(H, W, 3, labels=_bands())
    seg.diagnostics.backbone = backbone
    seg.region_embeddings = np.asarray(embeddings, dtype=np.float32)
    n = session.execute(select(SegmentRow.id)).all()
    add_images(session, [ImageInput(uri or f"/x/{backbone}-{len(n)}.png", f"{len(n):064x}"[-64:], 10)])
    (claimed,) = claim_batch(session, "w", 1, lease_seconds=60)
    run = start_run(session, {"backbone": backbone}, engine_version="0.1.0", backbone=backbone)
    run_id = run if isinstance(run, int) else run.id
    sid = store_segmentation(session, claimed.id if hasattr(claimed, "id") else claimed.image_id, run_id, seg, "w")
    return sid, embedding_model(seg.diagnostics)


def _result(label_map: np.ndarray, labels: dict[int, str]) -> list[dict]:
    """A Label Studio brush result: one region per label of `label_map`, labelled as given."""
    config = LabelingConfig()
    pred = build_prediction(label_map, None, model_version="mv", config=config).prediction
    out = []
    for region in pred["result"]:
        g = int(region["id"].split("-")[1])
        region = dict(region, value={**region["value"], "brushlabels": [labels.get(g, config.neutral_label)]})
        out.append(region)
    return out


def _review(session, sid: int, result: list[dict], ann_id: int, task_id: int = 7) -> Review:
    link = session.execute(select(ReviewLink).where(ReviewLink.segmentation_id == sid)).scalar()
    if link is None:
        from integrations.db.models import SegmentationRecord

        image_id = session.get(SegmentationRecord, sid).image_id
        link = ReviewLink(image_id=image_id, segmentation_id=sid, ls_project_id=1, ls_task_id=task_id,
                          model_version="mv")
        session.add(link)
        session.flush()
    review = Review(review_link_id=link.id, ls_annotation_id=ann_id, result=result)
    session.add(review)
    session.commit()
    return review


def _unit(rng, n, d=8):
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_exemplars_from_a_synced_review_follow_edits_and_deletions(session, caplog):  # noqa: F811
    rng = np.random.default_rng(0)
    emb = _unit(rng, 3)
    sid, model = _stored(session, emb)
    bands = _bands()
    final = bands.copy()
    final[:, 20:24] = 0  # segment 1 redrawn: band 1 loses 4 of its 21 columns (IoU ~0.8)
    final[bands == 2] = 9  # segment 2 deleted ...
    final[:5, 50:60] = 3  # ... and a small hand-drawn region that matches no proposal
    final[final == 9] = 4
    first = _result(final, {0: "violence", 1: "safe", 3: "weapon"})
    first = [r for r in first if r["id"] != "clasp-4"]  # band 2 removed by the reviewer
    caplog.set_level(logging.INFO, logger="integrations.review.exemplars")
    report = exemplars_from_reviews(session, [_review(session, sid, first, ann_id=100)])
    assert (report.added, report.unmatched_regions, report.deactivated) == (2, 1, 0)
    assert "match no proposal" in caplog.text
    rows = {e.label: e for e in session.execute(select(Exemplar)).scalars()}
    assert set(rows) == {"violence", "safe"}
    seg_of = {r.id: r.label for r in session.execute(select(SegmentRow).where(SegmentRow.segmentation_id == sid))
              .scalars()}
    assert seg_of[rows["violence"].segment_id] == 0 and seg_of[rows["safe"].segment_id] == 1
    np.testing.assert_allclose(rows["violence"].embedding, emb[0], rtol=1e-6)
    assert rows["violence"].embedding_model == model and rows["violence"].embedding_dim == 8

    # an edited annotation: segment 0 relabelled, segment 1 given a label outside the config
    second = _result(bands, {0: "weapon", 1: "banana", 2: "drugs"})
    caplog.clear()
    report = exemplars_from_reviews(session, [_review(session, sid, second, ann_id=101)])
    assert (report.added, report.relabelled, report.deactivated) == (1, 1, 1)
    assert report.unknown_labels == {"banana": 1} and "'banana' is not in the project's config" in caplog.text
    active = {seg_of[e.segment_id]: e.label for e in session.execute(select(Exemplar)).scalars() if e.active}
    assert active == {0: "weapon", 2: "drugs"}
    assert session.execute(select(Exemplar).where(Exemplar.label == "violence")).first() is None


def test_dimension_mismatch_is_a_clear_error_at_insert(session):  # noqa: F811
    rng = np.random.default_rng(1)
    insert_exemplars(session, ["safe", "drugs"], _unit(rng, 2, 8), "m")
    with pytest.raises(VectorDimensionError, match="dimension 9 .* dimension 8"):
        insert_exemplars(session, ["safe"], _unit(rng, 1, 9), "m")
    insert_exemplars(session, ["safe"], _unit(rng, 1, 9), "another model")  # its own dimension: fine
    with pytest.raises(VectorDimensionError, match="3 values for a column of dimension 4"):
        vector_bytes([1, 2, 3], 4)
    with pytest.raises(VectorDimensionError, match="NaN"):
        vector_bytes([1, float("nan")], 2)
    with pytest.raises(VectorDimensionError):
        Vector(4).process_bind_param(b"\0" * 12, None)
    # the database itself refuses bytes that do not hold embedding_dim float32 values
    with pytest.raises(IntegrityError):
        session.execute(text("INSERT INTO exemplars (label, embedding, embedding_dim, embedding_model, active, "
                             "created_at, updated_at) VALUES ('safe', :e, 8, 'm', true, CURRENT_TIMESTAMP, "
                             "CURRENT_TIMESTAMP)"), {"e": b"\0" * 12})
        session.flush()
    session.rollback()


def test_segments_store_their_embedding_with_the_backbone_identity(session):  # noqa: F811
    rng = np.random.default_rng(2)
    emb = _unit(rng, 3, 5)
    emb[1] = 0  # a segment with no patch: no embedding
    sid, model = _stored(session, emb, backbone="classic")
    rows = session.execute(select(SegmentRow).where(SegmentRow.segmentation_id == sid).order_by(SegmentRow.label)
                           ).scalars().all()
    np.testing.assert_allclose(rows[0].embedding, emb[0])
    assert rows[1].embedding is None and rows[1].embedding_model is None
    assert rows[2].embedding_dim == 5 and rows[2].embedding_model == model and model.startswith("classic|")


def test_exemplar_index_is_isolated_by_backbone(session, tmp_path, caplog):  # noqa: F811
    rng = np.random.default_rng(3)
    insert_exemplars(session, ["safe"] * 5, _unit(rng, 5), "classic|none|-|tokens")
    assert load_or_build(session, "dino_vits8|pretrained:timm|abcd|tokens", tmp_path) is None
    from integrations.review.suggestions import suggest

    caplog.set_level(logging.INFO, logger="integrations.review.suggestions")
    out = suggest(None, _unit(rng, 2))
    assert [s.label for s in out] == [None, None] and "no exemplars" in caplog.text
    insert_exemplars(session, ["weapon"] * 3, _unit(rng, 3), "dino_vits8|pretrained:timm|abcd|tokens")
    index = load_or_build(session, "dino_vits8|pretrained:timm|abcd|tokens", tmp_path)
    assert index.size == 3 and index.label_names == ["weapon"]
    assert {lab for row in index.search(_unit(rng, 4), 10).labels for lab in row} == {"weapon", None}


class _Client:
    """Just what sync_reviews reads: the project's annotated tasks (predictions inline)."""

    def __init__(self, tasks):
        self.tasks = tasks

    def annotated_tasks(self, project_id):
        return self.tasks

    def task_predictions(self, task_id):
        return []


def test_sync_reviews_upserts_the_exemplars_of_new_and_edited_annotations(session):  # noqa: F811
    from integrations.review.sync import pull_reviews
    from integrations.label_studio.client import Project

    rng = np.random.default_rng(5)
    sid, _ = _stored(session, _unit(rng, 3))
    from integrations.db.models import SegmentationRecord

    link = ReviewLink(image_id=session.get(SegmentationRecord, sid).image_id, segmentation_id=sid, ls_project_id=3,
                      ls_task_id=70, model_version="mv")
    session.add(link)
    session.commit()
    bands = _bands()
    task = {"id": 70, "predictions": [{"model_version": "mv", "result": _result(bands, {})}],
            "annotations": [{"id": 500, "result": _result(bands, {0: "drugs", 1: "safe", 2: "safe"})}]}
    project = Project(id=3, title="p", label_config="")
    res = pull_reviews(_Client([task]), project, session)
    assert res.reviews_new == 1 and res.exemplars["added"] == 3
    task["annotations"][0]["result"] = _result(bands, {0: "weapon", 1: "safe", 2: "safe"})
    res = pull_reviews(_Client([task]), project, session)
    assert res.reviews_updated == 1 and res.exemplars["relabelled"] == 1 and res.exemplars["unchanged"] == 2
    assert sorted(e.label for e in session.execute(select(Exemplar)).scalars()) == ["safe", "safe", "weapon"]


def test_a_stored_segmentation_gets_suggestions_from_exemplars_of_its_model(session, tmp_path):  # noqa: F811
    from integrations.review.suggestions import segmentation_suggestions

    rng = np.random.default_rng(6)
    emb = _unit(rng, 3)
    sid, model = _stored(session, emb)
    assert segmentation_suggestions(session, sid, tmp_path) == ({0: _neutral(), 1: _neutral(), 2: _neutral()}, None)
    near = emb[[0, 0, 0, 1, 1, 1]] + 0.01 * rng.normal(size=(6, 8)).astype(np.float32)
    insert_exemplars(session, ["weapon"] * 3 + ["safe"] * 3, near / np.linalg.norm(near, axis=1, keepdims=True), model)
    insert_exemplars(session, ["drugs"] * 3, emb[[2, 2, 2]], "classic|none|-|tokens")  # another backbone: unseen
    got, version = segmentation_suggestions(session, sid, tmp_path)
    assert got[0].label == "weapon" and got[1].label == "safe" and got[2].label in {"weapon", "safe"}
    assert version.startswith("ex-") and "-n6-" in version


def _neutral():
    from integrations.review.suggestions import NEUTRAL

    return NEUTRAL


# --------------------------------------------------------------------------- suggestions in the push


def _push_setup(session, rng, n_images=1, backbone="dino_vits8"):
    """Stored segmentations (three bands) whose segments 0 and 1 have the embeddings e0, e1 and
    segment 2 lies exactly between them; returns (segmentation ids, model, e0, e1)."""
    e0, e1 = _unit(rng, 2)
    mid = (e0 + e1) / np.linalg.norm(e0 + e1)
    out = [_stored(session, np.stack([e0, e1, mid]), backbone, uri=f"https://img.example.com/{backbone}-{i}.jpg")
           for i in range(n_images)]
    return [sid for sid, _ in out], out[0][1], e0, e1


def _fake_push(session, project_xml=None, **kw):
    from test_label_studio_units import FakeLabelStudio, _client

    from integrations.label_studio.client import Project
    from integrations.label_studio.images import ImageResolver
    from integrations.review.push import push_unsent

    fake = kw.pop("fake", None) or FakeLabelStudio()
    project = Project(1, "p", project_xml or LabelingConfig().xml())
    result = push_unsent(session, _client(fake), project, resolver=ImageResolver(mode="url"), backoff=0.001, **kw)
    return fake, project, result


def _regions(pred):
    return {r["id"]: (r["value"]["brushlabels"][0], r.get("score")) for r in pred["result"]}


def test_push_after_reviews_suggests_confident_labels_and_keeps_the_rest_neutral(session, tmp_path, monkeypatch):  # noqa: F811
    import integrations.review.exemplar_index as exemplar_index
    from integrations.label_studio.predictions import base_model_version

    rng = np.random.default_rng(21)
    sids, model, e0, e1 = _push_setup(session, rng, n_images=2)
    insert_exemplars(session, ["violence"] * 3 + ["safe"] * 3, np.stack([e0] * 3 + [e1] * 3), model)
    builds = []
    real = exemplar_index.load_or_build
    monkeypatch.setattr(exemplar_index, "load_or_build", lambda *a, **k: builds.append(a[1]) or real(*a, **k))
    fake, project, result = _fake_push(session, index_dir=tmp_path)
    assert len(result.sent) == 2 and builds == [model]  # one index load/build per model and push, not per image
    assert len(fake.preds) == 2
    for pred in fake.preds:
        regions = _regions(pred)
        assert regions["clasp-0"][0] == "violence" and regions["clasp-0"][1] >= 0.9
        assert regions["clasp-1"][0] == "safe" and regions["clasp-1"][1] >= 0.9
        assert regions["clasp-2"][0].startswith("region-")  # a tie (0.5): not confident, stays neutral
        assert pred["score"] == regions["clasp-0"][1]  # the highest non-safe confidence
        base, _, exemplar_version = pred["model_version"].partition("+")
        assert exemplar_version.startswith("ex-") and "-n6-" in exemplar_version
        assert base_model_version(pred["model_version"]) == base and "+" not in base
    links = session.execute(select(ReviewLink).order_by(ReviewLink.image_id)).scalars().all()
    assert [link.model_version for link in links] == [p["model_version"] for p in fake.preds]
    assert [link.ls_prediction_id for link in links] == [p["id"] for p in fake.preds]
    assert [r.model_version for r in result.sent] == [p["model_version"] for p in fake.preds]

    # a second push, even after the exemplar set changed, adds nothing: unsent compares the base version
    insert_exemplars(session, ["weapon"], e0[None, :], model)
    _, _, again = _fake_push(session, fake=fake, index_dir=tmp_path)
    assert not again.sent and not again.existing and len(fake.tasks) == 2 and len(fake.preds) == 2
    # ... also when the images are `segmented` again (re-run with the same engine model version)
    from integrations.db.models import SEGMENTED, Image

    for image in session.execute(select(Image)).scalars():
        image.status = SEGMENTED
    session.commit()
    _, _, again = _fake_push(session, fake=fake, index_dir=tmp_path)
    assert not again.sent and not again.existing and len(fake.tasks) == 2
    assert len(session.execute(select(ReviewLink)).all()) == 2
    # ... and when the database lost its links: the tasks are found by key, and the links
    # record the model version they were pushed with
    pushed = [link.model_version for link in links]
    for link in session.execute(select(ReviewLink)).scalars():
        session.delete(link)
    session.commit()
    _, _, again = _fake_push(session, fake=fake, index_dir=tmp_path)
    assert not again.sent and len(again.existing) == 2 and len(fake.tasks) == 2
    relinked = session.execute(select(ReviewLink).order_by(ReviewLink.image_id)).scalars().all()
    assert [link.model_version for link in relinked] == pushed
    assert [link.ls_prediction_id for link in relinked] == [p["id"] for p in fake.preds]


def test_push_without_usable_exemplars_keeps_neutral_proposals(session, tmp_path, caplog):  # noqa: F811
    rng = np.random.default_rng(22)
    caplog.set_level(logging.INFO, logger="integrations.review")
    _push_setup(session, rng)
    fake, _, result = _fake_push(session, index_dir=tmp_path)  # no exemplars at all
    (pred,) = fake.preds
    assert all(lab.startswith("region-") for lab, _ in _regions(pred).values())
    assert "+" not in pred["model_version"] and result.sent[0].model_version == pred["model_version"]
    assert "no exemplars" in caplog.text

    caplog.clear()
    sids, model, e0, e1 = _push_setup(session, rng, backbone="other_vit")
    insert_exemplars(session, ["violence"] * 3, np.stack([e0] * 3), "classic|none|-|tokens")  # another backbone only
    fake, _, result = _fake_push(session, index_dir=tmp_path)
    (pred,) = fake.preds
    assert all(lab.startswith("region-") for lab, _ in _regions(pred).values()) and "+" not in pred["model_version"]
    assert "no exemplars" in caplog.text and result.ok


def test_a_suggested_label_outside_the_project_config_stays_neutral(session, tmp_path, caplog):  # noqa: F811
    rng = np.random.default_rng(23)
    caplog.set_level(logging.INFO, logger="integrations.review")
    sids, model, e0, e1 = _push_setup(session, rng)
    insert_exemplars(session, ["violence"] * 3 + ["safe"] * 3, np.stack([e0] * 3 + [e1] * 3), model)
    taxonomy = {k: v for k, v in LabelingConfig().taxonomy.items() if k != "violence"}
    project_xml = LabelingConfig(taxonomy=taxonomy).xml()
    fake, _, result = _fake_push(session, project_xml=project_xml, index_dir=tmp_path)
    regions = _regions(fake.preds[0])
    assert regions["clasp-0"][0].startswith("region-") and regions["clasp-1"][0] == "safe"
    assert fake.preds[0]["score"] == 0.0  # no confident non-safe label: lowest risk
    assert "violence" in caplog.text and "not in" in caplog.text and result.ok


def test_sync_finds_the_suggested_prediction_of_a_link(session, tmp_path):  # noqa: F811
    from integrations.review.sync import pull_reviews

    rng = np.random.default_rng(24)
    sids, model, e0, e1 = _push_setup(session, rng)
    insert_exemplars(session, ["violence"] * 3 + ["safe"] * 3, np.stack([e0] * 3 + [e1] * 3), model)
    fake, project, result = _fake_push(session, index_dir=tmp_path)
    (pred,) = fake.preds
    assert "+" in pred["model_version"]
    alternative = {**pred, "model_version": pred["model_version"].split("+")[0] + "/coarser-k2", "result": []}
    # the reviewer keeps the suggestion on band 0, relabels band 2, deletes band 1
    final = [r for r in _result(_bands(), {0: "violence", 2: "weapon"}) if r["id"] != "clasp-1"]
    task = {"id": fake.tasks[0]["id"], "predictions": [alternative, pred], "annotations": [{"id": 900, "result": final}]}
    res = pull_reviews(_Client([task]), project, session)
    stats = res.per_task[task["id"]]
    assert res.reviews_new == 1 and stats["n_proposals"] == 3 and stats["model_version"] == pred["model_version"]
    assert stats["deleted"] == 1
    assert sorted(e.label for e in session.execute(select(Exemplar).where(Exemplar.review_id.is_not(None))).scalars()) \
        == ["violence", "weapon"]


def test_granularity_alternatives_are_stored_and_pushed_from_the_database_when_asked(session):  # noqa: F811
    from clasp_engine import Segmenter, SegmenterConfig
    from integrations.db.results import load_segmentation
    from integrations.label_studio.predictions import granularity_alternatives
    from integrations.samples import sample_image_paths

    photo = next(p for p in sample_image_paths() if p.name == "grace_hopper.jpg")
    seg = Segmenter(SegmenterConfig(backbone="classic", variant="patch"))(str(photo))
    wanted = granularity_alternatives(seg)
    assert wanted, f"the K search kept no alternative to K={seg.k}: {sorted(seg.alternatives)}"
    add_images(session, [ImageInput("https://img.example.com/hopper.jpg", "cd" * 32, 10)])
    (claimed,) = claim_batch(session, "w", 1, lease_seconds=60)
    run = start_run(session, {"backbone": "classic"}, engine_version="0.1.0", backbone="classic")
    sid = store_segmentation(session, claimed.id if hasattr(claimed, "id") else claimed.image_id,
                             run if isinstance(run, int) else run.id, seg, "w")
    loaded = load_segmentation(session, sid)  # only the coarser and finer partitions are kept
    lower, upper = [c for c in seg.alternatives if c < seg.k], [c for c in seg.alternatives if c > seg.k]
    kept = ([max(lower)] if lower else []) + ([min(upper)] if upper else [])
    assert sorted(loaded.alternatives) == kept and len(seg.alternatives) > len(kept)
    for k, grid in loaded.alternatives.items():
        assert np.array_equal(grid, seg.alternatives[k])
    assert loaded.diagnostics == seg.diagnostics

    fake, _, off = _fake_push(session)  # off by default: the chosen partition only
    assert len(fake.preds) == 1 and off.ok
    from integrations.db.models import SEGMENTED, Image

    session.execute(select(Image)).scalar_one().status = SEGMENTED
    session.delete(session.execute(select(ReviewLink)).scalar_one())
    session.commit()
    fake, _, on = _fake_push(session, granularity=True)
    main, *alts = fake.preds
    assert on.ok and on.sent[0].model_version == main["model_version"] and on.sent[0].prediction_id == main["id"]
    got = {p["model_version"].rsplit("/", 1)[1]: len(p["result"]) for p in alts}
    assert got == {f"{name}-k{k}": k for name, (k, _) in wanted.items()}, got
    assert all(p["model_version"].startswith(main["model_version"] + "/") for p in alts)


def test_stack_vectors_reads_bytes_and_arrays_and_checks_the_dimension():
    from integrations.db.vector import VectorDimensionError, stack_vectors, vector_bytes

    a, b = np.arange(4, dtype=np.float32), -np.arange(4, dtype=np.float32)
    got = stack_vectors([vector_bytes(a, 4), b], 4)
    assert got.dtype == np.float32 and np.array_equal(got, np.stack([a, b]))
    assert stack_vectors([], 4).shape == (0, 4)
    with pytest.raises(VectorDimensionError, match="dimension 4"):
        stack_vectors([a, np.zeros(3, np.float32)], 4)
