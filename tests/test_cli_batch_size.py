"""`clasp segment --batch-size N`: the same K and label maps whatever the batch size (classic backbone, CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from clasp_cli.main import main


def _photo_like(seed: int, h: int = 120, w: int = 160) -> np.ndarray:
    """Same-size images with a varying number of blocks, so that K varies across the batch."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float64)
    img[:] = rng.integers(0, 256, 3)
    for _ in range(1 + seed % 4):
        y, x = rng.integers(0, h - 40), rng.integers(0, w - 50)
        img[y:y + 40, x:x + 50] = rng.integers(0, 256, 3)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("variant", ["patch", "pixel"])
def test_batch_size_8_and_1_give_the_same_k_and_label_maps(tmp_path, variant):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(9):  # 8 in one batch plus one more
        Image.fromarray(_photo_like(i)).save(src / f"img{i}.png")
    outs = {}
    for n in (8, 1):
        out = tmp_path / f"out{n}"
        assert main(["segment", str(src), "--out", str(out), "--backbone", "classic", "--variant", variant,
                     "--max-side", "160", "--batch-size", str(n)]) == 0
        outs[n] = out
    ks = set()
    for i in range(9):
        a = json.loads((outs[8] / f"img{i}.json").read_text())
        b = json.loads((outs[1] / f"img{i}.json").read_text())
        assert a["k"] == b["k"] and a["silhouette"] == b["silhouette"]
        ks.add(a["k"])
        with Image.open(outs[8] / f"img{i}.png") as x, Image.open(outs[1] / f"img{i}.png") as y:
            assert np.array_equal(np.asarray(x), np.asarray(y))
    assert len(ks) > 1


def test_batch_size_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["segment", str(tmp_path), "--out", str(tmp_path / "o"), "--batch-size", "0"])
    assert "1 or more" in capsys.readouterr().err
