"""Alembic wrapped: upgrade, downgrade, status and the schema guard used by commands.

`ensure_schema(url)` is called by every command that needs the tables:
- the database is at head: nothing happens;
- it is behind (or empty) and `upgrade` allows it: it is upgraded to head.
  By default (`upgrade=None`) this happens on SQLite only, so a single user needs
  no set-up; on PostgreSQL, shared by several workers, the schema is changed
  only on purpose (`clasp db upgrade`, or `ensure_schema(url, upgrade=True)`),
  and a behind database raises `SchemaBehindError` naming the command to run;
- it carries a revision this code does not know (newer code migrated it):
  `SchemaMismatchError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine.url import URL

from integrations.db.session import display_url, is_sqlite, make_engine, normalize_url

# The history ships inside the package (package data), so `clasp db upgrade` works
# from any directory and from an installed wheel; the Config is built here, not
# read from alembic.ini (which stays at the repository root for the `alembic` CLI).
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


class SchemaError(RuntimeError):
    """The database schema does not match what this code expects."""


class SchemaBehindError(SchemaError):
    pass


class SchemaMismatchError(SchemaError):
    pass


def alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic Config for the packaged history, bound to `url` if given."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["skip_logging"] = True
    if url is not None:
        rendered = normalize_url(url).render_as_string(hide_password=False)
        cfg.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(url: str | URL) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


@dataclass(frozen=True)
class SchemaStatus:
    url: str  # password masked
    current: str | None
    head: str | None
    known: bool  # the current revision is in this code's history

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head

    def describe(self) -> str:
        cur = self.current or "(empty: no schema)"
        if self.up_to_date:
            return f"{self.url}: at head {self.head} (up to date)"
        if not self.known:
            return (
                f"{self.url}: at revision {cur}, unknown to this code (head {self.head}); "
                "the database was migrated by a newer CLASP: upgrade CLASP"
            )
        return f"{self.url}: at {cur}, head is {self.head}: behind, run `clasp db upgrade`"


def schema_status(url: str | URL) -> SchemaStatus:
    current = current_revision(url)
    script = ScriptDirectory.from_config(alembic_config())
    known = current is None or any(rev.revision == current for rev in script.walk_revisions())
    return SchemaStatus(display_url(url), current, script.get_current_head(), known)


def upgrade(url: str | URL, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | URL, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def ensure_schema(url: str | URL, *, upgrade: bool | None = None) -> SchemaStatus:
    """Bring the schema to head or say clearly that it is behind (see module docstring)."""
    status = schema_status(url)
    if status.up_to_date:
        return status
    if not status.known:
        raise SchemaMismatchError(status.describe())
    allowed = is_sqlite(url) if upgrade is None else upgrade
    if not allowed:
        raise SchemaBehindError(status.describe())
    command.upgrade(alembic_config(url), "head")
    return schema_status(url)
