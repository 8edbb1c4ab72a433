"""The promotion gate: the plan's final check before widening a rollout."""

from __future__ import annotations

import time
from dataclasses import dataclass

from . import health as health_mod
from .apply import Transaction, plan
from .config import Settings
from .errors import LbsplitError
from .model import Stage
from .watchdog import evaluate, evaluate_log, load_state


class GateRefused(LbsplitError):
    """The gate found v2 unhealthy (or the revert path broken) for the wider stage."""

    exit_code = 8


@dataclass(frozen=True)
class Item:
    name: str
    ok: bool
    detail: str
    blocking: bool = True  # False: a warning that never refuses

    def line(self) -> str:
        mark = "ok  " if self.ok else ("FAIL" if self.blocking else "warn")
        return f"[{mark}] {self.name}: {self.detail}"


def health_items(settings: Settings, target: Stage, probe=health_mod.probe) -> list[Item]:
    """v2's health now against the thresholds of the target stage."""
    health = settings.require_health()
    if health is None:
        return [Item("health", True, "no [health] section in the config: nothing to check", blocking=False)]
    thresholds = health.thresholds_for(target.hundredths)
    checks = []
    if health.uses_endpoint:
        headers = health_mod.auth_headers(health.headers, health.bearer_token_file, health.bearer_token_env)
        checks.append(evaluate(probe(health.url, health.timeout, headers), thresholds, dict(health.fields), health.no_data))
    if health.uses_log:
        checks.append(log_check(settings, thresholds, clock=time.time))
    items = []
    for check in checks:
        items += _items(check, thresholds, target, health)
    return items


def log_check(settings: Settings, thresholds, clock=time.time):
    """The access log's last window, judged like the watchdog judges it."""
    from .logsource import VariantStats, read_window, variant_of_addr

    health = settings.health
    now = clock()
    addrs = variant_of_addr(settings.v1, settings.v2)
    try:
        stats = read_window(health.access_log, thresholds.window, now, addrs).stats(now - thresholds.window, now)
    except OSError as e:
        return evaluate_log(VariantStats(), VariantStats(), thresholds, health,
                            f"log: cannot read {health.access_log}: {e.strerror}")
    return evaluate_log(stats["v1"], stats["v2"], thresholds, health)


def _items(check, thresholds, target: Stage, health) -> list[Item]:
    items = []
    for breach in check.breaches:
        if breach.startswith("log: "):
            items.append(Item("access log", False, f"{breach[5:]} (at {target.describe()})"))
    for note in check.notes:
        items.append(Item("access log", True, note, blocking=False))
    for problem in check.no_data:
        items.append(Item("health data", health.no_data != "fail", f"{problem} (no_data = \"{health.no_data}\")",
                          blocking=health.no_data == "fail"))
    from .config import METRICS

    for metric in METRICS:
        if metric not in check.metrics:
            continue
        value = check.metrics.get(metric)
        if value is None:
            continue
        limit = getattr(thresholds, metric)
        items.append(Item(metric, value <= limit, f"{value:g} (limit {limit:g} at {target.describe()})"))
    return items


def watchdog_item(settings: Settings, target: Stage, clock=time.time) -> Item:
    """Is anyone watching? A warning only: the watchdog may be a systemd service that just started."""
    health = settings.health
    if health is None:
        return Item("watchdog", True, "no [health] section: the watchdog has nothing to watch", blocking=False)
    wd = load_state(settings.state_dir / "watchdog.json")
    interval = max(60.0, health.thresholds_for(target.hundredths).check_every)
    if wd.last_check_at is None:
        return Item("watchdog", False, "has never checked v2; add the crontab line from the README", blocking=False)
    age = clock() - wd.last_check_at
    if age > 2 * interval:
        return Item("watchdog", False, f"last checked v2 {age:.0f}s ago; nobody may be watching the wider rollout",
                    blocking=False)
    return Item("watchdog", True, f"last checked v2 {age:.0f}s ago")


def revert_item(txn: Transaction) -> Item:
    """The revert config must pass nginx -t, so an emergency revert cannot be the thing that fails."""
    text = plan(txn.settings, Stage.off()).checked_text(txn.store.last_generation() + 1)
    error = txn.nginx.test_snippet(text)
    if error:
        return Item("revert config", False, f"nginx -t rejects it: {error}")
    return Item("revert config", True, "passes nginx -t")


def checklist(txn: Transaction, target: Stage, probe=health_mod.probe, clock=time.time) -> list[Item]:
    items = health_items(txn.settings, target, probe) + [revert_item(txn)]
    if txn.settings.health is not None:  # without [health] the health item already says there is nothing to watch
        items.append(watchdog_item(txn.settings, target, clock))
    return items


def precheck_for(target: Stage, force: bool, probe=health_mod.probe, clock=time.time):
    """The precheck `apply` runs under its lock: refuse a widening that the thresholds forbid."""

    def precheck(txn: Transaction) -> list[str]:
        state = txn.store.read_state()
        if state is None or not state.v2_enabled or not target.v2_enabled or target.hundredths <= state.hundredths:
            return []  # not a widening of a live rollout: nothing to gate
        items = checklist(txn, target, probe, clock)
        failing = [i for i in items if not i.ok and i.blocking]
        lines = [i.line() for i in items if not i.ok or not i.blocking]
        if failing and not force:
            raise GateRefused(
                f"refusing to widen v2 from {Stage.at(state.hundredths).describe()} to {target.describe()} "
                "(use --force to override):\n  " + "\n  ".join(i.line() for i in items)
            )
        if failing:
            lines.insert(0, "gate overridden with --force:")
        return lines

    return precheck
