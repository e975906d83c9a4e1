"""Label Studio integration against a real server (installed in its own venv, started on loopback)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from integrations.db.masks import encode_label_map
from integrations.db.models import (
    REVIEWED,
    SEGMENTED,
    SENT_FOR_REVIEW,
    Base,
    Image,
    Review,
    ReviewLink,
    SegmentationRecord,
    SegmentationRun,
    SegmentRow,
)
from integrations.db.results import record_label_map
from integrations.db.session import make_engine, make_session_factory
from integrations.label_studio.client import LabelStudioAuthError, LabelStudioClient
from integrations.label_studio.config import LabelingConfig, labels_in_config
from integrations.label_studio.images import ImageResolver
from integrations.label_studio.predictions import RegionPolicy, model_version
from integrations.label_studio.push import PushItem, push_segmentations
from integrations.label_studio.rle import decode_mask, mask_rle
from integrations.review.push import push_unsent
from integrations.review.sync import pull_reviews, review_statistics

pytestmark = [pytest.mark.label_studio, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[1]
from conftest import DOCUMENT_ROOT  # noqa: E402  (the folder Label Studio serves local files from)
CONFIG = {"backbone": "gt-masks", "test": True}
MV = model_version("0.1.0", "gt-masks", CONFIG, "pixel")
KEEP_ALL = RegionPolicy(min_area=0, max_regions=1000)  # so masks come back exactly


@pytest.fixture(scope="module")
def ls(label_studio_server):
    creds = label_studio_server.credentials()
    with LabelStudioClient(creds.url, creds.token(), retries=2, backoff=0.2) as client:
        yield client


@pytest.fixture(scope="module")
def project(ls):
    return ls.find_or_create_project("CLASP integration test", LabelingConfig().xml())


@pytest.fixture(scope="module")
def resolver():
    return ImageResolver(mode="auto", document_root=DOCUMENT_ROOT)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('db') / 'clasp.db'}")
    Base.metadata.create_all(engine)
    factory = make_session_factory(engine)
    with factory() as s:
        run = SegmentationRun(engine_version="0.1.0", config=CONFIG, backbone="gt-masks", status="finished")
        s.add(run)
        s.commit()
    yield factory
    engine.dispose()


def _contiguous(label_png: Path) -> np.ndarray:
    lab = np.asarray(PILImage.open(label_png))
    return np.unique(lab, return_inverse=True)[1].reshape(lab.shape).astype(np.int32)


def add_segmented(session, uri: str, labels: np.ndarray) -> int:
    """An image in status `segmented` with one stored segmentation (what the segment flow leaves)."""
    run_id = session.execute(select(SegmentationRun.id)).scalars().first()
    img = Image(uri=uri, status=SEGMENTED, width=labels.shape[1], height=labels.shape[0])
    session.add(img)
    session.flush()
    enc = encode_label_map(labels)
    seg = SegmentationRecord(
        image_id=img.id, run_id=run_id, variant="pixel", k=int(labels.max()) + 1, mask=enc.data,
        mask_codec=enc.codec, mask_height=enc.height, mask_width=enc.width, mask_dtype=enc.dtype,
        mask_stored_dtype=enc.stored_dtype, mask_bytes=enc.size,
        diagnostics={"engine_version": "0.1.0", "backbone": "gt-masks", "config": CONFIG, "variant": "pixel"},
    )
    session.add(seg)
    session.flush()
    for lab in range(int(labels.max()) + 1):
        ys, xs = np.nonzero(labels == lab)
        if ys.size:
            session.add(SegmentRow(segmentation_id=seg.id, label=lab, area=int(ys.size), x0=int(xs.min()),
                                   y0=int(ys.min()), x1=int(xs.max()) + 1, y1=int(ys.max()) + 1, confidence=0.8))
    session.commit()
    return img.id


@pytest.fixture(scope="module")
def shared_pushed(db, ls, project, resolver, shared_data):
    """All ../shared/data images registered as segmented (ground-truth maps as masks) and pushed."""
    with db() as s:
        for png in sorted(shared_data.glob("*/labels/*.png")):
            img = next(png.parent.parent.joinpath("images").glob(png.stem + ".*"))
            add_segmented(s, str(img), _contiguous(png))
    with db() as s:
        t0 = time.perf_counter()
        result = push_unsent(s, ls, project, policy=KEEP_ALL, resolver=resolver, batch_size=25)
        result.seconds_measured = time.perf_counter() - t0
    return result


def test_project_find_or_create(ls, project):
    again = ls.find_or_create_project("CLASP integration test", LabelingConfig().xml())
    assert again.id == project.id
    assert labels_in_config(project.label_config, "tag") == set(LabelingConfig().config_labels)  # taxonomy + region-1..6
    assert sum(p["title"] == "CLASP integration test" for p in ls.projects()) == 1


def test_push_shared_data_masks_roundtrip_bit_for_bit(db, ls, project, shared_pushed, label_studio_server):
    r = shared_pushed
    n_images = len(list(Path(REPO_ROOT.parent / "shared" / "data").glob("*/labels/*.png")))
    assert r.ok, r.summary()
    assert len(r.sent) == n_images and r.image_modes == {"local-files": n_images}
    assert r.import_requests == -(-n_images // 25)  # bulk: ceil(n / batch) requests
    preds = {p["task"]: p for p in ls.predictions(project.id)}
    with db() as s:
        links = s.execute(select(ReviewLink)).scalars().all()
        assert len(links) == n_images
        for link in links:
            assert link.model_version == MV and link.ls_prediction_id == preds[link.ls_task_id]["id"]
            seg = s.get(SegmentationRecord, link.segmentation_id)
            labels = record_label_map(seg)
            pred = preds[link.ls_task_id]
            assert pred["model_version"] == MV and 0 < pred["score"] <= 1
            back = np.full(labels.shape, -1, np.int64)
            for region in pred["result"]:
                assert (region["original_height"], region["original_width"]) == labels.shape
                m = decode_mask(region["value"]["rle"], *labels.shape)
                assert not (back[m] >= 0).any()  # regions do not overlap
                back[m] = int(region["id"].split("-")[1])
            assert np.array_equal(back, labels)  # every pixel, bit for bit
        statuses = set(s.execute(select(Image.status)).scalars())
        assert statuses == {SENT_FOR_REVIEW}
    # the reviewer's browser can load the image through local-files storage
    task = ls.task(links[0].ls_task_id)
    url = label_studio_server.url + task["data"]["image"]
    with httpx.Client() as h:
        login(h, label_studio_server)
        resp = h.get(url)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("image/")


def login(h: httpx.Client, server) -> None:
    creds = server.credentials()
    page = h.get(f"{server.url}/user/login/")
    csrf = h.cookies.get("csrftoken")
    resp = h.post(f"{server.url}/user/login/", data={"email": creds.username, "password": creds.password,
                                                     "csrfmiddlewaretoken": csrf},
                  headers={"Referer": f"{server.url}/user/login/"})
    assert resp.status_code in (200, 302) and h.cookies.get("sessionid"), page.status_code


def test_second_push_adds_nothing(db, ls, project, resolver, shared_pushed):
    before = len(list(ls.tasks(project.id)))
    n_preds = len(ls.predictions(project.id))
    with db() as s:
        r = push_unsent(s, ls, project, policy=KEEP_ALL, resolver=resolver)
    assert not r.sent and r.import_requests == 0
    # even if SQL had lost the links: the server-side keys stop a second task
    with db() as s:
        rows = s.execute(select(ReviewLink.image_id, Image.uri).join(Image, Image.id == ReviewLink.image_id)).all()
    items = [PushItem(i, uri, np.zeros((2, 2), np.int64), MV) for i, uri in rows[:5]]
    r2 = push_segmentations(ls, project, items, resolver=resolver)
    assert not r2.sent and len(r2.existing) == 5
    assert len(list(ls.tasks(project.id))) == before and len(ls.predictions(project.id)) == n_preds


def test_push_while_server_stopped_loses_nothing(db, ls, project, resolver, shared_pushed, label_studio_server, shared_data):
    imgs = sorted((shared_data / "bsds500" / "images").glob("*"))[:3]
    with db() as s:
        new_ids = []
        for i, p in enumerate(imgs):
            lab = np.zeros((20, 30), np.int32)
            lab[:, 15:] = 1
            new_ids.append(add_segmented(s, str(p.parent / ".." / "images" / p.name), lab))
    label_studio_server.stop()
    try:
        with db() as s:
            r = push_unsent(s, ls, project, resolver=resolver, retries=1, backoff=0.05)
        assert not r.sent and sorted(r.unsent) == sorted(new_ids) and "unavailable" in r.error
        with db() as s:
            assert set(s.execute(select(Image.status).where(Image.id.in_(new_ids))).scalars()) == {SEGMENTED}
            assert s.execute(select(func.count()).select_from(ReviewLink).where(ReviewLink.image_id.in_(new_ids))).scalar() == 0
        # back up while the next push is retrying with backoff
        restart = threading.Thread(target=lambda: (time.sleep(1.0), label_studio_server.start()))
        restart.start()
        with db() as s:
            r = push_unsent(s, ls, project, resolver=resolver, retries=8, backoff=1.0)
        restart.join()
    finally:
        if not label_studio_server.healthy():
            label_studio_server.start()
    assert r.ok and sorted(x.image_id for x in r.sent) == sorted(new_ids), r.summary()
    with db() as s:
        assert set(s.execute(select(Image.status).where(Image.id.in_(new_ids))).scalars()) == {SENT_FOR_REVIEW}
    keys = [t["data"].get("clasp_key") for t in ls.tasks(project.id)]
    assert len(keys) == len(set(keys))  # no duplicate task for any image


def test_wrong_token_gives_clear_error(label_studio_server):
    bad = "f" * 40
    with LabelStudioClient(label_studio_server.url, bad, retries=0) as c:
        with pytest.raises(LabelStudioAuthError, match="LABEL_STUDIO_API_KEY") as ei:
            c.projects()
    assert bad not in str(ei.value) and "401" in str(ei.value)


def test_sync_reviews_survival_figures(db, ls, project, resolver, shared_pushed, shared_data):
    img = sorted((shared_data / "bsds500" / "images").glob("*"))[-1]
    h, w = np.asarray(PILImage.open(img)).shape[:2]
    labels = np.zeros((h, w), np.int32)
    labels[:, w // 3 : 2 * w // 3] = 1
    labels[:, 2 * w // 3 :] = 2
    # a distinct URI for the same file (the DB registers one row per URI here)
    with db() as s:
        image_id = add_segmented(s, str(img.parent.parent / "images" / ".." / "images" / img.name), labels)
        r = push_unsent(s, ls, project, resolver=resolver)
    rec = [x for x in r.sent if x.image_id == image_id][0]
    task = ls.task(rec.task_id)
    assert task["data"]["clasp_image_id"] == image_id
    pred = [p for p in ls.predictions(project.id) if p["task"] == rec.task_id][0]
    regions = {r_["id"]: r_ for r_ in pred["result"]}
    assert set(regions) == {"clasp-0", "clasp-1", "clasp-2"}
    kept = json.loads(json.dumps(regions["clasp-0"]))
    kept["value"]["brushlabels"] = ["violence"]
    edited = json.loads(json.dumps(regions["clasp-1"]))
    m1 = labels == 1
    m1[: h // 4, :] = False  # the reviewer erased the top quarter of region 1
    edited["value"]["rle"] = mask_rle(m1)
    ls.create_annotation(rec.task_id, [kept, edited])  # region 2 deleted
    with db() as s:
        out = pull_reviews(ls, project, s)
    assert out.error is None and out.reviews_new == 1 and not out.unknown_tasks
    st = out.per_task[rec.task_id]
    expected_iou = m1.sum() / (labels == 1).sum()
    assert (st["kept"], st["redrawn"], st["deleted"], st["added"]) == (1, 1, 1, 0)
    assert st["share_kept"] == pytest.approx(1 / 3, abs=1e-6)
    assert st["best_iou"] == [1.0, pytest.approx(expected_iou, abs=1e-6)]
    assert st["relabelled"] == 1 and st["labels"] == {"violence": 1, "region": 1}
    with db() as s:
        review = s.execute(select(Review)).scalar_one()
        assert review.survival["kept"] == 1 and review.reviewer
        assert s.get(Image, image_id).status == REVIEWED
        stats = review_statistics(s)
        assert stats["tasks_reviewed"] == 1 and stats["kept"] == 1 and stats["deleted"] == 1
        assert stats["by_model_version"][MV]["tasks_sent"] >= 1
        again = pull_reviews(ls, project, s)
    assert again.reviews_new == 0 and again.unchanged == 1


def _voronoi_labels(rng, h, w, k):
    pts = rng.random((k, 2)) * [h, w]
    yy, xx = np.mgrid[:h, :w]
    d = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2
    return np.argmin(d, axis=-1).astype(np.int32)


def test_bulk_push_throughput_100_images(ls, label_studio_server, artifacts_dir):
    """100 images x ~10 regions, bulk import; the figures go to test-artifacts/."""
    rng = np.random.default_rng(0)
    project = ls.find_or_create_project("CLASP throughput", LabelingConfig().xml())
    items = [
        PushItem(10_000 + i, f"https://images.example.com/{i}.jpg", _voronoi_labels(rng, 480, 640, 10), "bench-v1")
        for i in range(100)
    ]
    t0 = time.perf_counter()
    r = push_segmentations(ls, project, items, batch_size=50, resolver=ImageResolver(mode="url"))
    total = time.perf_counter() - t0
    assert r.ok and len(r.sent) == 100 and r.import_requests == 2
    assert sum(x.n_regions for x in r.sent) == 1000
    from label_studio_sdk.converter.brush import mask2rle

    m = _voronoi_labels(rng, 1000, 1000, 10) == 3
    t = time.perf_counter()
    for _ in range(5):
        a = mask2rle(m.astype(np.uint8) * 255)
    sdk_ms = (time.perf_counter() - t) / 5 * 1000
    t = time.perf_counter()
    for _ in range(5):
        b = mask_rle(m)
    ours_ms = (time.perf_counter() - t) / 5 * 1000
    assert a == b
    figures = {
        "tasks": 100,
        "regions": 1000,
        "seconds_total": round(total, 3),
        "tasks_per_second": round(100 / total, 2),
        "import_requests": r.import_requests,
        "encode_seconds": round(r.encode_seconds, 3),
        "rle_ms_per_1mp_mask_sdk": round(sdk_ms, 2),
        "rle_ms_per_1mp_mask_vectorised": round(ours_ms, 2),
    }
    (artifacts_dir / "label_studio_throughput.json").write_text(json.dumps(figures, indent=2))
    print(figures)


def test_token_never_in_server_log_database_or_artifacts(db, label_studio_server, artifacts_dir, shared_pushed, caplog):
    token = label_studio_server.credentials().token()
    assert token not in label_studio_server.log_file.read_text(errors="replace")
    db_path = Path(db.kw["bind"].url.database)
    for p in [db_path, *db_path.parent.glob(db_path.name + "-*")]:  # the file and its WAL
        assert token.encode() not in p.read_bytes()
    for p in artifacts_dir.glob("*"):
        if p.is_file():
            assert token.encode() not in p.read_bytes()
    assert token not in caplog.text and token not in json.dumps(shared_pushed.to_dict())
