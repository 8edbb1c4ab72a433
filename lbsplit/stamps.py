"""When and by whom: the time stamps and the user lbsplit writes into its records, and reading a stamp back.

Every history entry, journal, state file and fleet report is stamped by `now()` and `actor()`;
`epoch()` is the one place such a stamp is parsed again.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os


def now() -> str:
    """This moment in UTC to the second, as lbsplit writes it: 2026-12-03T06:00:00Z."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def epoch(iso: str) -> float | None:
    """A stamp written by now() (or any ISO 8601 time) as seconds since the epoch; None when it is not one."""
    try:
        return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return None


def actor() -> str:
    """Who runs the command: the sudo caller when there is one."""
    try:
        return os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"
