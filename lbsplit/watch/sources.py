"""Reading v2's health from its sources and handing the numbers to the judge.

The watchdog, the promotion gate and `report` all measure through here: the health
endpoint (one probe), and nginx's access log (a window read backwards from its end, or
the watchdog's incremental read from a saved cursor).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from ..config import HealthSettings, Settings
from ..model import Thresholds
from ..errors import ConfigError, EnvironmentProblem
from . import endpoint, judge
from .logsource import Cursor, VariantStats, Window, read_appended, read_window, variant_of_addr

FUTURE_SKEW = 5.0  # seconds a log line may be stamped ahead of this clock (nginx on another clock, rounding)


def endpoint_check(health: HealthSettings, thresholds: Thresholds, probe=endpoint.probe,
                   hundredths: int = 0) -> judge.Check:
    """Probe the health endpoint once and judge the answer."""
    headers = endpoint.auth_headers(health.headers, health.bearer_token_file, health.bearer_token_env)
    sample = probe(health.url, health.timeout, headers)
    return judge.evaluate(sample.payload, sample.error, thresholds, dict(health.fields), health.no_data,
                          dict(health.levels), health.custom, dict(health.scales), hundredths)


def window_stats(settings: Settings, health: HealthSettings, seconds: float, now: float) -> dict[str, VariantStats]:
    """v1's and v2's stats over the last `seconds` of the access log; OSError when it cannot be read."""
    addrs = variant_of_addr(settings.v1, settings.v2)
    return read_window(health.access_log, seconds, now, addrs).stats(now - seconds, now)


def log_window_check(settings: Settings, health: HealthSettings, thresholds: Thresholds, now: float) -> judge.Check:
    """The access log's last window (thresholds.window seconds), judged."""
    try:
        stats = window_stats(settings, health, thresholds.window, now)
    except OSError as e:
        return judge.evaluate_log(VariantStats(), VariantStats(), thresholds, health,
                                  f"cannot read {health.access_log}: {e.strerror}")
    return judge.evaluate_log(stats["v1"], stats["v2"], thresholds, health)


def check_now(settings: Settings, health: HealthSettings, thresholds: Thresholds, probe=endpoint.probe,
              clock=time.time, use_log: bool = True, hundredths: int = 0) -> judge.Check:
    """Every configured source, judged and combined (the gate's view of v2 right now at stage `hundredths`)."""
    checks = []
    if health.uses_endpoint:
        checks.append(endpoint_check(health, thresholds, probe, hundredths))
    if health.uses_prometheus:
        from . import prometheus  # noqa: PLC0415 - only with source = "prometheus" (requests)

        checks.append(prometheus.check(health, thresholds, hundredths))
    if health.uses_log and use_log:
        checks.append(log_window_check(settings, health, thresholds, clock()))
    return judge.combine(checks)


@dataclass
class LogProgress:
    """The watchdog's place in the access log between runs: the cursor and the window's rows."""

    cursor: dict | None
    window: dict


def incremental_log_check(settings: Settings, health: HealthSettings, thresholds: Thresholds,
                          progress: LogProgress, now: float) -> tuple[judge.Check, LogProgress]:
    """Read what nginx appended since `progress` into the window; judge the window."""
    known = {"inode", "offset", "path", "tail"}
    cursor = Cursor(**{k: v for k, v in progress.cursor.items() if k in known}) if progress.cursor else None
    window = Window(progress.window)
    oldest, newest = now - thresholds.window, now + FUTURE_SKEW
    addrs = variant_of_addr(settings.v1, settings.v2)
    counted = [0, 0]  # lines used, lines skipped

    def fold(text: str) -> None:
        used, bad = window.add_text(text, addrs, oldest, newest)
        counted[0] += used
        counted[1] += bad

    try:
        cursor, notes = read_appended(health.access_log, cursor, fold)
    except FileNotFoundError:
        return judge.evaluate_log(VariantStats(), VariantStats(), thresholds, health,
                                  f"{health.access_log} is missing"), progress
    except OSError as e:
        return judge.evaluate_log(VariantStats(), VariantStats(), thresholds, health,
                                  f"cannot read {health.access_log}: {e.strerror}"), progress
    window.prune(oldest, newest)
    stats = window.stats(oldest, now)
    used, bad = counted
    problem = None
    if bad:
        notes = [*notes, f"{bad} of {used + bad} new lines skipped: not in lbsplit's log format, or stamped more than "
                         f"{FUTURE_SKEW:g}s in the future"]
        if not used and stats["v2"].requests == 0 and stats["v1"].requests == 0:
            problem = format_problem(settings, health.access_log, bad)
    check = judge.evaluate_log(stats["v1"], stats["v2"], thresholds, health, problem)
    if notes:
        check = judge.Check(check.outcome, check.readings, check.missing, check.metrics, check.policy,
                            check.notes + tuple(notes))
    return check, LogProgress(asdict(cursor), window.to_json())


def format_problem(settings: Settings, log, bad: int) -> str:
    """Why no line of the log could be read, in one line: the format nginx writes it with (from nginx -T)."""
    from ..nginx.process import Nginx  # noqa: PLC0415 - only an unreadable log asks nginx -T for its format

    dump = Nginx(settings.nginx).dump()
    formats = [f for f in (dump.formats_of(log) if dump else []) if not f.startswith("lbsplit ")]
    where = f"nginx writes it with format {', '.join(formats[:3])}" if formats else \
        "is `access_log ... lbsplit;` the line nginx writes it with?"
    return (f"no line of {log} is in lbsplit's log format ({bad} lines skipped); {where}: the watchdog reads only "
            f"`access_log {log} lbsplit;` (the format lbsplit.conf defines)")


def report(settings: Settings, seconds: float, clock=time.time) -> dict:
    """`lbsplit report`: v1 and v2 side by side over the last `seconds` of the access log."""
    health = settings.require_health()
    if health is None or health.access_log is None:
        raise ConfigError("health.access_log: not set; add it (and `access_log PATH lbsplit;` in nginx) to use report")
    now = clock()
    try:
        stats = window_stats(settings, health, seconds, now)
    except OSError as e:
        raise EnvironmentProblem(f"health.access_log: cannot read {health.access_log}: {e.strerror}") from None
    variants = {v: st.as_dict() for v, st in sorted(stats.items())}
    return {
        "window_seconds": seconds,
        "log": str(health.access_log),
        "variants": variants,
        "not_enough_data": [v for v, row in variants.items() if row["requests"] < health.min_requests],
        "min_requests": health.min_requests,
    }
