"""What differs between SQLite and PostgreSQL in the operations: the clock and INSERT.

Lease times use the database clock on PostgreSQL (workers on several hosts) and
this machine's clock on SQLite (one machine by construction).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func
from sqlalchemy.orm import Session

from integrations.db.models import utcnow


def dialect_name(session: Session) -> str:
    """"postgresql" or "sqlite" (the session's bound engine)."""
    return session.get_bind().dialect.name


def db_now(session: Session) -> Any:
    """Current time: the database clock on PostgreSQL, this machine's (UTC) elsewhere."""
    if dialect_name(session) == "postgresql":
        return func.current_timestamp()
    return utcnow()


def db_now_plus(session: Session, seconds: float) -> Any:
    """`db_now(session)` plus `seconds`, on the same clock."""
    if dialect_name(session) == "postgresql":
        return func.current_timestamp() + dt.timedelta(seconds=seconds)
    return utcnow() + dt.timedelta(seconds=seconds)


def insert_for(session: Session) -> Any:
    """The dialect's `insert` (it has `on_conflict_do_nothing`)."""
    if dialect_name(session) == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


__all__ = ["db_now", "db_now_plus", "dialect_name", "insert_for"]
