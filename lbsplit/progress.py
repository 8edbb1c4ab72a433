"""One line on a terminal when a wait grows long (over 2 s); silent in cron, pipes and tests."""

from __future__ import annotations

import sys

AFTER = 2.0  # seconds before a wait is worth a line


def say(message: str) -> None:
    if sys.stderr.isatty():
        print(f"lbsplit: {message}", file=sys.stderr, flush=True)
