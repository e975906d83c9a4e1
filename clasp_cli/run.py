"""`clasp run [SOURCE]`: the moderation pipeline in-process, on SQLite, with no server to start.

Runs the `moderation_pipeline` Prefect flow against a local Prefect backend
(a temporary server the first flow starts, its history kept under
`.clasp/prefect`), registers SOURCE, segments everything waiting, stores masks
and diagnostics in the database, writes overlay images, and pushes the
proposals to Label Studio when LABEL_STUDIO_URL (and a token) are set.

`--label-studio-demo` (what `make demo` runs) first starts the local Label Studio
of `clasp label-studio start` (or reuses the running one), pushes into the
project "CLASP demo", and prints where to open it and the login (never the
token). If that server cannot be installed or started, the pipeline still
segments and stores, and says loudly why nothing was pushed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from clasp_cli import options
from clasp_cli.failures import add_failures_argument, failure_lines
from clasp_engine.config import BACKBONES, VARIANTS

# A closed network: no telemetry from the client or the local server.
QUIET_PREFECT_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    # The local server's first start creates its database (migrations): on a busy
    # laptop that takes longer than Prefect's default 20 s.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


DEMO_PROJECT = "CLASP demo"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?", help="folder, glob, file of URIs (one a line) or one image URI/path")
    parser.add_argument("--samples", action="store_true", help="use the sample photos bundled with dependencies")
    parser.add_argument("--limit", type=options.non_negative_int, help="segment at most this many images in this run")
    parser.add_argument("--batch-size", type=options.positive_int, help="images per batch (default CLASP_BATCH_SIZE or 16)")
    parser.add_argument("--backbone", choices=BACKBONES, help="feature extractor (default CLASP_BACKBONE or auto)")
    parser.add_argument("--weights", help="weights file, or 'random' for speed tests only")
    parser.add_argument("--variant", choices=VARIANTS, help="patch (spectral only) or pixel (+DenseCRF)")
    parser.add_argument("--max-side", type=options.positive_int, help="long side the backbone sees, in pixels")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default CLASP_DEVICE or auto")
    parser.add_argument("--database-url", help="SQLAlchemy URL (default CLASP_DATABASE_URL or sqlite:///clasp.db)")
    parser.add_argument("--out", "--output-dir", dest="output_dir", help="where overlays go (default clasp-output)")
    parser.add_argument("--project", help="Label Studio project title (default CLASP_LABEL_STUDIO_PROJECT)")
    parser.add_argument("--label-studio-url", help="Label Studio base URL (default LABEL_STUDIO_URL)")
    parser.add_argument("--label-studio-token-file", help="file holding the Label Studio token "
                        "(default LABEL_STUDIO_API_KEY, or LABEL_STUDIO_API_KEY_FILE); never pass a token on the command line")
    parser.add_argument("--label-studio-demo", action="store_true",
                        help="start (or reuse) the local Label Studio on 127.0.0.1 first, push into it "
                        f"(project {DEMO_PROJECT!r} unless --project) and print the URL and login")
    parser.add_argument("--no-overlays", action="store_true", help="do not write overlay images")
    parser.add_argument("--hash-content", action="store_true",
                        help="read and hash images at registration: the same bytes under two names count once")
    parser.add_argument("--no-review", action="store_true", help="do not push to Label Studio even if configured")
    parser.add_argument("--granularity", action="store_true",
                        help="also push the coarser and finer partitions as extra predictions "
                             "(default CLASP_LABEL_STUDIO_GRANULARITY or off)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_failures_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="only warnings from Prefect's logger")


def prepare_environment(workdir: Path | None = None) -> None:
    """Telemetry off and a project-local PREFECT_HOME, unless the caller already chose."""
    for key, value in QUIET_PREFECT_ENV.items():
        os.environ.setdefault(key, value)
    from clasp_cli.run_history import configured_api_url  # a server in the env or the Prefect profile

    if "PREFECT_HOME" not in os.environ and configured_api_url() is None:
        home = (workdir or Path.cwd()) / ".clasp" / "prefect"
        home.mkdir(parents=True, exist_ok=True)  # Prefect creates only the last level
        os.environ["PREFECT_HOME"] = str(home)


def run(args: argparse.Namespace) -> int:
    if not args.source and not args.samples:
        print("clasp run: give a SOURCE (folder, glob, URI list) or --samples", file=sys.stderr)
        return 2
    if args.label_studio_demo and (args.label_studio_url or args.label_studio_token_file or args.no_review):
        print("clasp run: --label-studio-demo starts its own Label Studio: "
              "not with --label-studio-url, --label-studio-token-file or --no-review", file=sys.stderr)
        return 2
    # Every setting (flags and environment, the engine's included) is checked before any work:
    # an invalid one raises SettingsError, which `clasp_cli.main` reports in one line (exit 2).
    settings = options.load(args)
    options.check_token_file(settings, args)
    if not args.no_overlays:
        options.check_writable_folder(Path(settings.output_dir), options.setting_name(args, "output_dir"))
    prepare_environment()
    demo = start_label_studio_demo() if args.label_studio_demo else None
    if demo is not None:
        args.project = args.project or DEMO_PROJECT
    # The flows read Label Studio settings from the environment (as deployed workers do).
    if args.label_studio_url:
        os.environ["LABEL_STUDIO_URL"] = args.label_studio_url
    if args.label_studio_token_file:
        os.environ["LABEL_STUDIO_API_KEY_FILE"] = str(Path(args.label_studio_token_file).expanduser().resolve())
        os.environ.pop("LABEL_STUDIO_API_KEY", None)
    if args.quiet:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    settings = options.load(args)  # again: the demo server and the flags above changed the environment

    # Imported only now: prefect reads its settings at import time.
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.pipeline import moderation_pipeline
    from integrations.db.schema import ensure_schema
    from integrations.db.session import display_url

    source: str | list[str] | None = args.source
    if args.samples:
        from integrations.samples import sample_image_paths

        source = [str(p.resolve()) for p in sample_image_paths()]
    try:
        ensure_schema(settings.database_url)  # SQLite: created/upgraded; PostgreSQL: must be at head
    except Exception as exc:  # noqa: BLE001 - schema behind, unreachable server, bad URL
        print(f"clasp run: database {display_url(settings.database_url)}: {exc}", file=sys.stderr)
        return 1

    # The flows read the database URL from the environment: a URL with a password
    # passed as a flow parameter would be shown on the dashboard.
    os.environ["CLASP_DATABASE_URL"] = settings.database_url
    if args.granularity:  # the push reads it from the settings, like every Label Studio option
        os.environ["CLASP_LABEL_STUDIO_GRANULARITY"] = "true"

    warm_engine(args)  # the model loads while Prefect's server starts and the images are registered

    # Started now, so that it dies with this command even on kill -9 (clasp_cli/temporary_server.py).
    from clasp_cli.temporary_server import start_tied_prefect_server

    if start_tied_prefect_server() is not None:
        # A temporary server is this command's alone: a GPU limit on it coordinates nothing, and
        # each slot acquisition would be a round trip to its SQLite database (flows/gpu_slots.py).
        os.environ["CLASP_GPU_LIMIT"] = "false"
    # In-process there is nobody to notice a crashed run from its missing heartbeats,
    # and each flow would wait ~1 s for its heartbeat thread at its end.
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        state = moderation_pipeline(
            source=source,
            batch_size=settings.batch_size,
            limit=args.limit,
            backbone=args.backbone,
            variant=args.variant,
            weights=args.weights,
            max_side=args.max_side,
            device=args.device,
            project=args.project,
            database_url=None,  # read from CLASP_DATABASE_URL, never a parameter
            output_dir=str(settings.output_dir),
            overlays=not args.no_overlays,
            review=not args.no_review and not (demo is not None and "error" in demo),
            hash_content=args.hash_content,
            return_state=True,
        )
    from clasp_cli.run_history import history_line

    history = history_line(str(state.state_details.flow_run_id or ""))  # where the run history went
    if not state.is_completed():
        print(f"clasp run: the pipeline ended {state.type.value}: {state.message}", file=sys.stderr)
        print(history, file=sys.stderr)
        return 1
    result = state.result()
    result["run_history"] = history
    if demo is not None and "error" in demo:
        result["review"] = {"skipped": True, "reason": f"the local Label Studio did not start ({demo['error']})"}
    if demo is not None:
        result["label_studio_demo"] = {k: v for k, v in demo.items() if k != "password"}
    if args.failures is None:  # every failure of this run, from SQL (the summary carries a sample)
        result["segment"]["failures"] = run_failures_all(settings.database_url, result["segment"])
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(describe(result, settings, overlays=not args.no_overlays, failures=args.failures))
        if demo is not None:
            print(describe_demo(demo, result))
    if demo is not None and "error" in demo:
        print(f"\nclasp run: WARNING: nothing was pushed for review: the local Label Studio did not start: "
              f"{demo['error']}\n(segmentation and storage are done; `clasp label-studio start` to retry)",
              file=sys.stderr)
    return 0


def warm_engine(args: argparse.Namespace) -> "threading.Thread":
    """Build the segment flow's engine on a background thread, now.

    The segment flow runs in this process and takes its Segmenter from the process
    cache (flows/resources.py), so it finds the model loaded instead of waiting for
    it: for `classic` that wait was 2.4 s (mostly importing torch) of a 60 s flow on
    200 images, 4 points of its time outside the engine. The configuration is built
    exactly as the flow builds it. A failure here is ignored: the flow builds the
    engine again and reports the cause.
    """
    import threading

    from flows import resources
    from integrations.settings import load_settings

    def build() -> None:
        try:
            config = load_settings(backbone=args.backbone, variant=args.variant, weights=args.weights,
                                   max_side=args.max_side, device=args.device).engine_config()
            resources.get_segmenter(config)
        except Exception:  # noqa: BLE001 - reported by the flow, which builds it again
            pass

    thread = threading.Thread(target=build, name="clasp-warm-engine", daemon=True)
    thread.start()
    return thread


def start_label_studio_demo() -> dict:
    """Start or reuse the local Label Studio and point this process at it; on failure, say why and go on."""
    from integrations.label_studio import server

    print("clasp run: starting the local Label Studio on 127.0.0.1 (reused if running; the first start installs "
          "it into .venv-label-studio, ~70 s, then ~30 s to create its database) ...", file=sys.stderr, flush=True)
    try:
        creds = server.start_demo(timeout=300)
    except Exception as exc:  # noqa: BLE001 - no registry, no python3 venv, busy port, server crash ...
        message = " ".join(str(exc).split())[-600:] or type(exc).__name__
        print(f"\nclasp run: WARNING: the local Label Studio did not start: {message}\n"
              "clasp run: segmenting anyway; the review push is skipped\n", file=sys.stderr, flush=True)
        return {"error": message}
    print(f"clasp run: Label Studio is up at {creds.url}", file=sys.stderr, flush=True)
    return {"url": creds.url, "username": creds.username, "password": creds.password,
            "password_file": str(Path(creds.token_file).parent / "password")}


def describe_demo(demo: dict, result: dict) -> str:
    if "error" in demo:
        return ("\nLabel Studio: NOT STARTED, nothing pushed for review\n"
                f"  why          {demo['error']}\n"
                "  retry        .venv/bin/clasp label-studio start   (then run this again: it pushes what is segmented)")
    push = result.get("push", {})
    return "\n".join([
        "",
        "Review the proposals in Label Studio (local, 127.0.0.1 only):",
        f"  open         {push.get('project_url') or demo['url']}",
        f"  login        {demo['username']}",
        f"  password     {demo['password']}",
        "  stop it      .venv/bin/clasp label-studio stop   (it keeps running after this command)",
    ])


def run_failures_all(database_url: str, seg: dict) -> list[dict]:
    """Every failure recorded under the segment run of `seg` (the flow's summary lists 200 at most)."""
    from flows import resources
    from integrations import db as repo

    if "run_id" not in seg:
        return seg.get("failures", [])
    with resources.session(database_url) as session:
        rows = repo.run_failures(session, seg["run_id"], limit=None)
    return [{"image_id": i, "uri": uri, "reason": reason, "status": "failed" if final else "waiting"}
            for i, uri, reason, final in rows if not reason.startswith("overlay: ")]


def describe(result: dict, settings, overlays: bool = True, failures: int | None = 10) -> str:
    from integrations.db.session import display_url

    seg = result["segment"]
    lines = ["", "CLASP moderation pipeline"]
    if "ingest" in result:
        ing = result["ingest"]
        lines.append(f"  registered    {ing['registered']} new of {ing['found']} found ({ing['already_known']} already known)")
    lines.append(f"  segmented     {seg['done']}  (K: " + ", ".join(f"{k}x{c}" for k, c in seg["k_distribution"].items()) + ")")
    lines.append(f"  failed        {seg['failed']}")
    for reason, count in list(seg.get("failure_reasons", {}).items())[:5]:
        lines.append(f"      {count} x {reason}")
    failed = [f for f in seg.get("failures", []) if f.get("status") != "waiting"]
    lines += ["  " + line for line in failure_lines(
        "failed images", [(f["uri"], f"{f['stage']}: {f['reason']}" if f.get("stage") else f["reason"]) for f in failed],
        seg.get("failed", len(failed)), failures)]
    missing = seg.get("overlay_failures", [])
    lines += ["  " + line for line in failure_lines(
        "stored, but no overlay written", [(f["uri"], f"{f['stage']}: {f['reason']}") for f in missing],
        seg.get("overlays_failed", len(missing)), failures)]
    notes = seg.get("notes", [])
    lines += ["  " + line for line in failure_lines(
        "segmented with a caveat", [(n["uri"], n["note"]) for n in notes], len(notes), failures)]
    lines.append(
        f"  speed         {seg['images_per_second']:.2f} images/s end to end "
        f"({seg['wall_seconds']:.1f} s, of which {seg.get('model_load_seconds', 0.0):.1f} s loading the model once)"
    )
    if seg.get("overhead_vs_engine") is not None:
        lines.append(
            f"  engine        {seg['engine_seconds'] / max(seg['done'], 1):.2f} s per image; orchestration, database and "
            f"image I/O add {100 * seg['overhead_vs_engine']:.1f}% to it"
        )
    lines.append("Where to look:")
    lines.append(f"  database      {display_url(settings.database_url)}   (clasp status)")
    if overlays:
        lines.append(f"  overlays      {Path(settings.output_dir) / 'overlays'}/<image id>-<name>.jpg")
    if "push" in result:
        push = result["push"]
        lines.append(f"  Label Studio  {push.get('project_url') or settings.label_studio_url}  ({push.get('pushed', '?')} pushed)")
        if push.get("image_mode"):
            lines.append(f"                {push['image_mode']}")
    else:
        lines.append(f"  Label Studio  not used: {result.get('review', {}).get('reason', '')}")
    if result.get("run_history"):  # one line: the server's run page, or the local history
        lines.append(f"  {result['run_history']}")
    return "\n".join(lines)
