"""Registering images: each image once per content (or once per URI while its content is unknown).

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

MAX_URI_LENGTH = 2000  # longer URIs are refused (btree index entries have a size limit)


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
    """Register images, idempotently: the same bytes (content hash) are registered once.

    Returns the ids split into new, already known and unreadable. A URI already
    registered without a hash (registered lazily, or unreadable at an earlier
    ingest) is updated in place when its content is now known.
    """
    result = RegisterResult()
    hashed: dict[str, ImageInput] = {}
    dups: list[str] = []  # the same bytes twice in the input: "already known" the second time
    lazy: dict[str, ImageInput] = {}
    errors: dict[str, ImageInput] = {}
    for item in items:
        if isinstance(item, str):
            item = ImageInput(uri=item)
        if len(item.uri) > MAX_URI_LENGTH:
            item = ImageInput(uri=item.uri[:MAX_URI_LENGTH], error=f"URI longer than {MAX_URI_LENGTH} characters")
        if item.error is not None:
            errors.setdefault(item.uri, item)
        elif item.content_sha256 is not None:
            if item.content_sha256 in hashed:
                dups.append(item.content_sha256)
            else:
                hashed[item.content_sha256] = item
        else:
            lazy.setdefault(item.uri, item)

    insert = insert_for(session)
    now = utcnow()

    # 1. content-hashed images
    hash_to_id: dict[str, int] = {}
    for chunk in chunks(list(hashed)):
        for id_, h in session.execute(select(Image.id, Image.content_sha256).where(Image.content_sha256.in_(chunk))):
            hash_to_id[h] = id_
    todo = [item for h, item in hashed.items() if h not in hash_to_id]
    # adopt rows registered by URI without a hash (lazy, or unreadable before)
    by_uri: dict[str, tuple[int, str]] = {}
    for chunk in chunks(sorted({i.uri for i in todo})):
        rows = session.execute(
            select(Image.uri, Image.id, Image.status).where(Image.content_sha256.is_(None), Image.uri.in_(chunk))
        )
        for uri, id_, status in rows:
            by_uri.setdefault(uri, (id_, status))
    remaining = []
    new_ids: dict[str, int] = {}
    for item in todo:
        hit = by_uri.pop(item.uri, None)
        if hit is not None and hit[1] in (WAITING, FAILED):
            session.execute(
                update(Image)
                .where(Image.id == hit[0], Image.content_sha256.is_(None))
                .values(**_queued_content(item), last_error=None)
                .execution_options(synchronize_session=False)
            )
            result.new.append(hit[0])
            new_ids[item.content_sha256] = hit[0]
        elif hit is not None:  # registered lazily and already taken by a worker: the same image
            result.known.append(hit[0])
        else:
            remaining.append(item)
    for chunk in chunks(remaining):
        rows = [dict(uri=i.uri, **_queued_content(i), created_at=now, updated_at=now) for i in chunk]
        stmt = (
            insert(Image)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["content_sha256"])
            .returning(Image.id, Image.content_sha256)
        )
        inserted = {h: id_ for id_, h in session.execute(stmt)}
        result.new += inserted.values()
        new_ids.update(inserted)
        lost = [i.content_sha256 for i in chunk if i.content_sha256 not in inserted]
        if lost:  # registered concurrently by another process
            for id_, h in session.execute(select(Image.id, Image.content_sha256).where(Image.content_sha256.in_(lost))):
                hash_to_id[h] = id_
    result.known += list(hash_to_id.values())
    result.known += [hash_to_id.get(h, new_ids.get(h, -1)) for h in dups]

    # 2. URIs registered without reading (hash unknown): once per URI
    uris = list(lazy)
    existing: set[str] = set()
    for chunk in chunks(uris):
        for id_, uri in session.execute(select(Image.id, Image.uri).where(Image.uri.in_(chunk))):
            if uri not in existing:
                existing.add(uri)
                result.known.append(id_)
    new_lazy = [lazy[u] for u in uris if u not in existing]
    for chunk in chunks(new_lazy):
        rows = [dict(uri=i.uri, status=WAITING, attempts=0, created_at=now, updated_at=now) for i in chunk]
        result.new += [r[0] for r in session.execute(insert(Image).values(rows).returning(Image.id))]

    # 3. unreadable at ingest: a failed row with the reason, once per URI
    for uri, item in errors.items():
        reason = clean_reason(item.error or "unreadable")
        row = session.execute(
            select(Image.id, Image.status).where(Image.uri == uri, Image.content_sha256.is_(None)).limit(1)
        ).first()
        if row is not None:
            if row[1] in (WAITING, FAILED):
                session.execute(
                    update(Image)
                    .where(Image.id == row[0])
                    .values(status=FAILED, last_error=reason)
                    .execution_options(synchronize_session=False)
                )
            result.unreadable.append(row[0])
        else:
            id_ = session.execute(
                insert(Image)
                .values(uri=uri, status=FAILED, attempts=0, last_error=reason, created_at=now, updated_at=now)
                .returning(Image.id)
            ).scalar_one()
            result.unreadable.append(id_)
    commit_or_flush(session, commit)
    return result


def delete_image(session: Session, image_id: int, *, commit: bool = True) -> bool:
    """Remove an image and everything stored about it (segmentations, reviews ...)."""
    res = session.execute(delete(Image).where(Image.id == image_id).execution_options(synchronize_session=False))
    commit_or_flush(session, commit)
    return bool(res.rowcount)


__all__ = ["MAX_URI_LENGTH", "ImageInput", "RegisterResult", "add_images", "delete_image"]
