"""`clasp label-studio start|stop|status`: a local Label Studio for the demo.

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
    parser.add_argument("action", choices=("start", "stop", "status", "env"), help="what to do (env: print export lines)")
    parser.add_argument("--port", type=port_number, help="port on 127.0.0.1 (default 8080, or a free one if busy)")
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


def run(args: argparse.Namespace) -> int:
    from integrations.label_studio.server import ServerError

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
