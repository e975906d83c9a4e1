"""`clasp` command line: a thin shell over the engine, the integrations and the flows.

Each subcommand lives in its own module under `clasp_cli/` and provides
`add_arguments(parser)` and `run(args) -> int` (the exit code). Modules are
imported only when their command runs, so `clasp --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "segment": ("clasp_cli.segment", "segment images or folders into region proposals"),
    "eval": ("clasp_cli.evaluate", "score segmentations on a labelled dataset"),
    "db": ("clasp_cli.db", "database schema: upgrade, downgrade, status"),
    "ingest": ("clasp_cli.ingest", "register images from a folder, a URI list or a glob"),
    "run": ("clasp_cli.run", "run the moderation pipeline (ingest, segment, review push)"),
    "status": ("clasp_cli.status", "counts of images by status, latest runs, failures"),
    "report": ("clasp_cli.report", "review statistics: how much of the proposals survived"),
    "label-studio": ("clasp_cli.label_studio", "start a local Label Studio for the demo"),
}


class OneLineParser(argparse.ArgumentParser):
    """A bad flag is one line (`clasp run: --limit: '-1': must be ...`) and exit status 2, no usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, str]]:
    parser = argparse.ArgumentParser(prog="clasp", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    available: dict[str, str] = {}
    for name, (module_name, help_text) in COMMANDS.items():
        if importlib.util.find_spec(module_name) is None:
            continue
        sub.add_parser(name, help=help_text, add_help=False)
        available[name] = module_name
    return parser, available


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, available = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in available:
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_help(sys.stderr)
            print(f"\nclasp: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    name = argv[0]
    module = importlib.import_module(available[name])
    sub = OneLineParser(prog=f"clasp {name}", description=COMMANDS[name][1])
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    from integrations.settings import SettingsError

    try:
        return int(module.run(args) or 0)
    except SettingsError as exc:  # every setting is checked before any work: say which, exit 2
        for line in exc.lines:
            print(f"clasp {name}: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
