"""Images that decode with a caveat are named in the run's summary (issue 13.8): an animated GIF
(only its first frame is segmented) and a JPEG with corrupt EXIF (orientation not applied)."""

from __future__ import annotations

import io

import numpy as np
import pytest

import flows_support as fs

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def harness(request):
    fs.ensure_harness(request)


def _animated_gif(path):
    from PIL import Image

    rgb = (np.random.default_rng(0).random((96, 96, 3)) * 255).astype(np.uint8)
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb), Image.fromarray(rgb[::-1])]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:])


def _corrupt_exif_jpeg(path):
    from PIL import Image

    rgb = (np.random.default_rng(1).random((96, 96, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    jpeg = buf.getvalue()
    exif = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08" + b"\xff" * 40  # an IFD that points past its end
    path.write_bytes(jpeg[:2] + b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif + jpeg[2:])


def test_animated_and_corrupt_exif_images_are_named(tmp_path):
    from flows.ingest import ingest
    from flows.segment import segment

    gif, jpeg = tmp_path / "moving.gif", tmp_path / "bad-exif.jpg"
    _animated_gif(gif)
    _corrupt_exif_jpeg(jpeg)
    with fs.database("sqlite", tmp_path) as url:
        ingest([str(gif), str(jpeg)], database_url=url)
        result = segment(database_url=url, batch_size=2, overlays=False, **fs.FAST)
    assert result["done"] == 2
    notes = {n["uri"]: n["note"] for n in result["notes"]}
    assert notes[str(gif)].startswith("animated (3 frames)")
    assert "EXIF" in notes[str(jpeg)] and "orientation not applied" in notes[str(jpeg)]
