"""Dashboard pictures as PNG bytes (integrations.run_report) and their collection (flows.dashboard)."""

from __future__ import annotations

import base64
import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest_db import make_segmentation
from integrations import run_report as rr


def _decoded(png: bytes) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < rr.MAX_PNG_BYTES
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def test_each_picture_is_a_small_png_with_something_drawn():
    seg = make_segmentation(k=4)
    d = seg.diagnostics.to_dict()
    pictures = [
        rr.k_distribution_png([3, 4, 4, 5], [3, 3, None, 5]),
        rr.spectrum_png(d, "image #1"),
        rr.throughput_png({"read": 0.5, "engine: features": 4.0, "store": 0.2}, 10, "throughput"),
        rr.overlay_grid_png([(np.full((40, 60, 3), c, np.uint8), f"#{c}") for c in (30, 120, 200)]),
    ]
    for png in pictures:
        px = _decoded(png)
        assert px.shape[0] >= 60 and px.shape[1] >= 150 and px.std() > 20


def test_overlay_grid_needs_tiles():
    with pytest.raises(ValueError, match="no tiles"):
        rr.overlay_grid_png([])


def test_median_and_weakest_by_silhouette_at_the_chosen_k():
    recs = [{"k": 3, "silhouette": {3: s, 4: 0.9}, "id": i} for i, s in enumerate([0.5, 0.1, 0.7, 0.3, float("nan")])]
    median, weakest = rr.median_and_weakest(recs)
    assert (median["id"], weakest["id"]) == (3, 1)  # scored 0.1, 0.3, 0.5, 0.7 -> median 0.3 (lower middle)
    only_k = [{"k": k, "silhouette": {}} for k in (5, 2, 3)]
    assert rr.median_and_weakest(only_k) == ({"k": 3, "silhouette": {}}, None)


def test_run_dashboard_collects_and_draws_every_picture():
    from flows.dashboard import RunDashboard, png_markdown

    board = RunDashboard()
    done = []
    for i, k in enumerate((2, 3, 4, 3)):
        seg = make_segmentation(48, 64, k=k, seed=i)
        image = np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8)
        done.append((SimpleNamespace(image_id=i + 1, uri=f"/x/img{i}.jpg", image=image), seg))
    board.observe(done)
    assert board.chosen_k == [2, 3, 4, 3] and len(board.tiles) == 4
    summary = {"run_id": 7, "done": 4, "images_per_second": 1.5, "io_seconds": {"read": 0.2, "store": 0.4},
               "seconds_per_image_per_stage": {"features": 0.12, "total": 0.5}}
    pics = board.pictures(summary)
    assert set(pics) == {"segment-k-distribution", "segment-spectrum-median", "segment-spectrum-weakest",
                         "segment-overlays", "segment-throughput"}
    weakest = min(done, key=lambda d: d[1].diagnostics.silhouette[d[1].k])[0].image_id
    assert board.weakest["image_id"] == weakest
    md = png_markdown(pics["segment-overlays"][0], "overlays")
    assert base64.b64decode(md.split("base64,")[1].split(")")[0]) == pics["segment-overlays"][0]


def test_gpu_slots_setting(monkeypatch):
    from flows import gpu_slots

    monkeypatch.delenv("CLASP_GPU_SLOTS", raising=False)
    assert gpu_slots.gpu_slots() == 1
    monkeypatch.setenv("CLASP_GPU_SLOTS", "4")
    assert gpu_slots.gpu_slots() == 4
    for bad in ("two", "0"):
        monkeypatch.setenv("CLASP_GPU_SLOTS", bad)
        with pytest.raises(ValueError, match="CLASP_GPU_SLOTS"):
            gpu_slots.gpu_slots()
