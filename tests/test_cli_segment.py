"""`clasp segment`: files written, JSON keys, a corrupt file reported with exit code 1."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import clasp_engine.segmenter as segmenter_module
from clasp_cli.main import main

from engine_support import FakeBackbone


@pytest.fixture
def fake_backbone(monkeypatch):
    real = segmenter_module.Segmenter
    seen = []

    def make(config=None, backbone=None):
        seen.append(config)
        return real(config, backbone=FakeBackbone("random"))

    monkeypatch.setattr(segmenter_module, "Segmenter", make)
    return seen


def _scene(seed: int, h: int = 96, w: int = 128) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = (30, 60, 200)
    img[h // 3:, : w // 2] = (240, 200, 40)
    img[: h // 4] = (20, 200, 30)
    return np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)


def test_segment_folder_writes_files_and_corrupt_file_fails(tmp_path, fake_backbone, capsys, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_scene(0)).save(src / "a.png")
    Image.fromarray(_scene(1)).save(src / "c.jpg")
    (src / "b.jpg").write_bytes(b"not a jpeg at all")
    (src / "notes.txt").write_text("ignored: not an image extension")
    out = tmp_path / "out"
    monkeypatch.setenv("CLASP_MAX_SIDE", "128")
    code = main(["segment", str(src), "--out", str(out), "--variant", "patch", "--plots"])
    captured = capsys.readouterr()
    assert code == 1
    assert "b.jpg" in captured.err and "error" in captured.err
    assert fake_backbone[0].max_side == 128 and fake_backbone[0].variant == "patch"  # env + flags
    assert "!" * 72 + "\nWARNING: random weights" in captured.err and "weights: random" in captured.out
    for stem in ("a", "c"):
        labels = np.asarray(Image.open(out / f"{stem}.png"))
        assert labels.dtype == np.uint8 and labels.shape == (96, 128)
        d = json.loads((out / f"{stem}.json").read_text())
        for key in ("k", "elbow_k", "eigenvalues", "eigengaps", "silhouette", "backbone", "variant", "width",
                    "height", "timings", "segments"):
            assert key in d
        assert sorted(np.unique(labels).tolist()) == list(range(d["k"]))
        assert sum(s["area"] for s in d["segments"]) == 96 * 128
        assert (out / f"{stem}_overlay.jpg").stat().st_size > 0
        assert (out / f"{stem}_spectrum.png").stat().st_size > 0
    assert not (out / "b.png").exists()


def test_segment_all_good_exits_zero_and_flags_reach_config(tmp_path, fake_backbone):
    Image.fromarray(_scene(2)).save(tmp_path / "x.png")
    out = tmp_path / "out"
    code = main(["segment", str(tmp_path / "x.png"), "--out", str(out), "--k", "2", "--max-side", "64",
                 "--variant", "pixel"])
    assert code == 0
    cfg = fake_backbone[0]
    assert (cfg.k, cfg.max_side, cfg.variant) == (2, 64, "pixel")
    d = json.loads((out / "x.json").read_text())
    assert d["k"] <= 2 and d["k_rule"] == "fixed"
    assert not (out / "x_spectrum.png").exists()


def test_missing_path_and_nothing_to_do(tmp_path, fake_backbone, capsys):
    assert main(["segment", str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "o")]) == 1
    assert "nope.jpg" in capsys.readouterr().err


def test_classic_backbone_end_to_end(tmp_path):
    """The real weight-free backbone, if the backbones package is importable."""
    pytest.importorskip("clasp_engine.backbones.classic")
    Image.fromarray(_scene(3)).save(tmp_path / "y.png")
    code = main(["segment", str(tmp_path / "y.png"), "--out", str(tmp_path / "o"), "--backbone", "classic",
                 "--max-side", "96", "--variant", "patch", "--device", "cpu"])
    assert code == 0
    assert json.loads((tmp_path / "o" / "y.json").read_text())["backbone"].startswith("classic")


def test_samples_flag_adds_sample_images(tmp_path, fake_backbone, monkeypatch):
    import integrations.samples

    sample = tmp_path / "sample.png"
    Image.fromarray(_scene(4)).save(sample)
    monkeypatch.setattr(integrations.samples, "sample_image_paths", lambda: [sample])
    assert main(["segment", "--samples", "--out", str(tmp_path / "o"), "--max-side", "64"]) == 0
    assert (tmp_path / "o" / "sample.json").exists()
