"""Segmenter end to end with a small fake backbone (no weights, no timm), and the renderers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clasp_engine import SegmenterConfig
from clasp_engine.result import Diagnostics
from clasp_engine.segmenter import STAGES, Segmenter

from engine_support import FakeBackbone


def scene(h: int = 150, w: int = 230, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = np.zeros((h, w, 3), np.float64)
    img[:] = (30, 60, 200)
    img[(yy - h // 2) ** 2 + (xx - w // 3) ** 2 < (h // 4) ** 2] = (240, 200, 40)
    img[: h // 5] = (20, 200, 30)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def results():
    img = scene()
    out = {}
    for variant in ("patch", "pixel"):
        seg = Segmenter(SegmenterConfig(variant=variant, max_side=224), backbone=FakeBackbone())
        out[variant] = (seg(img), seg(img.copy()))
    return img, out


@pytest.mark.parametrize("variant", ["patch", "pixel"])
def test_labels_original_size_compact_and_deterministic(results, variant):
    img, out = results
    a, b = out[variant]
    assert a.labels.shape == img.shape[:2] and a.labels.dtype == np.uint8
    assert np.array_equal(a.labels, b.labels)
    assert sorted(np.unique(a.labels).tolist()) == list(range(a.k))
    assert a.k == 3  # sky band, disc, background
    assert sum(s.area for s in a.segments) == img.shape[0] * img.shape[1]
    for s in a.segments:
        mask = a.labels == s.label
        assert s.area == mask.sum()
        ys, xs = np.nonzero(mask)
        assert s.bbox == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert 0.0 <= s.confidence <= 1.0
    assert a.patch_labels.shape == a.diagnostics.grid


def test_diagnostics_complete(results):
    img, out = results
    r = out["pixel"][0]
    d = r.diagnostics
    assert d.k_rule == "silhouette" and d.elbow_k is not None and r.k in d.silhouette
    assert len(d.eigenvalues) == 20 and len(d.eigengaps) == 19 == len(d.elbow_distances)
    assert (d.width, d.height) == (img.shape[1], img.shape[0])
    assert d.work_width % 8 == 0 and d.grid == (d.work_height // 8, d.work_width // 8)
    assert set(d.timings) == set(STAGES) and d.timings["crf"] > 0
    assert d.timings["total"] == pytest.approx(sum(v for k, v in d.timings.items() if k != "total"))
    assert d.solver and d.device == "cpu" and d.weights == "none" and d.variant == "pixel"
    j = r.to_dict()
    for key in ("k", "elbow_k", "eigenvalues", "eigengaps", "silhouette", "backbone", "variant", "width",
                "height", "timings", "segments"):
        assert key in j
    import json

    back = Diagnostics.from_dict(json.loads(json.dumps(d.to_dict())))
    assert back == d
    assert out["patch"][0].diagnostics.timings["crf"] == 0


def test_fixed_k_and_warnings():
    seg = Segmenter(SegmenterConfig(variant="patch", max_side=128, k=2), backbone=FakeBackbone("random"))
    r = seg(scene())
    assert r.k == 2 and r.diagnostics.k_rule == "fixed" and r.diagnostics.silhouette == {}
    assert any("random weights" in w for w in r.diagnostics.warnings)


def test_batch_shares_forward_passes_and_matches_single():
    bb = FakeBackbone()
    seg = Segmenter(SegmenterConfig(variant="patch", max_side=128), backbone=bb)
    imgs = [scene(seed=0), scene(seed=1), scene(100, 100)]
    batch = seg.segment_batch(imgs)
    assert bb.calls == [2, 1]  # two same-size images share one pass
    single = seg(imgs[1])
    assert np.array_equal(batch[1].labels, single.labels)


def test_inputs_path_bytes_pil(tmp_path):
    from PIL import Image

    img = scene()
    path = tmp_path / "x.png"
    Image.fromarray(img).save(path)
    seg = Segmenter(SegmenterConfig(variant="patch", max_side=128), backbone=FakeBackbone())
    ref = seg(img).labels
    for source in (path, str(path), path.read_bytes(), Image.open(path)):
        assert np.array_equal(seg(source).labels, ref)


def test_render_overlay_and_spectrum_figure(results, artifacts_dir):
    from PIL import Image

    from clasp_engine.render import overlay, spectrum_figure

    img, out = results
    r = out["pixel"][0]
    ov = overlay(img, r.labels)
    assert ov.shape == img.shape and ov.dtype == np.uint8
    assert not np.array_equal(ov, img)
    path = artifacts_dir / "test_spectrum.png"
    spectrum_figure(r.diagnostics).savefig(path)  # the engine builds the figure; the caller writes it
    with Image.open(path) as fig:
        assert fig.size[0] > 600


def test_classic_fallback_is_flagged():
    bb = FakeBackbone()
    bb.name = "classic:auto-fallback"
    seg = Segmenter(SegmenterConfig(backbone="auto", variant="patch", max_side=64), backbone=bb)
    assert any("classic" in w for w in seg(scene()).diagnostics.warnings)


def _varied_scenes(count: int = 8) -> list[np.ndarray]:
    """Same-size scenes whose regions differ, so K differs between them."""
    out = []
    for i in range(count):
        img = scene(seed=i)
        rng = np.random.default_rng(100 + i)
        for _ in range(i % 4):
            y, x = rng.integers(0, 110), rng.integers(0, 180)
            img[y:y + 40, x:x + 50] = rng.integers(0, 256, 3)
        out.append(img)
    return out


@pytest.mark.parametrize("variant", ["patch", "pixel"])
def test_batch_of_8_equals_8_batches_of_1(variant):
    imgs = _varied_scenes()
    seg = Segmenter(SegmenterConfig(variant=variant, max_side=224), backbone=FakeBackbone())
    batch = seg.segment_batch(imgs)
    assert seg.backbone.calls[-1] == 8
    ks = set()
    for img, together in zip(imgs, batch):
        alone = seg(img)
        assert alone.k == together.k
        assert np.array_equal(alone.labels, together.labels)
        assert alone.diagnostics.silhouette == together.diagnostics.silhouette
        ks.add(alone.k)
    assert len(ks) > 1  # the batch mixed images with different K


def test_bad_image_in_a_batch_fails_alone():
    from clasp_engine.errors import ClaspError

    seg = Segmenter(SegmenterConfig(variant="patch", max_side=128), backbone=FakeBackbone())
    imgs = [scene(seed=0), b"not an image", scene(seed=1), np.zeros((2, 2, 2, 2), np.uint8)]
    out = seg.segment_batch(imgs, errors="return")
    assert isinstance(out[1], ClaspError) and isinstance(out[3], ClaspError)
    assert np.array_equal(out[0].labels, seg(imgs[0]).labels)
    assert np.array_equal(out[2].labels, seg(imgs[2]).labels)
    with pytest.raises(ClaspError):
        seg.segment_batch(imgs)
    with pytest.raises(ValueError):
        seg.segment_batch(imgs, errors="ignore")


class _OOMOverTwo(FakeBackbone):
    """Runs out of 'device memory' on more than two images at once (simulated on CPU)."""

    def patch_features(self, images):
        if len(images) > 2:
            self.calls.append(-len(images))
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return super().patch_features(images)


def test_out_of_memory_splits_the_batch():
    imgs = _varied_scenes(5)
    bb = _OOMOverTwo()
    seg = Segmenter(SegmenterConfig(variant="patch", max_side=224), backbone=bb)
    out = seg.segment_batch(imgs)
    assert bb.calls == [-5, 2, -3, 1, 2]  # 5 -> 2 + 3 -> 2 + (1 + 2)
    ref = Segmenter(SegmenterConfig(variant="patch", max_side=224), backbone=FakeBackbone())
    for img, r in zip(imgs, out):
        assert np.array_equal(r.labels, ref(img).labels)
    single = Segmenter(SegmenterConfig(variant="patch", max_side=224), backbone=_OOMOverTwo(), max_batch=8)
    assert single(imgs[0]).k >= 1


def test_crf_pool_gives_the_in_process_labels():
    imgs = _varied_scenes(3)
    config = SegmenterConfig(variant="pixel", max_side=128)
    pooled = Segmenter(config, backbone=FakeBackbone(), max_batch=2, crf_workers=1).segment_batch(imgs)
    local = Segmenter(config, backbone=FakeBackbone(), max_batch=2).segment_batch(imgs)
    for a, b in zip(pooled, local):
        assert a.k == b.k and np.array_equal(a.labels, b.labels)
        assert a.diagnostics.timings["crf"] > 0
    with pytest.raises(ValueError):
        Segmenter(config, backbone=FakeBackbone(), crf_workers=-1)
