"""CLASP's ML backend against a real Label Studio: connect it, upload images, retrieve predictions, read them back."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from integrations.label_studio.backend import BrushTarget, ImageFetcher, ProposalModel, create_app
from integrations.label_studio.client import LabelStudioClient
from integrations.label_studio.config import LabelConfigError, LabelingConfig, labels_in_config
from integrations.label_studio.rle import decode_mask
from integrations.label_studio.server import free_port

pytestmark = [pytest.mark.label_studio, pytest.mark.slow]

OTHER_CONFIG = """<View>
  <Image name="photo" value="$img"/>
  <BrushLabels name="paint" toName="photo">
    <Label value="sky" background="#00f"/>
    <Label value="ground" background="#0f0"/>
  </BrushLabels>
</View>"""


class ThreadedBackend:
    """The backend app under uvicorn in a thread (same process: the model is loaded once)."""

    def __init__(self, model: ProposalModel):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(create_app(model), host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health").status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("backend did not start")

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def model(label_studio_server):
    creds = label_studio_server.credentials()
    return ProposalModel(backbone="classic", fetcher=ImageFetcher(creds.url, creds.token()))


def _touching_pairs(labels_by_region: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    ids = list(labels_by_region)
    shape = next(iter(labels_by_region.values())).shape
    owner = np.full(shape, -1)
    for i, rid in enumerate(ids):
        owner[labels_by_region[rid]] = i
    pairs = set()
    for a, b in ((owner[:, 1:], owner[:, :-1]), (owner[1:], owner[:-1])):
        d = (a != b) & (a >= 0) & (b >= 0)
        pairs |= {(min(x, y), max(x, y)) for x, y in zip(a[d].tolist(), b[d].tolist())}
    return [(ids[x], ids[y]) for x, y in pairs]


def test_backend_round_trip_through_label_studio(label_studio_server, model, shared_data):
    creds = label_studio_server.credentials()
    images = sorted((shared_data / "bsds500" / "images").glob("*"))[:3]
    assert images, "needs ../shared/data/bsds500/images"
    with LabelStudioClient(creds.url, creds.token()) as ls, ThreadedBackend(model) as backend:
        project = ls.find_or_create_project("CLASP backend test", LabelingConfig().xml())
        ml = ls.connect_ml_backend(project.id, backend.url)
        assert ml.get("id"), ml
        task_ids = ls.upload_images(project.id, images)
        assert len(task_ids) == len(images)
        bad = ls.sdk.projects.import_tasks(project.id, request=[{"data": {"image": "/data/upload/999/missing.png"}}],
                                           return_task_ids=True).task_ids[0]
        t0 = time.perf_counter()
        ls.retrieve_predictions(project.id)
        preds = {p["task"]: p for p in ls.predictions(project.id)}
        seconds = time.perf_counter() - t0
        assert httpx.get(backend.url + "/health").json()["status"] == "UP"  # the bad task did not take it down
    assert set(task_ids) <= set(preds), f"tasks without a prediction: {set(task_ids) - set(preds)}"
    assert bad not in preds  # its image cannot be read: no prediction, the others are fine
    allowed = labels_in_config(project.label_config, "tag")
    for tid in task_ids:
        p = preds[tid]
        assert p["model_version"] == model.model_version
        regions = p["result"]
        assert len(regions) >= 2
        masks = {}
        for r in regions:
            assert r["from_name"] == "tag" and r["to_name"] == "image"
            assert set(r["value"]["brushlabels"]) <= allowed
            masks[r["id"]] = decode_mask(r["value"]["rle"], r["original_height"], r["original_width"])
        label = {r["id"]: r["value"]["brushlabels"][0] for r in regions}
        for a, b in _touching_pairs(masks):
            assert label[a] != label[b], f"task {tid}: touching regions {a}, {b} share {label[a]}"
        assert len({r["score"] for r in regions}) > 1  # confidences that vary
    print(f"{len(task_ids)} images predicted through Label Studio in {seconds:.1f}s")


def test_backend_uses_the_configs_own_names_and_labels(model, shared_data):
    from starlette.testclient import TestClient

    img = sorted((shared_data / "bsds500" / "images").glob("*"))[0]
    import base64

    url = "data:image/jpeg;base64," + base64.b64encode(img.read_bytes()).decode()
    c = TestClient(create_app(model))
    out = c.post("/predict", json={"tasks": [{"id": 7, "data": {"img": url}}], "label_config": OTHER_CONFIG}).json()
    regions = out["results"][0][0]["result"]
    assert {r["from_name"] for r in regions} == {"paint"} and {r["to_name"] for r in regions} == {"photo"}
    assert {lab for r in regions for lab in r["value"]["brushlabels"]} <= {"sky", "ground"}


def test_backend_bad_input_gets_clear_errors(model):
    from starlette.testclient import TestClient

    c = TestClient(create_app(model))
    r = c.post("/predict", json={"tasks": [{"id": 1, "data": {"image": "x"}}],
                                 "label_config": '<View><Image name="i" value="$image"/></View>'})
    assert r.status_code == 400 and "BrushLabels" in r.json()["error"]
    assert c.post("/setup", json={"schema": "<View><Text name='t' value='$t'/></View>"}).status_code == 400
    no_token = ProposalModel.__new__(ProposalModel)
    no_token.__dict__.update(model.__dict__)
    no_token.fetcher = ImageFetcher("http://127.0.0.1:9", None)
    out = create_app(no_token)
    r = TestClient(out).post("/predict", json={
        "tasks": [{"id": 1, "data": {"image": "/data/upload/1/a.png"}},
                  {"id": 2, "data": {"image": "data:image/png;base64,AAAA"}},
                  {"id": 3, "data": {}}],
        "label_config": LabelingConfig().xml()}).json()
    assert r["results"] == [[], [], []]
    assert "LABEL_STUDIO_API_KEY" in r["errors"]["1"]
    assert "cannot be decoded" in r["errors"]["2"]
    assert "no data field 'image'" in r["errors"]["3"]
    with pytest.raises(LabelConfigError, match="no <Image>"):
        BrushTarget.from_config("<View><Text name='t' value='$t'/></View>")


def test_backend_granularity_answers_coarser_and_finer(model, shared_data):
    import base64

    from starlette.testclient import TestClient

    img = sorted((shared_data / "bsds500" / "images").glob("*"))[1]
    url = "data:image/jpeg;base64," + base64.b64encode(img.read_bytes()).decode()
    fine = ProposalModel.__new__(ProposalModel)
    fine.__dict__.update(model.__dict__)
    fine.granularity = True
    out = TestClient(create_app(fine)).post(
        "/predict", json={"tasks": [{"id": 1, "data": {"image": url}}], "label_config": LabelingConfig().xml()}).json()
    preds = out["results"][0]
    versions = [p["model_version"] for p in preds]
    assert versions[0] == model.model_version and len(preds) >= 2, versions
    assert all(v.startswith(model.model_version + "/") and ("coarser-k" in v or "finer-k" in v) for v in versions[1:])
