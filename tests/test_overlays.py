"""Overlay files (integrations/overlays.py): named by id and file, one bad image fails alone."""

from __future__ import annotations

import numpy as np
from PIL import Image

from integrations.overlays import overlay_name, write_overlays


def test_overlay_names_sort_by_id_and_keep_the_file_stem():
    assert overlay_name(7, "https://cdn.example/ads/Summer Sale!.png?sig=abc") == "000007-Summer_Sale.jpg"
    assert overlay_name(12, "s3://bucket/") == "000012-bucket.jpg"
    assert overlay_name(3, "/x/...") == "000003-image.jpg"


def test_one_bad_image_fails_alone(tmp_path):
    image = np.zeros((40, 60, 3), np.uint8)
    labels = np.zeros((40, 60), np.int32)
    labels[:, 30:] = 1
    failed = write_overlays(tmp_path, [
        (1, "/a/one.jpg", image, labels),
        (2, "/a/two.jpg", np.zeros(5, np.uint8), labels),  # not an image: cannot be drawn
        (3, "/a/three.jpg", image, labels),
    ])
    assert list(failed) == [2] and failed[2]
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["000001-one.jpg", "000003-three.jpg"]
    assert Image.open(tmp_path / written[0]).size == (60, 40)


def test_an_unwritable_folder_fails_every_image_with_its_cause(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    image = np.zeros((8, 8, 3), np.uint8)
    failed = write_overlays(blocker / "overlays", [(1, "a", image, np.zeros((8, 8), np.int32)),
                                                   (2, "b", image, np.zeros((8, 8), np.int32))])
    assert set(failed) == {1, 2} and all(str(blocker / "overlays") in r for r in failed.values())
