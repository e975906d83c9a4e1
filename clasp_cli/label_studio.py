"""`clasp label-studio start|stop|status|env|backend`: a local Label Studio for the demo, and CLASP's ML backend.

`backend --host H --port P` serves Label Studio's ML backend protocol (proposals on
demand for any project with an Image and BrushLabels); `start --backend URL` connects
such a backend to the demo project.

Runs in its own venv (`.venv-label-studio`, installed on first start, ~70 s), binds
127.0.0.1 only, keeps SQLite and media in `.clasp/label-studio/`, and generates an
API token into a file (mode 0600) that `LABEL_STUDIO_API_KEY_FILE` points to. The
token itself is never printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clasp_cli.options import port_number, positive_float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("start", "stop", "status", "env", "backend"),
                        help="what to do (env: print export lines; backend: serve the ML backend protocol)")
    parser.add_argument("--host", default="127.0.0.1", help="backend: address to bind (default 127.0.0.1)")
    parser.add_argument("--backbone", default="classic", help="backend: engine backbone (default classic)")
    parser.add_argument("--variant", default="pixel", choices=("pixel", "patch"), help="backend: engine variant")
    parser.add_argument("--weights", help="backend: backbone weights (a file, or 'random' for speed tests only)")
    parser.add_argument("--granularity", action="store_true",
                        help="backend: also answer the coarser and finer partitions of the K search (extra predictions)")
    parser.add_argument("--suggestions", action="store_true",
                        help="backend: label regions with confident suggestions from past reviews (kNN over the "
                             "exemplars in CLASP_DATABASE_URL, threshold CLASP_SUGGESTION_THRESHOLD)")
    parser.add_argument("--backend", metavar="URL",
                        help="start: connect the ML backend at URL (e.g. http://127.0.0.1:9090) to the demo project")
    parser.add_argument("--port", type=port_number,
                        help="port on 127.0.0.1 (default 8080, or a free one if busy); backend: its port (default 9090)")
    parser.add_argument("--data-dir", type=Path, help="server state (default .clasp/label-studio in the repository)")
    parser.add_argument(
        "--document-root",
        type=Path,
        help="folder Label Studio may serve images from (local-files storage); default: the repository root",
    )
    parser.add_argument("--timeout", type=positive_float, default=180.0, help="seconds to wait for the server to be healthy")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _server(args: argparse.Namespace):
    from integrations.label_studio.server import DEFAULT_DATA_DIR, REPO_ROOT, LocalLabelStudio

    root = args.document_root or (REPO_ROOT if args.action == "start" else None)
    return LocalLabelStudio(args.data_dir or DEFAULT_DATA_DIR, port=args.port, document_root=root)


def _backend(args: argparse.Namespace) -> int:
    import logging

    from clasp_engine.errors import ClaspError
    from integrations.label_studio.backend import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    suggest = None
    if args.suggestions:
        from integrations.db.schema import ensure_schema
        from integrations.db.session import display_url
        from integrations.review.suggestions import LiveSuggestions
        from integrations.settings import load_settings

        settings = load_settings()  # a bad setting: SettingsError, reported by clasp_cli.main (exit 2)
        try:
            ensure_schema(settings.database_url)
        except Exception as e:  # noqa: BLE001 - unreachable server, schema behind, bad URL
            print(f"clasp label-studio backend: --suggestions: database {display_url(settings.database_url)}: {e}",
                  file=sys.stderr)
            return 2
        suggest = LiveSuggestions(settings.database_url, threshold=settings.suggestion_threshold)
    try:
        serve(args.host, args.port or 9090, backbone=args.backbone, variant=args.variant, weights=args.weights,
              granularity=args.granularity, suggest=suggest)
    except ClaspError as e:  # bad backbone/variant, weights that cannot be loaded
        print(f"clasp label-studio backend: {e}", file=sys.stderr)
        return 2
    return 0


def _connect_backend(url: str) -> int:
    from integrations.label_studio.client import LabelStudioClient, LabelStudioError
    from integrations.label_studio.config import LabelingConfig
    from integrations.settings import Settings

    settings = Settings()
    try:
        with LabelStudioClient.from_settings(settings) as client:
            project = client.find_or_create_project(settings.label_studio_project, LabelingConfig().xml())
            b = client.connect_ml_backend(project.id, url)
    except LabelStudioError as e:
        print(f"clasp label-studio: cannot connect the backend {url}: {e}", file=sys.stderr)
        return 1
    print(f"ML backend {url} connected to project {project.id} ({project.title}), state {b.get('state')}")
    return 0


def run(args: argparse.Namespace) -> int:
    from integrations.label_studio.server import ServerError

    if args.action == "backend":
        return _backend(args)
    server = _server(args)
    if args.action == "start":
        try:
            print("starting Label Studio on 127.0.0.1 (first start installs it into .venv-label-studio: ~70 s) ...",
                  file=sys.stderr)
            creds = server.start(timeout=args.timeout)
        except ServerError as e:
            print(f"clasp label-studio: {e}", file=sys.stderr)
            return 1
        info = {"url": creds.url, "username": creds.username, "password": creds.password, **server.env()}
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            print(f"Label Studio is up: {creds.url}")
            print(f"  login:    {creds.username}")
            print(f"  password: {creds.password}")
            print(f"  (the API token is in {creds.token_file}; it is not printed)")
            print("to push into it from this shell:")
            for k, v in server.env().items():
                print(f"  export {k}={v}")
        if args.backend:
            import os

            os.environ.pop("LABEL_STUDIO_API_KEY", None)
            os.environ.update(server.env())
            return _connect_backend(args.backend)
        return 0
    if args.action == "stop":
        stopped = server.stop()
        print("Label Studio stopped" if stopped else "Label Studio was not running")
        return 0
    if args.action == "env":
        for k, v in server.env().items():
            print(f"export {k}={v}")
        return 0
    st = server.status()
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        state = "running, healthy" if st["healthy"] else ("running, not healthy" if st["pid"] else "stopped")
        print(f"Label Studio {st['url']}: {state} (data {st['data_dir']})")
    return 0 if st["healthy"] or not st["pid"] else 1
