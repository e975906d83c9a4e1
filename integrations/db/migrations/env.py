"""Alembic environment for CLASP: one history for SQLite and PostgreSQL.

- The URL comes from the caller (integrations.db.schema passes a connection or
  `sqlalchemy.url`), else `-x url=...`, else Settings (CLASP_DATABASE_URL).
- SQLite: `render_as_batch` so ALTERs become copy-and-move batches.
- PostgreSQL: an advisory lock serialises concurrent upgrades (several workers
  starting at once).
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import text

from integrations.db.models import Base
from integrations.db.session import make_engine

config = context.config
target_metadata = Base.metadata

# Only configure logging when run from the `alembic` command line; when the
# application calls us it keeps its own logging.
if config.config_file_name is not None and not config.attributes.get("skip_logging"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

_ADVISORY_LOCK_KEY = 0x636C617370  # "clasp"


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    x = context.get_x_argument(as_dictionary=True)
    if x.get("url"):
        return x["url"]
    from integrations.settings import Settings

    return Settings().database_url


def _configure(connection) -> None:  # noqa: ANN001
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        compare_server_default=False,
    )


def run_migrations_offline() -> None:
    url = _url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


def _run(connection) -> None:  # noqa: ANN001
    if connection.dialect.name == "postgresql":
        # Transaction-scoped (autobegins the migration transaction): released at its end.
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK_KEY})
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
