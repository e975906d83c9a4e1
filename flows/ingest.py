"""`ingest`: register images from a source (a folder, a glob, a URI list file, a URI) in SQL.

By default registering only records URIs; bytes are read later by the
`segment` flow's workers (`hash_content=True` reads and hashes them now, to
register the same bytes once). Registering twice is harmless: the data layer
skips what it already knows.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows import resources, timeouts
from flows.retry import transient_task
from integrations.settings import check_count, load_settings


@transient_task("register-images", timeout_seconds=timeouts.REGISTER)
def register(database_url: str, uris: list[str], hash_content: bool = False) -> dict[str, Any]:
    """Register a chunk of URIs as waiting, idempotently, in one transaction.

    With `hash_content` each image is read, hashed and decode-checked first (8 threads),
    the same bytes under two names registered once, an unreadable one recorded with its reason.
    """
    from integrations.ingest import ingest_uris

    with resources.session(database_url) as session:
        result = ingest_uris(session, uris, load_settings(), lazy=not hash_content, jobs=8, chunk=len(uris))
    counts = result.counts()
    return {"registered": counts["new"], "already_known": counts["known"], "unreadable": counts["unreadable"]}


@task(name="list-source", cache_policy=NO_CACHE, timeout_seconds=timeouts.LIST_SOURCE)
def list_source(source: str, limit: int | None) -> list[str]:
    """The image URIs a source names: a folder (recursive), a glob, a text file of URIs, or one URI."""
    from integrations.ingest import expand_source

    uris = expand_source(source)
    return uris[:limit] if limit is not None else uris


@flow(name="ingest")
def ingest(
    source: str | list[str],
    limit: int | None = None,
    database_url: str | None = None,
    chunk_size: int = 1000,
    hash_content: bool = False,
) -> dict[str, Any]:
    """Register every image of `source` (one source, or a list of URIs/paths) as waiting.

    By default only URIs are recorded (once per URI; the segment workers read the
    bytes). With `hash_content` every image is read, hashed and decode-checked
    now: the same bytes under two names are registered once, and unreadable
    images are recorded as failed with their reason at once.
    """
    check_count("limit", limit, 0)
    check_count("chunk_size", chunk_size, 1)
    logger = get_run_logger()
    url = load_settings(database_url=database_url).database_url
    if isinstance(source, (list, tuple)):
        uris = [str(u) for u in source][: limit if limit is not None else None]
    else:
        uris = list_source(source, limit)
    totals: dict[str, int] = {"found": len(uris), "registered": 0, "already_known": 0, "unreadable": 0}
    # Chunks keep one task run (and one transaction) per thousand URIs, not per image.
    for start in range(0, len(uris), chunk_size):
        result = register(url, uris[start : start + chunk_size], hash_content)
        for key in ("registered", "already_known", "unreadable"):
            totals[key] += int(result.get(key, 0))
    logger.info(
        "ingest: %d found, %d newly registered, %d already known, %d unreadable",
        totals["found"], totals["registered"], totals["already_known"], totals["unreadable"],
    )
    return totals
