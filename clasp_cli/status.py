"""`clasp status [--json] [--failures N|all]`: images by status, the latest runs, the most common
failure reasons and the failed images by name.

Before reporting, runs whose process died without closing them (kill -9, out of
memory) are closed as `abandoned` and their claims go back to the queue
(`integrations.db.runs.close_dead_runs`): a report never shows a dead run as running.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from clasp_cli.options import non_negative_int
from clasp_cli.failures import DEFAULT_SAMPLE, add_failures_argument, failure_lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="SQLAlchemy URL (default CLASP_DATABASE_URL or sqlite:///clasp.db)")
    parser.add_argument("--runs", type=non_negative_int, default=5, help="how many of the latest runs to show (default 5)")
    parser.add_argument("--reasons", type=non_negative_int, default=10, help="how many failure reasons to show (default 10)")
    parser.add_argument("--json", action="store_true", help="print JSON: {images: {status: count}, runs, failure_reasons}")
    add_failures_argument(parser)


def collect(database_url: str, runs: int = 5, reasons: int = 10, failures: int | None = DEFAULT_SAMPLE) -> dict[str, Any]:
    from integrations import db as repo
    from integrations.db.session import display_url, session_scope

    with session_scope(database_url) as session:
        try:
            abandoned = repo.close_dead_runs(session)
        except Exception as exc:  # noqa: BLE001 - e.g. a read-only database user: report anyway
            session.rollback()
            abandoned = []
            print(f"clasp status: could not close dead runs ({type(exc).__name__}: {exc})", file=sys.stderr)
        images = repo.counts_by_status(session)
        latest = [
            {
                "id": r.id,
                "status": r.status,
                "backbone": r.backbone,
                "variant": (r.config or {}).get("variant"),
                "device": r.device,
                "started_at": r.started_at.isoformat() if r.started_at else None,
                "finished_at": r.finished_at.isoformat() if r.finished_at else None,
                "seconds": (r.finished_at - r.started_at).total_seconds() if r.finished_at and r.started_at else None,
                "segmented": r.n_segmented,
                "failed": r.n_failed,
                "worker_id": r.worker_id,
                "prefect_flow_run_id": r.orchestrator_run_id,
            }
            for r in repo.recent_runs(session, runs)
        ]
        failure_reasons = [{"reason": reason, "images": n} for reason, n in repo.failure_reasons(session, limit=reasons)]
        k_distribution = repo.k_distribution(session)
        failed = [{"id": i, "uri": uri, "reason": reason}
                  for i, uri, reason in repo.failed_images(session, limit=failures)]
    return {
        "database": display_url(database_url),
        "images": images,
        "total_images": sum(images.values()),
        "k_distribution": {str(k): v for k, v in k_distribution.items()},
        "runs": latest,
        "failure_reasons": failure_reasons,
        "failed_images": failed,  # newest first; --failures all for every one
        "abandoned_runs_closed": abandoned,
    }


def run(args: argparse.Namespace) -> int:
    from integrations.db.schema import SchemaError, schema_status
    from clasp_cli import options

    url = options.load(args).database_url  # --database-url over CLASP_DATABASE_URL, every setting checked
    if _missing_sqlite_file(url):  # do not create an empty database just to report on it
        status = None
    else:
        try:
            status = schema_status(url)
        except Exception as exc:  # noqa: BLE001 - unreachable server, bad URL
            print(f"clasp status: cannot open the database: {exc}", file=sys.stderr)
            return 1
    if status is None or status.current is None:
        shown = status.url if status is not None else url
        if args.json:
            print(json.dumps({"database": shown, "images": {}, "total_images": 0, "runs": [],
                              "failure_reasons": [], "schema": "empty"}))
        else:
            print(f"{shown}: no CLASP database yet (run `clasp run ...` or `clasp db upgrade`)")
        return 0
    if not status.up_to_date:
        print(f"clasp status: {status.describe()}", file=sys.stderr)
        return 1
    try:
        data = collect(url, args.runs, args.reasons, args.failures)
    except SchemaError as exc:
        print(f"clasp status: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(describe(data))
    return 0


def _missing_sqlite_file(url: str) -> bool:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.get_backend_name() != "sqlite" or u.database in (None, "", ":memory:"):
        return False
    return not Path(u.database).expanduser().exists()


def describe(data: dict[str, Any]) -> str:
    lines = [f"database {data['database']}: {data['total_images']} images"]
    width = max((len(s) for s in data["images"]), default=8)
    for status, n in data["images"].items():
        lines.append(f"  {status:<{width}}  {n}")
    if data["k_distribution"]:
        lines.append("K chosen: " + ", ".join(f"K={k}: {n}" for k, n in data["k_distribution"].items()))
    if data["runs"]:
        lines.append("latest runs:")
        for r in data["runs"]:
            secs = f"{r['seconds']:.1f} s" if r["seconds"] is not None else "running"
            lines.append(
                f"  #{r['id']:<4} {r['status']:<9} {r['started_at'][:19] if r['started_at'] else '':<19}  "
                f"{r['segmented']} segmented, {r['failed']} failed, {secs}  ({r['backbone']}, {r['variant']}, {r['device']})"
            )
    if data["failure_reasons"]:
        lines.append("most common failure reasons:")
        for f in data["failure_reasons"]:
            lines.append(f"  {f['images']:>5} x {f['reason']}")
    lines += failure_lines("failed images, newest first", [(f["uri"], f["reason"]) for f in data.get("failed_images", [])],
                           data["images"].get("failed", 0), None)
    if data.get("abandoned_runs_closed"):
        ids = ", ".join(f"#{i}" for i in data["abandoned_runs_closed"])
        lines.append(f"closed as abandoned (their process is gone): run {ids}; their images went back to the queue")
    return "\n".join(lines)
