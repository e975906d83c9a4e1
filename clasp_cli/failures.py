"""Naming failed images on the command line: `--failures N` (a sample, default 10) or `--failures all`.

Shared by `clasp run` and `clasp status`, so that both say which images failed and
why, not only how many per reason.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

DEFAULT_SAMPLE = 10


def failures_flag(value: str) -> int | None:
    """argparse type: a count >= 0, or "all" (None: no limit)."""
    if value.strip().lower() == "all":
        return None
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"--failures {value!r}: give a number of images (0 or more) or 'all'")
    return n


def add_failures_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--failures", type=failures_flag, default=DEFAULT_SAMPLE, metavar="N|all",
        help=f"name this many failed images with their reasons (default {DEFAULT_SAMPLE}; 'all' for every one)",
    )


def failure_lines(title: str, rows: Sequence[tuple[str, str]], total: int, limit: int | None) -> list[str]:
    """`title (shown of total[, --failures all for every one]):` then one `uri  reason` line per row."""
    shown = list(rows) if limit is None else list(rows)[:limit]
    if not shown:
        return []
    more = total > len(shown)
    head = f"{title} ({len(shown)} of {total}; --failures all for every one):" if more else f"{title}:"
    return [head] + [f"  {uri}  {reason}" for uri, reason in shown]
