"""A worker batch's decoded pixels stay under CLASP_MAX_BATCH_PIXELS, large JPEGs decode
at the engine's working size, and images over the budget go back to the queue unharmed."""

from __future__ import annotations

import io

import numpy as np
from conftest_db import db_url, migrated_url, pg_url, sqlite_url  # noqa: F401
from PIL import Image

from flows.segment import prepare_batch
from integrations.db import counts_by_status, make_engine, make_session_factory, add_images
from integrations.db.models import Image as ImageRow
from integrations.settings import Settings


def _jpeg(path, seed, w=2000, h=1500):
    rgb = np.random.default_rng(seed).integers(0, 255, (h // 50, w // 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).resize((w, h)).save(path, "JPEG", quality=80)
    return str(path)


def _register(url, uris):
    engine = make_engine(url)
    with make_session_factory(engine)() as s:
        add_images(s, uris)
    engine.dispose()


def _rows(url):
    engine = make_engine(url)
    with make_session_factory(engine)() as s:
        rows = {r.uri: (r.status, r.attempts) for r in s.query(ImageRow)}
        counts = counts_by_status(s)
    engine.dispose()
    return rows, counts


def test_batch_over_the_pixel_budget_gives_the_rest_back(migrated_url, tmp_path, monkeypatch):
    uris = [_jpeg(tmp_path / f"big-{i}.jpg", i) for i in range(3)]  # 3 MP each at full size
    _register(migrated_url, uris)
    monkeypatch.setenv("CLASP_MAX_BATCH_PIXELS", "5000000")
    settings_json = Settings().source_json()

    full = prepare_batch.fn(migrated_url, "w1", 3, settings_json)  # no draft: one image fits
    assert len(full.items) == 1 and full.items[0].image.shape == (1500, 2000, 3)
    assert full.claimed == 1 and not full.failures
    rows, counts = _rows(migrated_url)
    assert counts.get("claimed") == 1 and counts.get("waiting") == 2
    assert sorted(a for st, a in rows.values() if st == "waiting") == [0, 0]  # no attempt spent

    drafted = prepare_batch.fn(migrated_url, "w2", 3, settings_json, 300)  # at the working size: all fit
    assert len(drafted.items) == 2 and not drafted.failures
    assert all(it.image.shape == (375, 500, 3) for it in drafted.items)


def test_a_single_image_over_the_budget_is_still_decoded(migrated_url, tmp_path, monkeypatch):
    _register(migrated_url, [_jpeg(tmp_path / "one.jpg", 0)])
    monkeypatch.setenv("CLASP_MAX_BATCH_PIXELS", "1000")
    out = prepare_batch.fn(migrated_url, "w", 4, Settings().source_json())
    assert len(out.items) == 1  # a batch always takes one image: no starvation
