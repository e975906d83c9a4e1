"""Registering images: expand sources (folder, URI list, glob, single URI), read and
check each image, register it by content hash. Used by `clasp ingest` and the flows.

    uris = expand_sources(["photos/", "more.txt", "s3://bucket/x.jpg"])
    result = ingest_uris(session, uris, settings)       # RegisterResult + reasons
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session

from integrations.db.registry import ImageInput, RegisterResult, add_images
from integrations.settings import Settings
from integrations.sources import SourceError, fetch_image, normalize_uri, scheme_of, text_uri

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".jfif", ".ppm", ".pgm"}
LIST_SUFFIXES = {".txt", ".lst", ".list", ".uris"}
CHUNK = 100


class SourceNotFound(FileNotFoundError):
    """A SOURCE argument that is neither a file, a folder, a URI nor a glob."""


def _has_scheme(s: str) -> bool:
    return bool(scheme_of(s)) or s.startswith("file:")


def _walk(folder: Path, recursive: bool) -> Iterator[str]:
    """A folder's entries named like images, as text URIs (`text_uri`: a name that is not
    UTF-8 becomes a percent-encoded file:// URI instead of aborting the ingest).

    Entries named like images that are not regular files (a FIFO, a socket, a device, a
    directory called `x.jpg`) are listed too: reading them fails at once with a reason
    naming them (sources.read_regular_file), so they are reported, not silently skipped.
    Broken links are skipped.
    """
    it = folder.rglob("*") if recursive else folder.iterdir()
    for p in sorted(it):
        if p.suffix.lower() in IMAGE_SUFFIXES and (p.is_file() or p.exists()):
            yield text_uri(str(p.resolve()))


def expand_source(source: str, recursive: bool = True) -> list[str]:
    """The URIs one source names: a folder's image files, a list file's lines
    (relative paths from the list's folder; blank lines and # comments skipped),
    a glob's files, or the path / URI itself."""
    if _has_scheme(source):
        return [source]
    if any(ch in source for ch in "*?["):
        paths = sorted(glob.glob(os.path.expanduser(source), recursive=True))
        return [text_uri(str(Path(p).resolve())) for p in paths if Path(p).is_file()]
    path = Path(source).expanduser()
    if path.is_dir():
        return list(_walk(path, recursive))
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        uris = []
        # surrogateescape: a listed name that is not UTF-8 keeps its bytes (text_uri below)
        for line in path.read_bytes().decode("utf-8", errors="surrogateescape").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not _has_scheme(line) and not os.path.isabs(os.path.expanduser(line)):
                line = str((path.parent / line).resolve())
            uris.append(line if _has_scheme(line) else text_uri(os.path.abspath(os.path.expanduser(line))))
        return uris
    if path.exists():
        return [text_uri(str(path.resolve()))]
    raise SourceNotFound(f"{source}: no such file or folder (and not a URI or a glob)")


def expand_sources(sources: Iterable[str], recursive: bool = True) -> list[str]:
    """All URIs the sources name, duplicates removed, in order."""
    uris: list[str] = []
    for source in sources:
        uris += expand_source(source, recursive)
    return list(dict.fromkeys(uris))


def read_for_registration(uri: str, settings: Settings) -> ImageInput:
    """Read, hash and decode-check one image; an unreadable one carries its reason."""
    uri = normalize_uri(uri)
    try:
        img = fetch_image(uri, settings, keep_image=False)
    except SourceError as exc:
        return ImageInput(uri=uri, error=exc.reason)
    except Exception as exc:  # noqa: BLE001 - one bad image never stops the ingest
        return ImageInput(uri=uri, error=f"{type(exc).__name__}: {exc}")
    return ImageInput(uri=uri, content_sha256=img.sha256, size_bytes=img.size, width=img.width, height=img.height)


@dataclass
class IngestResult:
    registered: RegisterResult = field(default_factory=RegisterResult)
    reasons: dict[str, str] = field(default_factory=dict)  # unreadable URI -> reason

    def counts(self) -> dict[str, int]:
        return self.registered.counts()


def ingest_uris(
    session: Session,
    uris: Iterable[str],
    settings: Settings | None = None,
    *,
    lazy: bool = False,
    jobs: int = 4,
    chunk: int = CHUNK,
    on_progress: Callable[[int, RegisterResult], None] | None = None,
) -> IngestResult:
    """Register `uris` (read in `jobs` threads, committed every `chunk` images, default 100).

    lazy: register without reading (hash unknown; workers read them later).
    on_progress(n_done_in_this_step, totals_so_far) is called as images are handled.
    """
    settings = settings or Settings()
    uris = list(uris)
    out = IngestResult()
    step = max(1, chunk)
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        for start in range(0, len(uris), step):
            part = uris[start : start + step]
            if lazy:
                items = [ImageInput(uri=normalize_uri(u)) for u in part]
            else:
                items = []
                for item in pool.map(lambda u: read_for_registration(u, settings), part):
                    items.append(item)
                    if on_progress:
                        on_progress(1, out.registered)
            result = add_images(session, items)
            out.reasons.update({i.uri: i.error for i in items if i.error})
            out.registered.merge(result)
            if on_progress:
                on_progress(len(part) if lazy else 0, out.registered)
    return out
