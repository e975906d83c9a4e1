"""`clasp ingest`: folders, URI lists and globs; new / already known / unreadable."""

from __future__ import annotations

import io
import re

import numpy as np
from conftest_db import db_url, pg_url, sqlite_url  # noqa: F401
from PIL import Image
from sqlalchemy import select

from clasp_cli.main import main as clasp
from integrations.db import counts_by_status, make_engine, make_session_factory
from integrations.db.models import Image as ImageRow


def _img(path, seed, fmt="JPEG"):
    arr = np.random.default_rng(seed).integers(0, 255, (32, 40, 3), dtype=np.uint8)
    b = io.BytesIO()
    Image.fromarray(arr).save(b, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b.getvalue())
    return path


def _rows(url):
    engine = make_engine(url)
    with make_session_factory(engine)() as s:
        rows = {r.uri: r for r in s.scalars(select(ImageRow))}
        counts = counts_by_status(s)
    engine.dispose()
    return rows, counts


def test_ingest_folder_then_list_then_glob(db_url, tmp_path, capsys):
    d = tmp_path / "photos"
    a = _img(d / "a.jpg", 0)
    _img(d / "sub" / "b.png", 1, "PNG")
    (d / "sub" / "copy-of-a.jpg").write_bytes(a.read_bytes())  # same bytes, another name
    (d / "broken.jpg").write_bytes(a.read_bytes()[:200])  # truncated
    (d / "notes.txt").write_text("not an image, and not picked from a folder")
    args = ["ingest", "--database-url", db_url, "--no-progress"]

    # first contact: a SQLite database is created and migrated on the spot; PostgreSQL must be upgraded
    if db_url.startswith("postgresql"):
        assert clasp(args + [str(d)]) == 2
        assert "clasp db upgrade" in capsys.readouterr().err
        args.append("--migrate")
    assert clasp(args + [str(d)]) == 0
    out = capsys.readouterr().out
    assert "4 sources" in out and "2 new, 1 already known, 1 unreadable" in out
    assert re.search(r"broken\.jpg: .*(truncated|corrupt)", out)

    rows, counts = _rows(db_url)
    assert counts["waiting"] == 2 and counts["failed"] == 1
    assert re.search("truncated|corrupt", rows[str((d / "broken.jpg").resolve())].last_error)

    # a list of URIs, relative to the list's folder, with comments and a missing file
    listing = tmp_path / "uris.txt"
    listing.write_text("# my images\nphotos/a.jpg\n\nphotos/missing.jpg\n")
    _img(tmp_path / "new.jpg", 7)
    with listing.open("a") as f:
        f.write(f"{tmp_path / 'new.jpg'}\n")
    assert clasp(args + [str(listing)]) == 0
    assert "1 new, 1 already known, 1 unreadable" in capsys.readouterr().out

    # a glob; ingesting again registers nothing new
    assert clasp(args + [str(tmp_path / "photos" / "**" / "*.jpg")]) == 0
    assert "0 new, 2 already known, 1 unreadable" in capsys.readouterr().out
    rows, counts = _rows(db_url)
    assert counts["waiting"] == 3 and counts["failed"] == 2
    assert len(rows) == 5


def test_ingest_lazy_and_missing_source(sqlite_url, tmp_path, capsys):
    listing = tmp_path / "urls.txt"
    listing.write_text("https://example.com/a.jpg\nhttps://example.com/b.jpg\nhttps://example.com/a.jpg\n")
    assert clasp(["ingest", "--database-url", sqlite_url, "--no-progress", "--lazy", str(listing)]) == 0
    assert "2 new, 0 already known, 0 unreadable" in capsys.readouterr().out
    assert clasp(["ingest", "--database-url", sqlite_url, str(tmp_path / "nope")]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert clasp(["ingest", "--database-url", sqlite_url, str(empty)]) == 1


def test_ingest_refuses_internal_urls_by_default(sqlite_url, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CLASP_ALLOW_PRIVATE_HOSTS", raising=False)
    assert clasp(["ingest", "--database-url", sqlite_url, "--no-progress", "http://169.254.169.254/latest/x.jpg"]) == 0
    out = capsys.readouterr().out
    assert "0 new, 0 already known, 1 unreadable" in out and "link-local" in out


def test_odd_names_and_special_files_fail_or_register_alone(sqlite_url, tmp_path, capsys):
    import os

    from integrations.sources import read_image_bytes

    d = tmp_path / "mixed"
    _img(d / "good.jpg", 0)
    raw_dir = os.fsencode(str(d))
    bad_bytes = _img(tmp_path / "src.jpg", 1).read_bytes()
    with open(raw_dir + b"/bad\xff.jpg", "wb") as f:  # a name that is not UTF-8
        f.write(bad_bytes)
    os.mkfifo(d / "pipe.jpg")
    (d / "folder.jpg").mkdir()
    for lazy in ([], ["--lazy"]):
        url = sqlite_url if not lazy else sqlite_url.replace(".db", "-lazy.db")
        assert clasp(["ingest", "--database-url", url, "--no-progress", "--migrate", *lazy, str(d)]) == 0
        out = capsys.readouterr().out
        rows, _ = _rows(url)
        odd = [u for u in rows if "bad" in u]
        assert len(odd) == 1 and odd[0].startswith("file://") and "%FF" in odd[0], rows.keys()
        assert read_image_bytes(odd[0]) == bad_bytes
        assert any(u.endswith("good.jpg") for u in rows)
        if not lazy:
            assert re.search(r"pipe\.jpg: is a FIFO", out), out
            assert re.search(r"folder\.jpg: is a directory", out), out
