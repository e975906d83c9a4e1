"""Label Studio integration, pure parts (no server): RLE, config, predictions, survival, client errors."""

from __future__ import annotations

import json
import logging

import httpx
import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle as sdk_decode_rle
from label_studio_sdk.converter.brush import encode_rle as sdk_encode_rle
from label_studio_sdk.converter.brush import mask2rle
from pydantic import SecretStr

from integrations.label_studio import rle
from integrations.label_studio.client import (
    LabelStudioAuthError,
    LabelStudioClient,
    LabelStudioResponseError,
    LabelStudioUnavailable,
    Project,
)
from integrations.label_studio.config import (
    brush_tags,
    is_proposal_label,
    DEFAULT_TAXONOMY,
    LabelConfigError,
    LabelingConfig,
    labels_in_config,
    validate_labels,
    validate_prediction,
)
from integrations.label_studio.images import ImageModeError, ImageResolver
from integrations.label_studio.predictions import (
    colour_regions,
    RegionPolicy,
    build_prediction,
    config_hash,
    model_version,
    plan_regions,
)
from integrations.label_studio.push import PushItem, push_segmentations
from integrations.label_studio.review import RegionMask, aggregate, regions_from_result, survival

TOKEN = "0123456789abcdef0123456789abcdef01234567"


# --------------------------------------------------------------------------- RLE


def _structured_masks(rng):
    h, w = 97, 131
    yy, xx = np.mgrid[:h, :w]
    yield np.zeros((h, w), np.uint8)
    yield np.full((h, w), 255, np.uint8)
    yield (((xx - 60) ** 2 + (yy - 40) ** 2) < 900).astype(np.uint8) * 255  # disc
    yield ((xx // 7 + yy // 5) % 2).astype(np.uint8) * 255  # checkerboard
    yield (xx % 2).astype(np.uint8) * 255  # single-pixel stripes: runs of exactly 4
    m = np.zeros((h, w), np.uint8)
    m[:, :3] = 255  # runs of 12 (4-bit length code)
    yield m
    m = np.zeros((h, w), np.uint8)
    m[10:20, 5:70] = 255  # runs of 260 (16-bit length code)
    yield m
    big = np.zeros((400, 400), np.uint8)
    big[150:, :] = 255  # runs longer than 65536 (split by the encoder)
    yield big
    exact = np.zeros((128, 128), np.uint8)
    exact[64:] = 255  # 65536 values in one run, then the rest
    yield exact
    yield np.zeros((1, 1), np.uint8)
    yield (rng.random((64, 64)) < 0.5).astype(np.uint8) * 255


def test_rle_byte_identical_to_sdk_structured(rng):
    for m in _structured_masks(rng):
        assert rle.mask_rle(m) == mask2rle(m), m.shape


def test_rle_byte_identical_to_sdk_random(rng):
    for _ in range(60):
        h, w = rng.integers(1, 90, size=2)
        p = rng.random()
        m = (rng.random((h, w)) < p).astype(np.uint8) * 255
        if rng.random() < 0.5:  # blobby masks: long runs
            m = np.repeat(np.repeat(m[: max(1, h // 8), : max(1, w // 8)], 8, 0), 8, 1)
        assert rle.mask_rle(m) == mask2rle(m)


def test_encode_rle_general_values_match_sdk(rng):
    """Arbitrary 8-bit arrays with single values and runs of every length class."""
    for _ in range(50):
        n = int(rng.integers(1, 400))
        vals = rng.integers(0, 256, n).astype(np.uint8)
        reps = rng.choice([1, 2, 8, 9, 16, 17, 256, 257, 65536, 65537, 70000], size=n, p=[.3, .1, .1, .1, .1, .1, .05, .05, .04, .03, .03])
        arr = np.repeat(vals, reps)
        assert rle.encode_rle(arr) == sdk_encode_rle(arr)


def test_rle_accepts_bool_masks_and_decodes_back(rng):
    m = rng.random((50, 60)) < 0.3
    code = rle.mask_rle(m)
    assert code == mask2rle(m.astype(np.uint8) * 255)
    assert np.array_equal(rle.decode_mask(code, 50, 60), m)
    assert np.array_equal(rle.decode_rle(code), sdk_decode_rle(code))
    with pytest.raises(ValueError):
        rle.decode_mask(code, 50, 61)


def test_rle_output_is_json_list_of_ints(rng):
    code = rle.mask_rle(rng.random((10, 10)) < 0.5)
    assert isinstance(code, list) and all(type(v) is int for v in code)
    assert json.loads(json.dumps(code)) == code


# --------------------------------------------------------------------------- config


def test_labeling_config_has_image_and_brushlabels_with_taxonomy():
    cfg = LabelingConfig()
    xml = cfg.xml()
    assert '<Image name="image" value="$image"' in xml
    # the taxonomy, plus one coloured proposal label per palette colour (touching proposals differ)
    assert labels_in_config(xml, "tag") == set(DEFAULT_TAXONOMY) | {f"region-{i}" for i in range(1, 7)}
    assert "region" in cfg.labels


def test_custom_taxonomy_adds_neutral_label():
    cfg = LabelingConfig.from_labels(["spam", "scam & fraud"])
    assert cfg.labels == ["region", "spam", "scam & fraud"]
    assert labels_in_config(cfg.xml(), "tag") == {"region", "spam", "scam & fraud", *cfg.proposal_labels}  # escaped, parsed back


def test_validate_labels_names_the_missing_ones():
    xml = LabelingConfig().xml()
    validate_labels(["region", "weapon"], xml, "tag")
    with pytest.raises(LabelConfigError, match="not-a-label"):
        validate_labels(["region", "not-a-label"], xml, "tag")
    with pytest.raises(LabelConfigError, match="no <BrushLabels"):
        validate_labels(["region"], xml, "other")
    with pytest.raises(LabelConfigError):
        LabelingConfig(taxonomy={"a": "#fff"})  # neutral label missing


def test_validate_prediction_checks_every_region():
    xml = LabelingConfig().xml()
    labels = np.zeros((8, 8), np.int64)
    labels[4:] = 1
    built = build_prediction(labels, {}, model_version="m")
    validate_prediction(built.prediction, xml, "tag")
    built.prediction["result"][1]["value"]["brushlabels"] = ["bogus"]
    with pytest.raises(LabelConfigError, match="bogus"):
        validate_prediction(built.prediction, xml, "tag")


# --------------------------------------------------------------------------- predictions


def _three_regions():
    labels = np.zeros((20, 30), np.int64)
    labels[:, 10:20] = 1
    labels[:, 20:] = 2
    labels[0:2, 0:2] = 3  # a tiny segment (4 px) inside segment 0
    return labels


def test_build_prediction_one_region_per_segment():
    labels = _three_regions()
    conf = {0: 0.5, 1: 0.9, 2: 0.7, 3: 0.1}
    built = build_prediction(labels, conf, model_version="clasp-0.1.0/x/abc")
    p = built.prediction
    assert p["model_version"] == "clasp-0.1.0/x/abc"
    assert len(p["result"]) == 4
    for r, seg in zip(p["result"], range(4)):
        assert r["type"] == "brushlabels" and r["from_name"] == "tag" and r["to_name"] == "image"
        assert (r["original_width"], r["original_height"]) == (30, 20)
        assert is_proposal_label(r["value"]["brushlabels"][0]) and r["value"]["format"] == "rle"
        assert np.array_equal(rle.decode_mask(r["value"]["rle"], 20, 30), labels == seg)
        assert r["score"] == conf[seg]
    areas = np.bincount(labels.ravel())
    expected = sum(areas[i] * conf[i] for i in range(4)) / labels.size
    assert p["score"] == pytest.approx(expected, abs=1e-6)


def test_small_segments_merged_into_neighbour_or_dropped():
    labels = _three_regions()
    merged = build_prediction(labels, {}, model_version="m", policy=RegionPolicy(min_area=10))
    assert len(merged.regions) == 3 and merged.merged == {3: 0} and not merged.dropped
    m0 = rle.decode_mask(merged.prediction["result"][0]["value"]["rle"], 20, 30)
    assert np.array_equal(m0, np.isin(labels, [0, 3]))
    dropped = build_prediction(labels, {}, model_version="m", policy=RegionPolicy(min_area=10, small="drop"))
    assert len(dropped.regions) == 3 and dropped.dropped == [3]
    union = np.zeros(labels.shape, bool)
    for r in dropped.prediction["result"]:
        union |= rle.decode_mask(r["value"]["rle"], 20, 30)
    assert not union[0:2, 0:2].any() and union.sum() == labels.size - 4


def test_region_cap_keeps_the_largest():
    labels = np.repeat(np.arange(12), 10)[None, :].repeat(5, 0)  # 12 stripes
    labels[:, :30] = 0  # label 0 is the largest
    labels = np.unique(labels, return_inverse=True)[1].reshape(labels.shape)
    built = build_prediction(labels, {}, model_version="m", policy=RegionPolicy(max_regions=4))
    assert len(built.regions) == 4
    total = sum(r.area for r in built.regions)
    assert total == labels.size  # merged, nothing lost
    built = build_prediction(labels, {}, model_version="m", policy=RegionPolicy(max_regions=4, small="drop"))
    assert len(built.regions) == 4 and built.regions[0].labels == (0,)


def test_plan_regions_leaves_a_single_segment_alone():
    group, dropped, merged = plan_regions(np.zeros((5, 5), np.int64), RegionPolicy(min_area=100))
    assert list(group) == [0] and not dropped and not merged


def test_model_version_names_engine_backbone_and_config_hash():
    cfg = {"backbone": "vit_small", "k_max": 8}
    mv = model_version("0.1.0", "vit_small_patch8_224.dino", cfg, "pixel")
    assert mv == f"clasp-0.1.0/vit_small_patch8_224.dino/pixel/{config_hash(cfg)}"
    from clasp_engine import SegmenterConfig

    c = SegmenterConfig()
    assert config_hash(c.to_dict()) == c.fingerprint()


def test_label_not_in_taxonomy_is_refused():
    with pytest.raises(LabelConfigError):
        build_prediction(np.zeros((3, 3), np.int64), {}, model_version="m", label="unknown")


# --------------------------------------------------------------------------- survival


def _rm(mask, rid=None, labels=("region",)):
    return RegionMask(rid, np.asarray(mask, bool), tuple(labels))


def test_survival_hand_computed():
    h, w = 10, 10
    a = np.zeros((h, w), bool); a[:5, :5] = True  # 25 px
    b = np.zeros((h, w), bool); b[:5, 5:] = True  # 25 px
    c = np.zeros((h, w), bool); c[5:, :] = True  # 50 px
    b_edit = np.zeros((h, w), bool); b_edit[:5, 5:] = True; b_edit[:5, 4] = True  # 30 px, IoU 25/30
    new = np.zeros((h, w), bool); new[9, 9] = True  # hand-drawn, overlaps c only: IoU 1/50
    proposals = [_rm(a, "p0"), _rm(b, "p1"), _rm(c, "p2")]
    final = [_rm(a, "p0", ["violence"]), _rm(b_edit, "p1"), _rm(new, "x")]
    s = survival(proposals, final)
    assert s["n_proposals"] == 3 and s["n_final"] == 3
    assert s["kept"] == 1 and s["redrawn"] == 1 and s["deleted"] == 1 and s["added"] == 1
    assert s["share_kept"] == pytest.approx(1 / 3, abs=1e-6)
    assert s["best_iou"][0] == 1.0
    assert s["best_iou"][1] == pytest.approx(25 / 30, abs=1e-6)
    assert s["best_iou"][2] == pytest.approx(1 / 50, abs=1e-6)
    assert s["mean_best_iou"] == pytest.approx((1 + 25 / 30 + 1 / 50) / 3, abs=1e-6)
    assert s["relabelled"] == 1 and s["labels"] == {"violence": 1, "region": 2}
    assert [p["fate"] for p in s["proposals"]] == ["kept", "redrawn", "deleted"]


def test_survival_edge_cases_and_aggregate():
    m = np.ones((4, 4), bool)
    s0 = survival([_rm(m)], [])
    assert s0["deleted"] == 1 and s0["mean_best_iou"] is None
    s1 = survival([], [_rm(m)])
    assert s1["added"] == 1 and s1["share_kept"] == 0.0
    agg = aggregate([s0, s1, survival([_rm(m)], [_rm(m)])])
    assert agg["tasks"] == 3 and agg["n_proposals"] == 2 and agg["kept"] == 1 and agg["share_kept"] == 0.5
    assert agg["mean_best_iou"] == pytest.approx(0.5)


def test_regions_from_result_roundtrip():
    labels = _three_regions()
    built = build_prediction(labels, {}, model_version="m")
    regions = regions_from_result(built.prediction["result"], "tag")
    assert [r.region_id for r in regions] == ["clasp-0", "clasp-1", "clasp-2", "clasp-3"]
    for i, r in enumerate(regions):
        assert np.array_equal(r.mask, labels == i)


# --------------------------------------------------------------------------- images


def test_image_modes(tmp_path):
    img = tmp_path / "sub" / "a b.png"
    img.parent.mkdir()
    img.write_bytes(b"\x89PNG" + b"0" * 100)
    auto = ImageResolver(document_root=tmp_path)
    assert auto.resolve("https://cdn.example.com/x.jpg").mode == "url"
    r = auto.resolve(str(img))
    assert r.mode == "local-files" and r.value == "/data/local-files/?d=sub/a%20b.png" and r.storage_dir == img.parent
    assert auto.resolve(img.as_uri()).mode == "local-files"
    d = ImageResolver(mode="data-url").resolve(str(img))
    assert d.mode == "data-url" and d.value.startswith("data:image/png;base64,")
    with pytest.raises(ImageModeError, match="cap"):
        ImageResolver(mode="data-url", data_url_max_bytes=10).resolve(str(img))
    with pytest.raises(ImageModeError):
        ImageResolver(mode="url").resolve(str(img))
    with pytest.raises(ImageModeError):
        ImageResolver(mode="local-files")  # no document root
    with pytest.raises(ImageModeError, match="outside"):
        ImageResolver(mode="local-files", document_root=tmp_path / "sub" / "x").resolve(str(img))
    assert "local-files" in ImageResolver(mode="local-files", document_root=tmp_path).describe()


# --------------------------------------------------------------------------- client


def _client(handler, **kw) -> LabelStudioClient:
    kw.setdefault("retries", 2)
    kw.setdefault("backoff", 0.001)
    return LabelStudioClient("http://ls.test", SecretStr(TOKEN), transport=httpx.MockTransport(handler), **kw)


def test_token_never_in_str_repr_or_errors(caplog):
    def handler(request):
        assert request.headers["Authorization"] == f"Token {TOKEN}"
        return httpx.Response(500, text=f"boom, your token was {TOKEN}")

    c = _client(handler)
    assert TOKEN not in repr(c) and TOKEN not in str(c)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(LabelStudioUnavailable) as ei:
            c.version()
    assert TOKEN not in str(ei.value) and TOKEN not in repr(ei.value)
    assert TOKEN not in caplog.text
    from integrations.settings import Settings

    s = Settings(LABEL_STUDIO_URL="http://ls.test", LABEL_STUDIO_API_KEY=TOKEN)
    assert TOKEN not in repr(s) and TOKEN not in str(s.model_dump())


def test_retries_5xx_then_succeeds():
    calls = []

    def handler(request):
        calls.append(1)
        if len(calls) < 3:
            return httpx.Response(503, text="busy")
        return httpx.Response(200, json={"release": "1.23"})

    assert _client(handler).version() == {"release": "1.23"}
    assert len(calls) == 3


def test_connect_error_retried_then_unavailable():
    calls = []

    def handler(request):
        calls.append(1)
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(LabelStudioUnavailable, match="unavailable"):
        _client(handler, retries=3).version()
    assert len(calls) == 4


@pytest.mark.parametrize("status", [401, 403])
def test_auth_error_names_the_token_setting(status):
    c = _client(lambda r: httpx.Response(status, json={"detail": "Invalid token."}))
    with pytest.raises(LabelStudioAuthError, match="LABEL_STUDIO_API_KEY") as ei:
        c.projects()
    assert TOKEN not in str(ei.value)


def test_missing_token_is_a_clear_error():
    with pytest.raises(LabelStudioAuthError, match="LABEL_STUDIO_API_KEY"):
        LabelStudioClient("http://ls.test", None)


def test_malformed_response_has_an_excerpt():
    c = _client(lambda r: httpx.Response(200, text="<html>proxy error page</html>"))
    with pytest.raises(LabelStudioResponseError, match="proxy error page"):
        c.version()
    c = _client(lambda r: httpx.Response(201, json={"task_count": 1}))
    with pytest.raises(LabelStudioResponseError, match="task_ids"):
        c.import_tasks(1, [{"data": {}}])
    c = _client(lambda r: httpx.Response(200, json=[1, 2]))
    with pytest.raises(LabelStudioResponseError, match="expected dict"):
        c.version()


class FakeLabelStudio:
    """Just enough of the REST API for push logic tests (tasks, import, predictions)."""

    def __init__(self):
        self.tasks: list[dict] = []
        self.preds: list[dict] = []
        self.import_calls = 0
        self.fail_imports = 0  # next N imports answer 502 after storing (the worst case)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.rstrip("/")  # the SDK asks for /api/tasks/, older code for /api/tasks
        if path == "/api/tasks":
            return httpx.Response(200, json={"tasks": [{"id": t["id"], "data": t["data"]} for t in self.tasks], "total": len(self.tasks)})
        if path.endswith("/import"):
            self.import_calls += 1
            body = json.loads(request.content)
            ids = []
            for t in body:
                tid = len(self.tasks) + 1
                self.tasks.append({"id": tid, "data": t["data"]})
                for p in t.get("predictions", []):
                    self.preds.append({**p, "id": len(self.preds) + 1, "task": tid})
                ids.append(tid)
            if self.fail_imports:
                self.fail_imports -= 1
                return httpx.Response(502, text="bad gateway")
            return httpx.Response(201, json={"task_count": len(ids), "task_ids": ids})
        if path == "/api/predictions":
            return httpx.Response(200, json=self.preds)
        return httpx.Response(404, json={"detail": "not found"})


def _items(n, mv="mv1"):
    labels = np.zeros((6, 8), np.int64)
    labels[3:] = 1
    return [PushItem(i, f"https://img.example.com/{i}.jpg", labels, mv) for i in range(1, n + 1)]


def test_push_is_bulk_and_idempotent():
    fake = FakeLabelStudio()
    c = _client(fake)
    project = Project(1, "p", LabelingConfig().xml())
    seen = []
    r = push_segmentations(c, project, _items(7), batch_size=3, on_batch=seen.extend)
    assert len(r.sent) == 7 and fake.import_calls == 3 and r.image_modes == {"url": 7}
    assert [x.prediction_id for x in r.sent] == list(range(1, 8))
    assert all(x.n_regions == 2 for x in r.sent)
    r2 = push_segmentations(c, project, _items(7), batch_size=3)
    assert not r2.sent and len(r2.existing) == 7 and fake.import_calls == 3 and len(fake.tasks) == 7
    r3 = push_segmentations(c, project, _items(2, mv="mv2"))  # a new model version is a new task
    assert len(r3.sent) == 2 and len(fake.tasks) == 9


def test_push_reconciles_a_batch_that_landed_despite_a_5xx():
    fake = FakeLabelStudio()
    fake.fail_imports = 1
    c = _client(fake)
    r = push_segmentations(c, Project(1, "p", LabelingConfig().xml()), _items(4), batch_size=10, backoff=0.001)
    assert r.ok and len(r.sent) == 4 and len(fake.tasks) == 4  # not imported twice
    assert [x.task_id for x in r.sent] == [1, 2, 3, 4]


def test_push_refuses_labels_missing_from_project_config():
    cfg = LabelingConfig.from_labels(["spam"])
    project = Project(1, "p", LabelingConfig.from_labels(["spam"], neutral_label="other").xml())
    with pytest.raises(LabelConfigError, match="region"):
        push_segmentations(_client(FakeLabelStudio()), project, _items(1), labeling=cfg)


def test_push_when_down_keeps_everything_unsent():
    def handler(request):
        raise httpx.ConnectError("refused", request=request)

    r = push_segmentations(_client(handler), Project(1, "p", LabelingConfig().xml()), _items(3), backoff=0.001)
    assert not r.sent and r.unsent == [1, 2, 3] and "unavailable" in r.error


def test_label_map_rles_byte_identical_to_sdk_per_region(rng):
    for _ in range(20):
        h, w = rng.integers(1, 70, size=2)
        k = int(rng.integers(1, 9))
        labels = rng.integers(0, k, size=(max(1, h // 4), max(1, w // 4)))
        labels = np.repeat(np.repeat(labels, 4, 0), 4, 1)[:h, :w] if h >= 4 and w >= 4 else labels
        codes = rle.label_map_rles(labels, range(k + 1))  # k: absent label -> empty mask
        for v in range(k + 1):
            assert codes[v] == mask2rle((labels == v).astype(np.uint8) * 255)


def test_prediction_rles_equal_sdk_encoder():
    labels = _three_regions()
    built = build_prediction(labels, {}, model_version="m", policy=RegionPolicy(min_area=10))
    sdk = build_prediction(labels, {}, model_version="m", policy=RegionPolicy(min_area=10), encoder=rle.sdk_mask_rle)
    assert built.prediction == sdk.prediction


# --------------------------------------------------------------------------- colours


def test_touching_regions_get_different_colours(rng):
    labels = _three_regions()
    built = build_prediction(labels, {}, model_version="m")
    names = {r["id"]: r["value"]["brushlabels"][0] for r in built.prediction["result"]}
    # 0 touches 1 and 3, 1 touches 2
    assert names["clasp-0"] != names["clasp-1"] and names["clasp-1"] != names["clasp-2"]
    assert names["clasp-0"] != names["clasp-3"]
    for _ in range(20):  # Voronoi partitions: planar, so 6 colours always separate neighbours
        k = int(rng.integers(3, 30))
        pts = rng.random((k, 2)) * 60
        yy, xx = np.mgrid[:60, :60]
        lab = np.argmin((yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2, axis=-1)
        col = colour_regions(lab, sorted(set(lab.ravel().tolist())), 6)
        for a, b in ((lab[:, 1:], lab[:, :-1]), (lab[1:], lab[:-1])):
            diff = a != b
            pairs = {(int(x), int(y)) for x, y in zip(a[diff], b[diff])}
            assert all(col[x] != col[y] for x, y in pairs)


def test_colouring_falls_back_to_shortest_shared_border_when_colours_run_out():
    labels = np.repeat(np.arange(4)[None, :], 3, 0).repeat(5, 1)  # 4 stripes in a row
    col = colour_regions(labels, [0, 1, 2, 3], 1)
    assert set(col.values()) == {0}
    col = colour_regions(labels, [0, 1, 2, 3], 2)
    assert col[0] != col[1] and col[1] != col[2] and col[2] != col[3]


def test_region_scores_only_with_confidences():
    labels = _three_regions()
    bare = build_prediction(labels, {}, model_version="m").prediction
    assert "score" not in bare and all("score" not in r for r in bare["result"])
    scored = build_prediction(labels, {0: 0.2, 1: 0.9, 2: 0.6, 3: 0.4}, model_version="m").prediction
    assert len({r["score"] for r in scored["result"]}) == 4


def test_config_hotkeys_and_brush_tags():
    cfg = LabelingConfig()
    xml = cfg.xml()
    assert 'value="nudity" background="#FF3B30" hotkey="1"' in xml
    name, to, key, labels = brush_tags(xml)
    assert (name, to, key) == ("tag", "image", "image") and set(labels) == set(cfg.config_labels)
    with pytest.raises(LabelConfigError, match="BrushLabels"):
        brush_tags('<View><Image name="img" value="$url"/><Choices name="c" toName="img"><Choice value="a"/></Choices></View>')
    with pytest.raises(LabelConfigError, match="Image"):
        brush_tags('<View><Text name="t" value="$text"/></View>')


def test_survival_counts_coloured_proposal_labels_as_neutral():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    st = survival([RegionMask("p", a)], [RegionMask("p", a, ("region-3",))])
    assert st["relabelled"] == 0 and st["labels"] == {"region": 1}


# --------------------------------------------------------------------------- granularity


def test_engine_keeps_coarser_and_finer_partitions_and_push_sends_them():
    from clasp_engine import Segmenter, SegmenterConfig
    from integrations.label_studio.predictions import granularity_alternatives
    from integrations.samples import sample_image_paths

    photo = next(p for p in sample_image_paths() if p.name == "grace_hopper.jpg")
    seg = Segmenter(SegmenterConfig(backbone="classic", variant="patch"))(str(photo))
    alts = granularity_alternatives(seg)
    assert alts, f"the K search kept no alternative to K={seg.k} (candidates: {sorted(seg.alternatives)})"
    for name, (k, lab) in alts.items():
        assert lab.shape == seg.labels.shape and int(lab.max()) + 1 == k
        assert (k < seg.k) if name == "coarser" else (k > seg.k)
    fake = FakeLabelStudio()
    item = PushItem(1, "https://img.example.com/1.jpg", seg.labels, "mv1", alternatives=alts)
    r = push_segmentations(_client(fake), Project(1, "p", LabelingConfig().xml()), [item])
    assert r.ok and [x.prediction_id for x in r.sent] == [1]  # the record keeps the main prediction
    versions = [p["model_version"] for p in fake.preds]
    assert versions[0] == "mv1" and sorted(versions[1:]) == sorted(f"mv1/{n}-k{k}" for n, (k, _) in alts.items())


# --------------------------------------------------------------------------- one retry layer


def test_one_retry_layer_when_down():
    calls = []

    def handler(request):
        calls.append(request.url.path)
        raise httpx.ConnectError("refused", request=request)

    # the client would retry 10 times on its own; the push's policy (3 retries) replaces it, never multiplies
    r = push_segmentations(_client(handler, retries=10), Project(1, "p", LabelingConfig().xml()), _items(3),
                           retries=3, backoff=0.001)
    assert not r.sent and "unavailable" in r.error
    assert len(calls) == 4  # 1 + 3 retries (the old client inside the old push loop: up to 25)


def test_import_retried_only_by_the_reconcile_loop():
    fake = FakeLabelStudio()
    seen = []

    def handler(request):
        seen.append(request.url.path.rstrip("/"))
        if request.url.path.endswith("/import"):
            return httpx.Response(502, text="bad gateway")  # nothing stored
        return fake(request)

    r = push_segmentations(_client(handler, retries=10), Project(1, "p", LabelingConfig().xml()), _items(2),
                           retries=2, backoff=0.001)
    assert not r.sent and r.unsent == [1, 2] and "unavailable" in r.error
    assert sum(p.endswith("/import") for p in seen) == 3 == r.import_requests  # 1 + 2 retries, no nesting
    # between two imports, the keys are read back first (a batch that landed is never sent twice)
    imports = [i for i, p in enumerate(seen) if p.endswith("/import")]
    assert all(seen[i - 1] == "/api/tasks" for i in imports[1:])
