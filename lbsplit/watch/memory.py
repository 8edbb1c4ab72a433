"""The watchdog's memory between runs (watchdog.json) and its Prometheus textfile."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..model import METRICS, Thresholds
from ..rollout import files


@dataclass
class WatchdogState:
    consecutive_failures: int = 0
    last_check_at: float | None = None
    last_alert_at: float | None = None
    reverts_total: int = 0
    last_outcome: str = ""
    last_metrics: dict = field(default_factory=dict)
    log_cursor: dict | None = None  # {"inode": ..., "offset": ...}
    log_window: dict = field(default_factory=dict)
    busy_since: float | None = None  # when the watchdog first found the lock held by someone else
    busy_alerted: bool = False
    last_breach_at: float | None = None  # the last P1/P2 breach (wall time): soak counts clean time from it
    last_breach_generation: int | None = None
    active_alerts: list = field(default_factory=list)  # the last check's breaches, for `lbsplit alerts`
    release_generation: int | None = None  # the generation whose release_complete was announced
    # Soak counts watched time only: seconds of clean checks at `watched_generation`, and the last check counted.
    watched_generation: int | None = None
    watched_s: float = 0.0
    watched_last_at: float | None = None


def load_state(path: Path) -> WatchdogState:
    """The saved state; a missing, torn or foreign file only loses the count, never blocks a check."""
    try:
        raw = files.read_bytes(path)
    except OSError:
        raw = None
    if not raw:
        return WatchdogState()
    try:
        data = json.loads(raw)
        known = {f.name for f in fields(WatchdogState)}
        state = WatchdogState(**{k: v for k, v in data.items() if k in known})
    except (ValueError, TypeError, AttributeError, RecursionError):
        return WatchdogState()
    if not isinstance(state.consecutive_failures, int) or not isinstance(state.last_metrics, dict):
        return WatchdogState()
    return state


def save_state(path: Path, state: WatchdogState) -> None:
    files.atomic_write(path, json.dumps(asdict(state), indent=2) + "\n", mode=0o644)


def prometheus_text(percent: float, generation: int, wd: WatchdogState, thresholds: Thresholds | None) -> str:
    lines = [
        "# HELP lbsplit_percent Share of users on v2 (0 when v2 is off).",
        "# TYPE lbsplit_percent gauge",
        f"lbsplit_percent {percent:g}",
        "# HELP lbsplit_generation Generation of lbsplit.conf last installed.",
        "# TYPE lbsplit_generation gauge",
        f"lbsplit_generation {generation}",
        "# HELP lbsplit_watchdog_consecutive_failures Failed checks in a row.",
        "# TYPE lbsplit_watchdog_consecutive_failures gauge",
        f"lbsplit_watchdog_consecutive_failures {wd.consecutive_failures}",
        "# HELP lbsplit_reverts_total Reverts made by the watchdog.",
        "# TYPE lbsplit_reverts_total counter",
        f"lbsplit_reverts_total {wd.reverts_total}",
        "# HELP lbsplit_last_check_timestamp_seconds When the watchdog last checked v2.",
        "# TYPE lbsplit_last_check_timestamp_seconds gauge",
        f"lbsplit_last_check_timestamp_seconds {wd.last_check_at or 0:.3f}",
        "# HELP lbsplit_v2_health Last value of each v2 health metric.",
        "# TYPE lbsplit_v2_health gauge",
    ]
    for metric, value in sorted(wd.last_metrics.items()):
        if value is not None:
            lines.append(f'lbsplit_v2_health{{metric="{metric}"}} {value:g}')
    if thresholds is not None:
        lines += ["# HELP lbsplit_v2_threshold Threshold of each metric at the live stage.", "# TYPE lbsplit_v2_threshold gauge"]
        lines += [f'lbsplit_v2_threshold{{metric="{m}"}} {thresholds.limit(m):g}' for m in METRICS]
    return "\n".join(lines) + "\n"


def active_alerts(check, previous: list, now: float) -> list[dict]:
    """The check's breaches as alerts (level, rule, value, limit), each keeping the time it started."""
    started = {(a.get("rule"), a.get("source")): a.get("since") for a in previous if isinstance(a, dict)}
    out = []
    for reading in check.breaches:
        key = (reading.metric, reading.source)
        out.append({"level": str(reading.level), "rule": reading.metric, "source": reading.source,
                    "value": reading.value, "limit": reading.limit, "bound": str(reading.bound),
                    "since": started.get(key) or now})
    for missing in check.missing:
        if check.policy == "fail":
            key = (missing.metric or "data", missing.source)
            out.append({"level": str(missing.level), "rule": missing.metric or "data", "source": missing.source,
                        "value": None, "limit": None, "bound": "", "why": missing.why,
                        "since": started.get(key) or now})
    return out


# ---------------------------------------------------------------- the checks, one JSON line each
# The dashboard's chart reads them: the watchdog appends one per check (checks.jsonl in state_dir).
CHECKS_MAX_BYTES = 1 << 20  # past this the file keeps its newest CHECKS_KEEP lines
CHECKS_KEEP = 2000


def check_record(now: float, generation: int, hundredths: int, check, consecutive: int,
                 thresholds: Thresholds) -> dict:
    """One check as the chart needs it: when, where, the verdict, every metric and the stage's limits."""
    return {"at": round(now, 3), "generation": generation, "stage": hundredths, "outcome": str(check.outcome),
            "consecutive": consecutive, "metrics": dict(check.metrics),
            "limits": {m: thresholds.limit(m) for m in METRICS}, "summary": check.summary()[:500]}


def append_check(path: Path, record: dict) -> None:
    """Append one record; a file past CHECKS_MAX_BYTES is cut to its newest CHECKS_KEEP lines first.
    Raises OSError (the watchdog logs it and goes on: a chart never stops a check)."""
    line = (json.dumps(record, separators=(",", ":"), allow_nan=False, default=str) + "\n").encode()
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        size = 0
    if size > CHECKS_MAX_BYTES:
        kept = path.read_bytes().splitlines(keepends=True)[-CHECKS_KEEP:]
        files.atomic_write(path, b"".join(kept) + line, mode=0o644)
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def recent_checks(path: Path, limit: int = 500) -> list[dict]:
    """The newest `limit` records, oldest first; torn or foreign lines are skipped."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - CHECKS_MAX_BYTES - (64 << 10)))
            lines = f.read().splitlines()[-limit:]
    except OSError:
        return []
    out = []
    for raw in lines:
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("at"), (int, float)) \
                and isinstance(record.get("metrics"), dict):
            out.append(record)
    return out
