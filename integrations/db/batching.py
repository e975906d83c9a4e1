"""Shared by every operation module: statements in chunks, and the end of a transaction.

Every operation commits before it returns unless called with `commit=False`, in
which case it only flushes so that the caller can compose several operations
into one transaction (see `commit_or_flush`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from sqlalchemy.orm import Session

# Rows (or ids in an IN list) per statement: keeps every statement well under
# SQLite's bound-parameter limit and PostgreSQL's message sizes.
CHUNK_SIZE = 500

T = TypeVar("T")


def chunks(seq: Sequence[T], n: int = CHUNK_SIZE) -> Iterable[Sequence[T]]:
    """Consecutive slices of `seq` of at most `n` items."""
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def commit_or_flush(session: Session, commit: bool) -> None:
    """Commit (`commit=True`), or flush only and leave the transaction to the caller."""
    if commit:
        session.commit()
    else:
        session.flush()


__all__ = ["CHUNK_SIZE", "chunks", "commit_or_flush"]
