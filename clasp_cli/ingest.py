"""`clasp ingest SOURCE...`: register images from a folder, a text file of URIs or a glob.

SOURCE is
- a folder: every image file under it (recursively; --no-recursive for the top only);
- a text file (.txt, .lst, .list, .uris): one path or URI per line, blank lines and
  `#` comments skipped, relative paths taken from the list file's folder;
- a glob (quote it: 'photos/**/*.jpg');
- a single image path or URI (file://, http(s)://, or an fsspec URI such as s3://).

Each image is read (size cap, host policy and timeouts from the settings) and
decoded once to check it, then registered by content hash: the same bytes are
registered once whatever their name. An image that cannot be read is recorded
as failed with the reason. The summary counts new, already known and
unreadable images. With --lazy the URIs are registered without reading them
(the workers read them later; duplicates are then only caught by URI).

The database (--database-url, else CLASP_DATABASE_URL, else sqlite:///clasp.db)
is brought to the schema's head first if it is SQLite; a PostgreSQL database
that is behind stops the command (run `clasp db upgrade`, or pass --migrate).

Exit status: 0 when it ran (unreadable images are recorded, not fatal), 1 when
SOURCE names no image, 2 when the database is not usable.
"""

from __future__ import annotations

import argparse
import sys

from clasp_cli.options import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SOURCE", help="folder, text file of URIs, glob, or one image")
    parser.add_argument("--database-url", help="database URL (default: CLASP_DATABASE_URL or sqlite:///clasp.db)")
    parser.add_argument("--no-recursive", dest="recursive", action="store_false", help="folders: top level only")
    parser.add_argument("--lazy", action="store_true", help="register URIs without reading them now")
    parser.add_argument("--jobs", type=positive_int, default=4, help="images read in parallel (default 4)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--migrate", action="store_true", help="upgrade a database that is behind (any backend)")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from integrations.db import SchemaError, display_url, ensure_schema, make_session_factory
    from integrations.ingest import SourceNotFound, expand_sources, ingest_uris
    from clasp_cli import options

    settings = options.load(args)  # --database-url over CLASP_DATABASE_URL, every setting checked
    url = settings.database_url
    try:
        uris = expand_sources(args.sources, args.recursive)
    except SourceNotFound as exc:
        print(f"clasp ingest: {exc}", file=sys.stderr)
        return 1
    if not uris:
        print(f"clasp ingest: no images found in {' '.join(args.sources)}", file=sys.stderr)
        return 1
    try:
        ensure_schema(url, upgrade=True if args.migrate else None)
    except SchemaError as exc:
        print(f"clasp ingest: {exc}", file=sys.stderr)
        return 2

    bar = tqdm(total=len(uris), unit="img", desc="ingest", disable=True if args.no_progress else None, file=sys.stderr)

    def progress(n, totals):  # noqa: ANN001
        bar.update(n)
        bar.set_postfix(new=len(totals.new), known=len(totals.known), unreadable=len(totals.unreadable), refresh=False)

    factory = make_session_factory(url)
    try:
        with factory() as session:
            result = ingest_uris(session, uris, settings, lazy=args.lazy, jobs=args.jobs, on_progress=progress)
    finally:
        bar.close()
        factory.kw["bind"].dispose()
    c = result.counts()
    print(
        f"ingested {len(uris)} source{'s' if len(uris) != 1 else ''} into {display_url(url)}: "
        f"{c['new']} new, {c['known']} already known, {c['unreadable']} unreadable"
    )
    for uri, reason in list(result.reasons.items())[:20]:
        print(f"  unreadable: {uri}: {reason}")
    if len(result.reasons) > 20:
        print(f"  ... and {len(result.reasons) - 20} more (clasp status lists failure reasons)")
    return 0
