"""`clasp db`: the database schema (Alembic wrapped).

    clasp db status              current revision vs head (exit 0 up to date, 1 behind)
    clasp db upgrade [REV]       to head (default) or REV
    clasp db downgrade REV       to REV ("base" empties the database: drops every table)

The database comes from --database-url, else CLASP_DATABASE_URL, else
sqlite:///clasp.db in the working directory. Commands that need the tables
(`clasp ingest`, `clasp run` ...) call `ensure_schema`: a SQLite database is
upgraded to head on the spot; a PostgreSQL database that is behind stops them
with a message naming `clasp db upgrade` (the schema of a shared database
changes only on purpose).
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="database URL (default: CLASP_DATABASE_URL or sqlite:///clasp.db)")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("status", help="current revision vs head")
    up = sub.add_parser("upgrade", help="upgrade the schema (default: to head)")
    up.add_argument("revision", nargs="?", default="head")
    down = sub.add_parser("downgrade", help="downgrade the schema to REV ('base' drops every table)")
    down.add_argument("revision")
    sub.add_parser("history", help="list the migrations")


def database_url(args: argparse.Namespace) -> str:
    """--database-url over CLASP_DATABASE_URL (every setting checked; SettingsError names a bad one)."""
    from clasp_cli import options

    return options.load(args).database_url


def run(args: argparse.Namespace) -> int:
    from integrations.db import schema

    url = database_url(args)
    try:
        if args.action == "status":
            status = schema.schema_status(url)
            print(status.describe())
            return 0 if status.up_to_date else 1
        if args.action == "history":
            from alembic.script import ScriptDirectory

            script = ScriptDirectory.from_config(schema.alembic_config())
            for rev in script.walk_revisions():
                print(f"{rev.revision}  {(rev.doc or '').splitlines()[0] if rev.doc else ''}")
            return 0
        before = schema.schema_status(url)
        if args.action == "upgrade":
            schema.upgrade(url, args.revision)
        else:
            schema.downgrade(url, args.revision)
        after = schema.schema_status(url)
        print(f"{after.url}: {before.current or 'base'} -> {after.current or 'base'} (head {after.head})")
        return 0
    except Exception as exc:  # noqa: BLE001 - report, do not trace
        print(f"clasp db {args.action}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
