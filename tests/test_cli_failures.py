"""`clasp status` and `clasp run` name the failed images, not only counts per reason (issue 13.8)."""

from __future__ import annotations

import json

from conftest_db import sqlite_url  # noqa: F401

from clasp_cli.main import main as clasp
from clasp_cli.run import describe
from integrations.db import ImageInput, add_images, ensure_schema
from integrations.db.session import session_scope
from integrations.settings import Settings


def _failed_db(url: str, n: int = 5) -> list[str]:
    ensure_schema(url)
    uris = [f"/photos/broken-{i}.jpg" for i in range(n)]
    with session_scope(url) as s:
        add_images(s, [ImageInput(u, error=f"decode: truncated JPEG number {i}") for i, u in enumerate(uris)])
        add_images(s, ["/photos/fine.jpg"])
    return uris


def test_status_names_a_sample_of_failed_images_and_all_on_request(sqlite_url, capsys):
    uris = _failed_db(sqlite_url)
    assert clasp(["status", "--database-url", sqlite_url, "--failures", "2"]) == 0
    out = capsys.readouterr().out
    named = [u for u in uris if u in out]
    assert len(named) == 2 and "(2 of 5; --failures all for every one)" in out
    assert "truncated JPEG number" in out and "/photos/fine.jpg" not in out

    assert clasp(["status", "--database-url", sqlite_url, "--failures", "all"]) == 0
    out = capsys.readouterr().out
    assert all(u in out for u in uris) and "--failures all" not in out

    assert clasp(["status", "--database-url", sqlite_url, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert sorted(f["uri"] for f in data["failed_images"]) == uris
    assert all(f["reason"].startswith("decode: truncated JPEG") for f in data["failed_images"])


def test_status_refuses_a_bad_failures_value(sqlite_url, capsys):
    _failed_db(sqlite_url, 1)
    try:
        clasp(["status", "--database-url", sqlite_url, "--failures", "-3"])
        raise AssertionError("--failures -3 was accepted")
    except SystemExit as exc:
        assert exc.code == 2
    assert "--failures '-3'" in capsys.readouterr().err


def test_run_summary_names_failed_images_missing_overlays_and_caveats():
    failures = [{"image_id": i, "uri": f"/p/bad-{i}.jpg", "stage": "decode", "reason": "not an image",
                 "status": "failed"} for i in range(12)]
    failures.append({"image_id": 99, "uri": "/p/later.jpg", "stage": "read", "reason": "timeout", "status": "waiting"})
    seg = {"done": 3, "failed": 12, "k_distribution": {2: 3}, "failure_reasons": {"decode: not an image": 12},
           "failures": failures, "images_per_second": 1.0, "wall_seconds": 3.0, "overlay_failures": [
               {"image_id": 50, "uri": "/p/ok.jpg", "stage": "overlay", "reason": "PermissionError: denied"}],
           "overlays_failed": 1, "notes": [{"image_id": 51, "uri": "/p/anim.gif", "note": "animated (3 frames): "
                                            "only the first frame was segmented"}]}
    text = describe({"segment": seg, "review": {"reason": "disabled"}}, Settings(), overlays=True, failures=10)
    assert "failed images (10 of 12; --failures all for every one):" in text
    assert "/p/bad-0.jpg  decode: not an image" in text and "/p/bad-11.jpg" not in text
    assert "/p/later.jpg" not in text  # put back in the queue: not failed
    assert "/p/ok.jpg  overlay: PermissionError: denied" in text
    assert "/p/anim.gif  animated (3 frames)" in text
    every = describe({"segment": seg, "review": {"reason": "disabled"}}, Settings(), overlays=True, failures=None)
    assert "/p/bad-11.jpg" in every
