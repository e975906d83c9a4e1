"""`clasp report`: how much of the proposals survived review (from SQL).

Per model version and overall: tasks sent and reviewed, the share of proposals kept
unchanged / redrawn / deleted, regions added by hand, the mean IoU of each final
region with its best proposal, and the labels reviewers chose. `--sync` first pulls
finished annotations from Label Studio (needs LABEL_STUDIO_URL and the token).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="SQLAlchemy URL (default CLASP_DATABASE_URL or sqlite:///clasp.db)")
    parser.add_argument("--model-version", help="only this model version")
    parser.add_argument("--sync", action="store_true", help="pull finished annotations from Label Studio first")
    parser.add_argument("--project", help="Label Studio project title for --sync (default CLASP_LABEL_STUDIO_PROJECT)")
    parser.add_argument("--json", action="store_true", help="print the statistics as JSON")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def describe(stats: dict[str, Any]) -> str:
    lines = [
        f"review statistics: {stats['tasks_reviewed']} of {stats['tasks_sent']} tasks sent to Label Studio reviewed",
    ]
    if not stats["tasks_reviewed"]:
        lines.append("  no reviews yet (run `clasp report --sync` after reviewers submit annotations)")
        return "\n".join(lines)

    def block(name: str, s: dict[str, Any]) -> list[str]:
        iou = "-" if s.get("mean_best_iou") is None else f"{s['mean_best_iou']:.3f}"
        out = [
            f"{name}: {s['tasks_reviewed']}/{s['tasks_sent']} tasks reviewed, {s['n_proposals']} proposals, {s['n_final']} final regions",
            f"  proposals kept unchanged {s['kept']:>5}  ({_pct(s['share_kept'])})",
            f"  proposals redrawn        {s['redrawn']:>5}  ({_pct(s['share_redrawn'])})",
            f"  proposals deleted        {s['deleted']:>5}  ({_pct(s['share_deleted'])})",
            f"  regions added by hand    {s['added']:>5}",
            f"  proposals relabelled     {s['relabelled']:>5}",
            f"  mean IoU of final regions with their best proposal: {iou}",
        ]
        if s.get("labels"):
            out.append("  labels: " + ", ".join(f"{k} {v}" for k, v in sorted(s["labels"].items(), key=lambda kv: -kv[1])))
        return out

    lines += block("all model versions", stats)
    for mv, s in stats["by_model_version"].items():
        if s["tasks_reviewed"]:
            lines += block(mv, s)
        else:
            lines.append(f"{mv}: {s['tasks_sent']} tasks sent, none reviewed yet")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from integrations.review.sync import review_statistics
    from integrations.db.session import session_scope
    from clasp_cli import options

    settings = options.load(args)  # --database-url / --project over the environment, every setting checked
    url = settings.database_url
    try:
        from integrations.db.schema import schema_status

        status = schema_status(url)
    except Exception as exc:  # noqa: BLE001 - unreachable server, bad URL
        print(f"clasp report: cannot open the database: {exc}", file=sys.stderr)
        return 1
    if status.current is None:
        print(f"{status.url}: no CLASP schema yet, so no reviews (run `clasp run ...` or `clasp db upgrade`)")
        return 0
    if args.sync:
        from integrations.review.sync import pull_reviews
        from integrations.label_studio.client import LabelStudioClient, LabelStudioError
        from integrations.label_studio.config import LabelingConfig

        if not settings.label_studio_url:
            print("clasp report: --sync needs LABEL_STUDIO_URL", file=sys.stderr)
            return 2
        try:
            with LabelStudioClient.from_settings(settings) as client, session_scope(url) as session:
                project = client.find_or_create_project(
                    args.project or settings.label_studio_project, LabelingConfig().xml(), update_config=False
                )
                res = pull_reviews(client, project, session)
                if res.error:
                    print(f"clasp report: sync failed: {res.error}", file=sys.stderr)
                else:
                    print(f"synced {res.reviews_new} new and {res.reviews_updated} updated reviews", file=sys.stderr)
        except LabelStudioError as e:
            print(f"clasp report: {e}", file=sys.stderr)
            return 1
    try:
        with session_scope(url) as session:
            stats = review_statistics(session, model_version=args.model_version)
    except Exception as e:  # noqa: BLE001 - missing schema, unreachable database
        from integrations.db.session import display_url

        print(f"clasp report: cannot read review statistics from {display_url(url)}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(stats, indent=2) if args.json else describe(stats))
    return 0
