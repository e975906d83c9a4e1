"""`clasp ingest SOURCE...`: register images from a folder, a text file of URIs or a glob.

SOURCE is
- a folder: every image file under it (recursively; --no-recursive for the top only);
- a text file (.txt, .lst, .list, .uris): one path or URI per line, blank lines and
  `#` comments skipped, relative paths taken from the list file's folder;
- a glob (quote it: 'photos/**/*.jpg');
- a single image path or URI (file://, http(s)://, or an fsspec URI such as s3://).

Each image is read (size cap, host policy and timeouts from the settings) and
decoded once to check it, then registered by content hash: the same bytes are
registered once whatever their name. An image that cannot be read is recorded
as failed with the reason. The summary counts new, already known and
unreadable images. With --lazy the URIs are registered without reading them
(the workers read them later; duplicates are then only caught by URI).

Exit status: 0 when it ran (unreadable images are recorded, not fatal), 1 when
SOURCE names no image, 2 when the database is not usable (e.g. behind head).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".jfif", ".ppm", ".pgm"}
LIST_SUFFIXES = {".txt", ".lst", ".list", ".uris"}
CHUNK = 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SOURCE", help="folder, text file of URIs, glob, or one image")
    parser.add_argument("--database-url", help="database URL (default: CLASP_DATABASE_URL or sqlite:///clasp.db)")
    parser.add_argument("--no-recursive", dest="recursive", action="store_false", help="folders: top level only")
    parser.add_argument("--lazy", action="store_true", help="register URIs without reading them now")
    parser.add_argument("--jobs", type=int, default=4, help="images read in parallel (default 4)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--migrate", action="store_true", help="upgrade a database that is behind (any backend)")


class SourceNotFound(Exception):
    pass


def _has_scheme(s: str) -> bool:
    from integrations.sources import scheme_of

    return bool(scheme_of(s)) or s.startswith("file:")


def _walk(folder: Path, recursive: bool) -> Iterator[str]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    for p in sorted(it):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            yield str(p.resolve())


def expand_source(source: str, recursive: bool = True) -> list[str]:
    """The URIs one SOURCE argument names (see the module docstring)."""
    if _has_scheme(source):
        return [source]
    if any(ch in source for ch in "*?["):
        paths = sorted(glob.glob(os.path.expanduser(source), recursive=True))
        return [str(Path(p).resolve()) for p in paths if Path(p).is_file()]
    path = Path(source).expanduser()
    if path.is_dir():
        return list(_walk(path, recursive))
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        uris = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not _has_scheme(line) and not os.path.isabs(os.path.expanduser(line)):
                line = str((path.parent / line).resolve())
            uris.append(line)
        return uris
    if path.exists():
        return [str(path.resolve())]
    raise SourceNotFound(f"{source}: no such file or folder (and not a URI or a glob)")


def _read(uri: str, settings):  # noqa: ANN001, ANN202
    from integrations.db import ImageInput
    from integrations.sources import SourceError, fetch_image, normalize_uri

    uri = normalize_uri(uri)
    try:
        img = fetch_image(uri, settings, keep_image=False)
    except SourceError as exc:
        return ImageInput(uri=uri, error=exc.reason)
    except Exception as exc:  # noqa: BLE001 - one bad image never stops the ingest
        return ImageInput(uri=uri, error=f"{type(exc).__name__}: {exc}")
    return ImageInput(uri=uri, content_sha256=img.sha256, size_bytes=img.size, width=img.width, height=img.height)


def run(args: argparse.Namespace) -> int:
    from integrations.db import (
        ImageInput,
        RegisterResult,
        SchemaError,
        display_url,
        ensure_schema,
        make_session_factory,
        register_images,
    )
    from integrations.settings import Settings

    settings = Settings()
    url = args.database_url or settings.database_url
    uris: list[str] = []
    try:
        for source in args.sources:
            uris += expand_source(source, args.recursive)
    except SourceNotFound as exc:
        print(f"clasp ingest: {exc}", file=sys.stderr)
        return 1
    uris = list(dict.fromkeys(uris))
    if not uris:
        print(f"clasp ingest: no images found in {' '.join(args.sources)}", file=sys.stderr)
        return 1
    try:
        ensure_schema(url, upgrade=True if args.migrate else None)
    except SchemaError as exc:
        print(f"clasp ingest: {exc}", file=sys.stderr)
        return 2

    from tqdm import tqdm

    total = RegisterResult()
    reasons: dict[int, str] = {}
    factory = make_session_factory(url)
    bar = tqdm(total=len(uris), unit="img", desc="ingest", disable=True if args.no_progress else None, file=sys.stderr)
    try:
        with factory() as session, ThreadPoolExecutor(max(1, args.jobs)) as pool:
            for start in range(0, len(uris), CHUNK):
                chunk = uris[start : start + CHUNK]
                if args.lazy:
                    from integrations.sources import normalize_uri

                    items = [ImageInput(uri=normalize_uri(u)) for u in chunk]
                else:
                    items = []
                    for item in pool.map(lambda u: _read(u, settings), chunk):
                        items.append(item)
                        bar.update(1)
                result = register_images(session, items)
                for item, id_ in zip([i for i in items if i.error], result.unreadable):
                    reasons[id_] = f"{item.uri}: {item.error}"
                total.merge(result)
                if args.lazy:
                    bar.update(len(chunk))
                bar.set_postfix(new=len(total.new), known=len(total.known), unreadable=len(total.unreadable))
    finally:
        bar.close()
        factory.kw["bind"].dispose()
    c = total.counts()
    print(
        f"ingested {len(uris)} source{'s' if len(uris) != 1 else ''} into {display_url(url)}: "
        f"{c['new']} new, {c['known']} already known, {c['unreadable']} unreadable"
    )
    for line in list(reasons.values())[:20]:
        print(f"  unreadable: {line}")
    if len(reasons) > 20:
        print(f"  ... and {len(reasons) - 20} more (clasp status lists failure reasons)")
    return 0
