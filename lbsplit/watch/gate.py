"""The promotion gate: the plan's final check before widening a rollout.

It lists items (v2's health as the judge sees it, the revert path, the watchdog) and
refuses a widening when a blocking item fails. It compares no threshold itself.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from ..config import Settings
from ..errors import GateRefused, LbsplitError
from ..model import Bound, Level, NoData, Stage
from ..rollout import files
from ..rollout.state import StateStore
from ..rollout.transaction import Outcome, Transaction, plan
from . import endpoint, judge, sources
from .memory import load_state

REVERT_CHECKED = "revert-checked"  # in state_dir: the revert config and nginx binary that last passed


@dataclass(frozen=True)
class Item:
    name: str
    ok: bool
    detail: str
    blocking: bool = True  # False: a warning that never refuses

    def line(self) -> str:
        mark = "ok  " if self.ok else ("FAIL" if self.blocking else "warn")
        return f"[{mark}] {self.name}: {self.detail}"


def items_of(check: judge.Check, target: Stage) -> list[Item]:
    """The judge's verdict as checklist items."""
    at = f"at {target.describe()}"
    items = []
    for reading in check.readings:
        name = "access log" if reading.source == judge.LOG else reading.metric
        limit = "v1 + margin" if reading.against == judge.BASELINE else ("limit" if reading.bound == Bound.MAX else "min")
        level = "" if reading.level == Level.P1 else f", {reading.level}"
        # P1 and P2 hold a promotion; P3 only informs
        items.append(Item(name, reading.ok, f"{reading.metric + ' ' if name != reading.metric else ''}"
                                            f"{reading.value:.4g} ({limit} {reading.limit:.4g} {at}{level})",
                          blocking=reading.level != Level.P3))
    for note in check.notes:
        items.append(Item("access log", True, note, blocking=False))
    failing = check.policy == NoData.FAIL
    for missing in check.missing:
        blocking = failing and missing.level != Level.P3
        items.append(Item("health data", not blocking, f"{missing.text()} (no_data = \"{check.policy}\")",
                          blocking=blocking))
    return items


def health_items(settings: Settings, target: Stage, probe=endpoint.probe, clock=time.time,
                 v2_serving: bool = True) -> list[Item]:
    """v2's health now against the thresholds of the target stage.

    While v2 is off nginx sends it no traffic, so its access log cannot judge it yet:
    then only the endpoint counts, and the log is mentioned.
    """
    health = settings.require_health()
    if health is None:
        return [Item("health", True, "no [health] section in the config: nothing to check", blocking=False)]
    thresholds = health.thresholds_for(target.hundredths)
    items = []
    use_log = health.uses_log and v2_serving
    if health.uses_log and not v2_serving:
        items.append(Item("access log", True, "v2 gets no traffic yet, so the access log cannot judge it",
                          blocking=False))
    if health.uses_endpoint or use_log:
        check = sources.check_now(settings, health, thresholds, probe, clock, use_log=use_log,
                                  hundredths=target.hundredths)
        items += items_of(check, target)
    return items


def watchdog_item(settings: Settings, target: Stage, clock=time.time) -> Item:
    """Is anyone watching? A warning only: the watchdog may be a systemd service that just started."""
    health = settings.health
    wd = load_state(StateStore(settings.state_dir).watchdog_path)
    interval = max(judge.CRON_PERIOD, health.thresholds_for(target.hundredths).check_every)
    if wd.last_check_at is None:
        return Item("watchdog", False, "has never checked v2; run `lbsplit watchdog` from cron every minute "
                                       "(README: The watchdog)", blocking=False)
    age = clock() - wd.last_check_at
    if age > 2 * interval:
        return Item("watchdog", False, f"last checked v2 {age:.0f}s ago; nobody may be watching the wider rollout",
                    blocking=False)
    return Item("watchdog", True, f"last checked v2 {age:.0f}s ago")


def revert_item(txn: Transaction) -> Item:
    """The revert config must pass nginx -t, so an emergency revert cannot be the thing that fails.

    The check runs the revert config alone in a private minimal nginx config, so its verdict
    depends only on that text and the nginx binary: a pass is remembered for both, and the
    next widening with neither changed skips the extra nginx -t.
    """
    text = plan(txn.settings, Stage.off(), remember=True).checked_text(0)
    key = hashlib.sha256(f"{txn.nginx.identity()}\0{text}".encode()).hexdigest()
    marker = txn.store.dir / REVERT_CHECKED
    try:
        if (files.read_bytes(marker) or b"").decode() == key:
            return Item("revert config", True, "passes nginx -t (unchanged since it last passed)")
    except LbsplitError:
        pass
    error = txn.nginx.test_snippet(text)
    if error:
        return Item("revert config", False, f"nginx -t rejects it: {error}")
    try:
        files.atomic_write(marker, key)
    except LbsplitError:
        pass  # only a lost shortcut
    return Item("revert config", True, "passes nginx -t")


def checklist(txn: Transaction, target: Stage, probe=endpoint.probe, clock=time.time) -> list[Item]:
    state = txn.store.read_state_or_none()
    serving = state is not None and state.v2_enabled
    items = health_items(txn.settings, target, probe, clock, v2_serving=serving) + [revert_item(txn)]
    if txn.settings.health is not None:  # without [health] the health item already says there is nothing to watch
        items.append(watchdog_item(txn.settings, target, clock))
    return items


def is_widening(current: Stage | None, target: Stage) -> bool:
    """More users on v2 than now: from off (or nothing) to on counts too."""
    if not target.v2_enabled:
        return False
    if current is None or not current.v2_enabled:
        return True
    return target.hundredths > current.hundredths


def precheck_for(target: Stage, force: bool, probe=endpoint.probe, clock=time.time):
    """The precheck `apply` runs under its lock: refuse a widening that the thresholds forbid."""

    def precheck(txn: Transaction) -> list[str]:
        state = txn.store.read_state_or_none()
        current = state.stage if state else None
        if not is_widening(current, target):
            return []
        items = checklist(txn, target, probe, clock)
        failing = [i for i in items if not i.ok and i.blocking]
        lines = [i.line() for i in items if not i.ok or not i.blocking]
        if failing and not force:
            raise GateRefused(
                f"refusing to widen v2 from {current.describe() if current else 'nothing'} to {target.describe()} "
                "(use --force to override):\n  " + "\n  ".join(i.line() for i in items)
            )
        if failing:
            lines.insert(0, "gate overridden with --force:")
        return lines

    return precheck


def next_stage(settings: Settings) -> Stage | None:
    """The first configured stage above the live one; None at the last stage."""
    state = StateStore(settings.state_dir).read_state_or_none()
    current = state.hundredths if state and state.v2_enabled else -1
    higher = [s for s in settings.stages if s > current]
    return Stage.at(higher[0]) if higher else None


def _last_stage_note(settings: Settings) -> str:
    return f"v2 is at the last stage ({Stage.at(settings.stages[-1]).describe()}): nothing to promote"


def apply(settings: Settings, stage: Stage, reason: str = "", force: bool = False, command: str | None = None):
    """`lbsplit apply` / `promote`: the transaction, with the gate as its precheck."""
    txn = Transaction(settings, command or f"apply {stage.percent}", reason)
    return txn.run(stage, precheck=precheck_for(stage, force))


def promote(settings: Settings, reason: str = "", force: bool = False):
    """`lbsplit promote`: apply the next stage of `stages` through the gate (nothing at the last stage)."""
    stage = next_stage(settings)
    if stage is None:
        state = StateStore(settings.state_dir).read_state_or_none()
        return Outcome(state.generation if state else 0, state.stage if state else Stage.off(), changed=False,
                       reloaded=False, messages=[_last_stage_note(settings)])
    return apply(settings, stage, reason, force, command=f"promote {stage.percent}")


def check(settings: Settings, percent: Stage | None) -> tuple[Stage | None, list[Item]]:
    """`lbsplit check`: the checklist for `percent` (default: the next stage), under the lock, after repair.

    At the last stage with no percent given there is nothing to check: (None, [])."""
    stage = percent if percent is not None else next_stage(settings)
    if stage is None:
        return None, []
    txn = Transaction(settings, "check")
    txn.store.ensure()
    with txn.lock():
        txn.repair()
        return stage, checklist(txn, stage)


def refuses(items: list[Item]) -> bool:
    return any(not i.ok and i.blocking for i in items)
