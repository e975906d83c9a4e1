"""Registering images: each image once per URI, and once per content where its bytes were read.

    result = add_images(session, [ImageInput(uri, sha256, size), "s3://bucket/later.jpg"])
    result.new, result.known, result.unreadable        # image ids

A registered image is `waiting` in the work queue (see queue.py); one that could
not be read at ingest is recorded `failed` with its reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from integrations.db.batching import chunks, commit_or_flush
from integrations.db.dialect import insert_for
from integrations.db.models import FAILED, WAITING, Image, utcnow
from integrations.db.queue import clean_reason

MAX_URI_LENGTH = 2000  # bytes (UTF-8); longer URIs are refused (a btree index entry has a size limit)


@dataclass(frozen=True)
class ImageInput:
    """One image to register. With `content_sha256` it is registered once per
    content; without it (a URI to read later) once per URI. With `error` it
    could not be read at ingest and is recorded as failed with that reason."""

    uri: str
    content_sha256: str | None = None
    size_bytes: int | None = None
    width: int | None = None
    height: int | None = None
    error: str | None = None


@dataclass
class RegisterResult:
    new: list[int] = field(default_factory=list)
    known: list[int] = field(default_factory=list)
    unreadable: list[int] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"new": len(self.new), "known": len(self.known), "unreadable": len(self.unreadable)}

    def merge(self, other: "RegisterResult") -> None:
        self.new += other.new
        self.known += other.known
        self.unreadable += other.unreadable


def _queued_content(item: ImageInput) -> dict[str, object]:
    """The columns of a readable image entering the queue: its content, `waiting`, no attempts yet."""
    return dict(
        content_sha256=item.content_sha256,
        size_bytes=item.size_bytes,
        width=item.width,
        height=item.height,
        status=WAITING,
        attempts=0,
    )


def add_images(session: Session, items: Iterable[ImageInput | str], *, commit: bool = True) -> RegisterResult:
    """Register images, idempotently: once per URI, and the same bytes (content hash) once.

    Returns the ids split into new, already known and unreadable. A URI already
    registered without a hash (registered lazily, or unreadable at an earlier
    ingest) is updated in place when its content is now known.

    Safe under concurrency: `images.uri` and `images.content_sha256` are unique
    keys and every insert is `INSERT ... ON CONFLICT DO NOTHING` followed by a
    read-back, so several processes registering the same images at once (a
    folder given to concurrent `clasp run`s) end with one row per image; the
    process that lost the race reports those images as already known. Rows are
    inserted in URI order so that concurrent transactions on PostgreSQL take their
    row locks in the same order.
    """
    result = RegisterResult()
    hashed: dict[str, ImageInput] = {}
    dups: list[str] = []  # the same bytes twice in the input: "already known" the second time
    lazy: dict[str, ImageInput] = {}
    errors: dict[str, ImageInput] = {}
    for item in items:
        if isinstance(item, str):
            item = ImageInput(uri=item)
        if len(item.uri.encode("utf-8", "surrogateescape")) > MAX_URI_LENGTH:
            item = ImageInput(uri=_truncate(item.uri), error=f"URI longer than {MAX_URI_LENGTH} bytes")
        if item.error is not None:
            errors.setdefault(item.uri, item)
        elif item.content_sha256 is not None:
            if item.content_sha256 in hashed:
                dups.append(item.content_sha256)
            else:
                hashed[item.content_sha256] = item
        else:
            lazy.setdefault(item.uri, item)
    now = utcnow()

    # 1. content-hashed images
    hash_to_id: dict[str, int] = {}
    for chunk in chunks(list(hashed)):
        for id_, h in session.execute(select(Image.id, Image.content_sha256).where(Image.content_sha256.in_(chunk))):
            hash_to_id[h] = id_
    todo = [item for h, item in hashed.items() if h not in hash_to_id]
    # a URI already registered: adopt it if it was registered without a hash (lazy, or
    # unreadable before) and no worker has it; else it is that image, already known
    by_uri = _ids_by_uri(session, {i.uri for i in todo}, with_status=True)
    remaining = []
    new_ids: dict[str, int] = {}
    for item in todo:
        hit = by_uri.pop(item.uri, None)
        if hit is not None and hit[2] is None and hit[1] in (WAITING, FAILED):
            session.execute(
                update(Image)
                .where(Image.id == hit[0], Image.content_sha256.is_(None))
                .values(**_queued_content(item), last_error=None)
                .execution_options(synchronize_session=False)
            )
            result.new.append(hit[0])
            new_ids[item.content_sha256] = hit[0]
        elif hit is not None:  # registered and already taken by a worker, or hashed: the same image
            result.known.append(hit[0])
        else:
            remaining.append(item)
    remaining.sort(key=lambda i: i.uri)
    for chunk in chunks(remaining):
        rows = [dict(uri=i.uri, **_queued_content(i), created_at=now, updated_at=now) for i in chunk]
        inserted = {h: id_ for id_, h in session.execute(_insert_new(session, rows, Image.content_sha256))}
        result.new += inserted.values()
        new_ids.update(inserted)
        lost = [i for i in chunk if i.content_sha256 not in inserted]
        if lost:  # registered concurrently by another process (same bytes or same URI)
            result.known += _read_back(session, lost)
    result.known += list(hash_to_id.values())
    result.known += [hash_to_id.get(h, new_ids.get(h, -1)) for h in dups]

    # 2. URIs registered without reading (hash unknown): once per URI
    existing = _ids_by_uri(session, set(lazy))
    result.known += [existing[u][0] for u in lazy if u in existing]
    new_lazy = sorted(u for u in lazy if u not in existing)
    for chunk in chunks(new_lazy):
        rows = [dict(uri=u, status=WAITING, attempts=0, created_at=now, updated_at=now) for u in chunk]
        inserted = {u: id_ for id_, u in session.execute(_insert_new(session, rows, Image.uri))}
        result.new += inserted.values()
        lost = [u for u in chunk if u not in inserted]
        if lost:  # registered concurrently by another process
            result.known += [existing_id for existing_id, *_ in _ids_by_uri(session, set(lost)).values()]

    # 3. unreadable at ingest: a failed row with the reason, once per URI
    known_bad = _ids_by_uri(session, set(errors), with_status=True)
    fresh: list[dict[str, object]] = []
    for uri, item in sorted(errors.items()):
        reason = clean_reason(item.error or "unreadable")
        hit = known_bad.get(uri)
        if hit is None:
            fresh.append(dict(uri=uri, status=FAILED, attempts=0, last_error=reason, created_at=now, updated_at=now))
            continue
        if hit[2] is None and hit[1] in (WAITING, FAILED):
            session.execute(
                update(Image)
                .where(Image.id == hit[0])
                .values(status=FAILED, last_error=reason)
                .execution_options(synchronize_session=False)
            )
        result.unreadable.append(hit[0])
    for chunk in chunks(fresh):
        inserted = {u: id_ for id_, u in session.execute(_insert_new(session, list(chunk), Image.uri))}
        result.unreadable += inserted.values()
        lost = {r["uri"] for r in chunk} - set(inserted)
        if lost:
            result.unreadable += [hit[0] for hit in _ids_by_uri(session, lost).values()]
    commit_or_flush(session, commit)
    return result


def _truncate(uri: str) -> str:
    """The longest prefix of `uri` that fits MAX_URI_LENGTH bytes (what is stored of a refused URI)."""
    return uri.encode("utf-8", "surrogateescape")[:MAX_URI_LENGTH].decode("utf-8", "ignore")


def _insert_new(session: Session, rows: list[dict[str, object]], key) -> object:  # noqa: ANN001
    """INSERT ... ON CONFLICT DO NOTHING RETURNING (id, key): rows another transaction
    registered first (same URI or same content) are skipped, not duplicated, not an error."""
    insert = insert_for(session)
    return insert(Image).values(rows).on_conflict_do_nothing().returning(Image.id, key)


def _ids_by_uri(session: Session, uris: set[str], *, with_status: bool = False) -> dict[str, tuple]:
    """uri -> (id, status, content_sha256) of the registered ones among `uris`."""
    found: dict[str, tuple] = {}
    for chunk in chunks(sorted(uris)):
        rows = session.execute(
            select(Image.uri, Image.id, Image.status, Image.content_sha256).where(Image.uri.in_(chunk))
        )
        for uri, id_, status, sha in rows:
            found[uri] = (id_, status, sha)
    return found


def _read_back(session: Session, items: list[ImageInput]) -> list[int]:
    """Ids of hashed images another transaction registered first (by content, else by URI)."""
    by_sha = dict(
        session.execute(
            select(Image.content_sha256, Image.id).where(Image.content_sha256.in_([i.content_sha256 for i in items]))
        ).all()
    )
    by_uri = _ids_by_uri(session, {i.uri for i in items if i.content_sha256 not in by_sha})
    return [by_sha[i.content_sha256] if i.content_sha256 in by_sha else by_uri[i.uri][0] for i in items]


def delete_image(session: Session, image_id: int, *, commit: bool = True) -> bool:
    """Remove an image and everything stored about it (segmentations, reviews ...)."""
    res = session.execute(delete(Image).where(Image.id == image_id).execution_options(synchronize_session=False))
    commit_or_flush(session, commit)
    return bool(res.rowcount)


__all__ = ["MAX_URI_LENGTH", "ImageInput", "RegisterResult", "add_images", "delete_image"]
