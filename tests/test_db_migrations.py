"""One Alembic history for SQLite and PostgreSQL: upgrade from empty to head, back
to base, models == migrations, the schema guard and `clasp db`."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from conftest_db import db_url, pg_url, sqlite_url  # noqa: F401
from sqlalchemy import inspect, text

from clasp_cli.main import main as clasp
from integrations.db import schema
from integrations.db.models import Base
from integrations.db.session import make_engine

TABLES = {"images", "segmentation_runs", "segmentations", "segments", "failures", "review_links", "reviews"}


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_history_is_linear_with_one_head():
    script = ScriptDirectory.from_config(schema.alembic_config())
    assert len(script.get_heads()) == 1
    assert schema.head_revision() == script.get_current_head()


def test_upgrade_from_empty_to_head_and_back_to_base(db_url):
    assert not (_tables(db_url) & TABLES)
    schema.upgrade(db_url)
    assert TABLES <= _tables(db_url)
    assert schema.schema_status(db_url).up_to_date
    schema.downgrade(db_url, "base")
    assert _tables(db_url) - {"alembic_version"} == set()
    assert schema.schema_status(db_url).current is None
    schema.upgrade(db_url)  # and up again: the downgrade left nothing behind
    assert schema.schema_status(db_url).up_to_date


def test_models_and_migration_history_agree(db_url):
    """Fails when a model changes without a migration (or the other way round)."""
    schema.upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True, "target_metadata": Base.metadata})
            diff = compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], f"models and migrations disagree; write a migration: {diff}"


def test_the_comparison_does_catch_a_difference(sqlite_url):
    """Guard the guard: an extra model column is reported."""
    import sqlalchemy as sa

    schema.upgrade(sqlite_url)
    md = sa.MetaData()
    for table in Base.metadata.sorted_tables:
        table.to_metadata(md)
    md.tables["images"].append_column(sa.Column("extra", sa.Integer))
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), md)
    engine.dispose()
    assert any(d[0] == "add_column" and d[3].name == "extra" for d in diff)


def test_ensure_schema_upgrades_sqlite_by_default(sqlite_url):
    status = schema.ensure_schema(sqlite_url)
    assert status.up_to_date and TABLES <= _tables(sqlite_url)
    assert schema.ensure_schema(sqlite_url).up_to_date  # idempotent


def test_ensure_schema_says_postgres_is_behind(pg_url):
    with pytest.raises(schema.SchemaBehindError, match="clasp db upgrade"):
        schema.ensure_schema(pg_url)
    assert schema.ensure_schema(pg_url, upgrade=True).up_to_date


def test_ensure_schema_refuses_an_unknown_revision(sqlite_url):
    schema.upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'fromthefuture'"))
    engine.dispose()
    with pytest.raises(schema.SchemaMismatchError, match="newer CLASP"):
        schema.ensure_schema(sqlite_url)


def test_cli_db_status_upgrade_downgrade(db_url, capsys):
    assert clasp(["db", "--database-url", db_url, "status"]) == 1
    assert "behind" in capsys.readouterr().out
    assert clasp(["db", "--database-url", db_url, "upgrade"]) == 0
    assert "base -> " in capsys.readouterr().out
    assert clasp(["db", "--database-url", db_url, "status"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert clasp(["db", "--database-url", db_url, "downgrade", "base"]) == 0
    assert "-> base" in capsys.readouterr().out
    assert _tables(db_url) - {"alembic_version"} == set()


def test_cli_db_uses_clasp_database_url(sqlite_url, monkeypatch, capsys):
    monkeypatch.setenv("CLASP_DATABASE_URL", sqlite_url)
    assert clasp(["db", "upgrade"]) == 0
    assert clasp(["db", "status"]) == 0
    assert sqlite_url.split("///")[1] in capsys.readouterr().out


def test_default_database_is_a_sqlite_file_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLASP_DATABASE_URL", raising=False)
    assert clasp(["db", "upgrade"]) == 0
    assert (tmp_path / "clasp.db").is_file()


@pytest.mark.slow
def test_concurrent_upgrades_are_safe(db_url):
    """Several workers starting at once on an empty database: one migrates, the others wait
    (PostgreSQL: advisory lock; SQLite: BEGIN IMMEDIATE)."""
    import multiprocessing as mp

    from db_workers import upgrade_to_head

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=upgrade_to_head, args=(db_url,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert schema.schema_status(db_url).up_to_date
