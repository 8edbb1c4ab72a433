"""Where a command's time goes, per phase, for `make bench` (LBSPLIT_TIMINGS=FILE). Off by default.

$LBSPLIT_TIMINGS_T0 is the wall time the caller started the process at; with it, the
interpreter's start-up and the imports are split out too.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

from . import IMPORTED_AT

ENV_FILE = "LBSPLIT_TIMINGS"
ENV_T0 = "LBSPLIT_TIMINGS_T0"
_phases: dict[str, float] = {}
_entered: float | None = None


def entered() -> None:
    """The command's code starts now (imports are done)."""
    global _entered
    _entered = time.time()


@contextlib.contextmanager
def phase(name: str):
    started = time.perf_counter()
    try:
        yield
    finally:
        _phases[name] = _phases.get(name, 0.0) + time.perf_counter() - started


def write() -> None:
    """Append this command's phases to $LBSPLIT_TIMINGS as one JSON line (a no-op when unset)."""
    path = os.environ.get(ENV_FILE)
    if not path:
        return
    row = dict(_phases)
    if _entered is not None:
        row["imports"] = _entered - IMPORTED_AT
        t0 = os.environ.get(ENV_T0)
        if t0:
            row["interpreter"] = IMPORTED_AT - float(t0)
    row["total_in_process"] = time.time() - IMPORTED_AT
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
