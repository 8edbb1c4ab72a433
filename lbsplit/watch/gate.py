"""The promotion gate: the checklist a widening must pass, handed to the transaction as its precheck.

The gate lists items (v2's health as the judge sees it, the revert path, the watchdog,
the live stage's soak time, the next stage's manual checks, the pre_promote hook) and
refuses a widening when a blocking item fails; it compares no threshold itself. The
commands that run the transaction with it are in app.local.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from ..config import Settings
from ..errors import GateRefused, LbsplitError
from ..model import CRON_PERIOD, FINAL_METRIC_ITEMS, WATCH_GAP, Bound, Level, NoData, Runtime, Stage, format_span
from ..nginx.dialect import carry_sizing, live_stage
from ..nginx.process import lua_modules
from ..rollout import files
from ..rollout.planning import plan
from ..rollout.state import StateStore
from ..rollout.transaction import Transaction
from ..stamps import epoch

if TYPE_CHECKING:
    from .judge import Check

# The health sources, hooks and notifications load when a command needs them: a percent change
# with no [health], hooks or notifications pays no start-up time for them.

REVERT_CHECKED = "revert-checked"  # in state_dir: the revert config and nginx binary that last passed
SITE_COPY = "site-copy.json"  # in state_dir: the site's flattened config and the files it was made from


@dataclass(frozen=True)
class Item:
    name: str
    ok: bool
    detail: str
    blocking: bool = True  # False: a warning that never refuses

    def line(self) -> str:
        mark = "ok  " if self.ok else ("FAIL" if self.blocking else "warn")
        return f"[{mark}] {self.name}: {self.detail}"


def items_of(check: Check, target: Stage) -> list[Item]:
    """The judge's verdict as checklist items."""
    from . import judge  # noqa: PLC0415 - only a gate with [health] judges
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


def health_items(settings: Settings, target: Stage, probe=None, clock=time.time,
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
        # nothing was checked: a warning, never an ok
        items.append(Item("access log", False, "v2 gets no traffic yet, so the access log cannot judge it",
                          blocking=False))
    if health.uses_endpoint or health.uses_prometheus or use_log:
        from . import endpoint, sources  # noqa: PLC0415 - only a gate with [health] loads the sources and requests

        check = sources.check_now(settings, health, thresholds, probe or endpoint.probe, clock, use_log=use_log,
                                  hundredths=target.hundredths)
        items += items_of(check, target)
    return items


def watchdog_item(settings: Settings, target: Stage, clock=time.time, state=None) -> Item:
    """Is anyone watching? While v2 is on and has been for a few check intervals, a watchdog that never checked
    this stage or stopped blocks a widening (--force overrides): nobody would revert the wider stage. Right
    after a change it only warns: cron may not have run yet."""
    from .memory import load_state  # noqa: PLC0415 - only the health and watchdog items need it

    health = settings.health
    wd = load_state(StateStore(settings.state_dir).watchdog_path)
    live = state.hundredths if state is not None and state.v2_enabled else target.hundredths
    interval = max(CRON_PERIOD, health.thresholds_for(live).check_every)
    applied = epoch(state.applied_at) if state is not None and state.v2_enabled else None
    settled = applied is not None and clock() - applied > WATCH_GAP * interval
    checked_here = wd.last_check_at is not None and (state is None or wd.watched_generation in (None, state.generation))
    fix = "run `lbsplit watchdog` from cron every minute (README: The watchdog)"
    if wd.last_check_at is None or (settled and not checked_here):
        what = "has never checked v2" if wd.last_check_at is None else f"has not checked v2 at {state.stage_text}"
        return Item("watchdog", False, f"{what}; {fix}", blocking=settled)
    age = clock() - wd.last_check_at
    if age > 2 * interval:
        return Item("watchdog", False, f"last checked v2 {format_span(age)} ago; nobody is watching the rollout "
                                       f"now: {fix}", blocking=settled)
    return Item("watchdog", True, f"last checked v2 {age:.0f}s ago")


def site_copy(txn: Transaction) -> str:
    """The site's flattened config (see nginx.flatten), kept in state_dir while every file it was made from
    is unchanged: a widening then skips crossplane's parse of the whole config. Raises CannotFlatten."""
    from ..nginx.flatten import SiteCopy  # noqa: PLC0415 - only the revert check needs it

    kept = txn.store.dir / SITE_COPY
    try:
        remembered = SiteCopy.loads((files.read_bytes(kept) or b"").decode("utf-8", errors="replace"))
    except LbsplitError:
        remembered = None
    if remembered is not None and txn.nginx.site_copy_is_current(remembered):
        return remembered.text
    made = txn.nginx.site_copy()
    try:
        files.atomic_write(kept, made.dumps())
    except LbsplitError:
        pass  # only a lost shortcut
    return made.text


def revert_item(txn: Transaction) -> Item:
    """The revert config must pass nginx -t, so an emergency revert cannot be the thing that fails.

    It is checked inside the site's whole config (flattened, with lbsplit.conf's include pointed at the
    revert text; the live file is never touched), so the site's own log formats, maps and rules are in
    it. When that copy cannot judge (it cannot be built, or nginx -t rejects it even with the live file),
    the revert config is checked alone in a private minimal config, and the item says why. A pass is
    remembered for the revert text, the site's config and the nginx binary: the next widening with none
    of them changed skips the extra nginx -t.
    """
    from ..nginx.flatten import CannotFlatten  # noqa: PLC0415 - only the revert check needs it

    lua = txn.settings.nginx.runtime == Runtime.LUA
    live = (files.read_bytes(txn.live) or b"").decode("utf-8", errors="replace")
    if lua and live_stage(live[:1 << 16]):
        return Item("revert config", True, "lua runtime: a revert sets v2 off live, with no nginx -t and no reload")
    prepared = plan(txn.settings, Stage.off(), remember=True)
    text = carry_sizing(live, prepared.text(0))  # what a revert would install
    try:
        copy, alone = site_copy(txn), None
    except CannotFlatten as e:
        copy, alone = None, str(e)
    key = hashlib.sha256(f"{txn.nginx.identity()}\0{text}\0{copy or ''}".encode()).hexdigest()
    where = "inside your nginx config" if copy is not None else "on its own"
    marker = txn.store.dir / REVERT_CHECKED
    try:
        if copy is not None and (files.read_bytes(marker) or b"").decode() == key:
            # the same bytes passed the structure check and nginx -t before
            return Item("revert config", True, "passes nginx -t inside your nginx config (unchanged since it last "
                                               "passed)")
    except LbsplitError:
        pass
    prepared.checked_text(0)
    error = None
    if copy is not None:
        try:
            error = txn.nginx.test_in_site(text, copy)
        except CannotFlatten as e:
            copy, alone, where = None, str(e), "on its own"
    if copy is None:
        error = txn.nginx.test_snippet(text, lua_modules() if lua else ())
    if error:
        return Item("revert config", False, f"nginx -t rejects it {where}: {error}")
    if alone:  # a pass on its own is not remembered: whether the site's copy can judge may change next time
        return Item("revert config", True, f"passes nginx -t on its own (not inside your config: {alone})")
    try:
        files.atomic_write(marker, key)
    except LbsplitError:
        pass  # only a lost shortcut
    return Item("revert config", True, f"passes nginx -t {where}")


def clean_time(settings: Settings, state, now: float) -> float | None:
    """Watched seconds at the live stage with no P1/P2 breach: only time between the watchdog's clean checks
    counts (see judge.watched), never time nobody watched; at most the time since the apply or last breach."""
    if state is None or not state.v2_enabled:
        return None
    since = epoch(state.applied_at)
    if since is None:
        return None
    from .memory import load_state  # noqa: PLC0415 - only the health and watchdog items need it

    wd = load_state(StateStore(settings.state_dir).watchdog_path)
    if wd.last_breach_at is not None and wd.last_breach_generation == state.generation:
        since = max(since, wd.last_breach_at)
    if settings.health is None:
        return now - since  # nothing to watch with: wall time, and the soak item says so
    if wd.watched_generation != state.generation or not isinstance(wd.watched_s, (int, float)):
        return 0.0
    return max(0.0, min(float(wd.watched_s), now - since))


def unwatched_note(settings: Settings, state, now: float) -> str:
    """"" while the watchdog checks the live stage; else why the soak clock stands still."""
    from .memory import load_state  # noqa: PLC0415 - only the health and watchdog items need it

    if settings.health is None or state is None or not state.v2_enabled:
        return ""
    wd = load_state(StateStore(settings.state_dir).watchdog_path)
    interval = max(CRON_PERIOD, settings.health.thresholds_for(state.hundredths).check_every)
    if wd.last_check_at is None or wd.watched_generation != state.generation:
        return "the watchdog has not checked this stage yet"
    age = now - wd.last_check_at
    if age > WATCH_GAP * interval:
        return f"the watchdog stopped {format_span(age)} ago"
    return ""


def soak_item(settings: Settings, state, now: float, strict: bool) -> Item | None:
    """Has the live stage been clean for its soak time? Refuses in strict mode, warns otherwise."""
    need = settings.plan.soak_for(state.hundredths) if state is not None and state.v2_enabled else 0.0
    if need <= 0:
        return None
    clean = clean_time(settings, state, now) or 0.0
    ok = clean >= need
    note = unwatched_note(settings, state, now)
    watched = "watched time only" if settings.health is not None else "wall time: no [health] section watches it"
    detail = f"clean for {format_span(clean)} of {format_span(need)} at {state.stage_text}, {watched}" + (
        f"; {note}, so the clock stands still" if note else "")
    if not ok:
        detail += " (promote waits; a person's `apply` proceeds unless plan.enforce_soak)" if strict else \
            " (proceeding: an explicit apply; set plan.enforce_soak = true to refuse)"
    return Item("soak", ok, detail, blocking=strict)


def confirmations(store: StateStore, generation: int | None, target: Stage) -> dict[str, dict]:
    """Checks confirmed for `target` while the live generation was `generation`: item -> history entry."""
    found = {}
    for entry in store.read_history():
        if entry.get("command") == "confirm" and entry.get("generation") == generation \
                and entry.get("stage") == target.percent:
            found[entry.get("item")] = entry
    return found


def check_items(settings: Settings, state, target: Stage, strict: bool) -> list[Item]:
    """The manual checks `target` requires: confirmed (by whom, when) or still to do."""
    required = settings.plan.checks_for(target.hundredths)
    if not required:
        return []
    done = confirmations(StateStore(settings.state_dir), state.generation if state else None, target)
    items = []
    for name in required:
        entry = done.get(name)
        if entry:
            items.append(Item(f"check: {name}", True, f"confirmed by {entry.get('user')} at {entry.get('time')}"))
        else:
            key = name not in settings.plan.advisory  # the plan's key column: an advisory check only warns
            items.append(Item(f"check: {name}", False, f"to do: lbsplit promote --confirm \"{name}\""
                              + ("" if key else " (not key: a warning, never a refusal)"), blocking=strict and key))
    return items


def checklist(txn: Transaction, target: Stage, probe=None, clock=time.time, strict: bool = True) -> list[Item]:
    """Everything the gate weighs for `target`; `strict` (promote): soak and manual checks refuse too."""
    state = txn.store.read_state_or_none()
    serving = state is not None and state.v2_enabled
    items = health_items(txn.settings, target, probe, clock, v2_serving=serving) + [revert_item(txn)]
    if txn.settings.health is not None:  # without [health] the health item already says there is nothing to watch
        items.append(watchdog_item(txn.settings, target, clock, state))
    soak = soak_item(txn.settings, state, clock(), strict)
    if soak is not None:
        items.append(soak)
    return items + check_items(txn.settings, state, target, strict) + final_items(txn.settings, target)


def preview(settings: Settings, target: Stage, probe=None, clock=time.time) -> list[Item]:
    """promote's checklist for `target` without the lock, for a reader such as the dashboard: everything but
    the revert config's nginx -t (that writes a check copy; `lbsplit check` runs it)."""
    state = StateStore(settings.state_dir).read_state_or_none()
    serving = state is not None and state.v2_enabled
    items = health_items(settings, target, probe, clock, v2_serving=serving)
    if settings.health is not None:
        items.append(watchdog_item(settings, target, clock, state))
    soak = soak_item(settings, state, clock(), True)
    if soak is not None:
        items.append(soak)
    return items + check_items(settings, state, target, True) + final_items(settings, target)


def final_items(settings: Settings, target: Stage) -> list[Item]:
    """Before 100%: the plan's final-check items that need the user's own metrics and have none configured,
    as warnings, so a user sees all ten items of the plan's list, not only the covered ones."""
    if target.hundredths != 10000 or settings.health is None:
        return []
    return [Item(f"final check: {item}", False, f"not configured: add a [[health.metrics]] entry with name = "
                                               f"\"{metric}\" and {bound}", blocking=False)
            for item, metric, bound in missing_final_metrics(settings)]


def missing_final_metrics(settings: Settings) -> list[tuple[str, str, str]]:
    names = {c.name for c in settings.health.custom} if settings.health is not None else set()
    return [entry for entry in FINAL_METRIC_ITEMS if entry[1] not in names]


def is_widening(current: Stage | None, target: Stage) -> bool:
    """More users on v2 than now: from off (or nothing) to on counts too."""
    if not target.v2_enabled:
        return False
    if current is None or not current.v2_enabled:
        return True
    return target.hundredths > current.hundredths


def precheck_for(target: Stage, force: bool, probe=None, clock=time.time, strict: bool = False):
    """The precheck `apply` runs under its lock: refuse a widening that the thresholds (or, when
    strict, the soak time and manual checks) forbid."""

    def precheck(txn: Transaction) -> list[str]:
        state = txn.store.read_state_or_none()
        current = state.stage if state else None
        if not is_widening(current, target):
            return []
        items = checklist(txn, target, probe, clock, strict=strict or txn.settings.plan.enforce_soak)
        if not [i for i in items if not i.ok and i.blocking]:
            from . import hooks  # noqa: PLC0415 - only a widening that passed its items runs the hook

            smoke = hooks.run(txn.settings, "pre_promote", {"stage": target.percent, "generation": state.generation
                                                            if state else "", "from": current.percent if current
                                                            and current.v2_enabled else "off", "reason": txn.reason})
            if smoke is not None:
                items.append(Item("pre_promote hook", smoke.ok, "passed" if smoke.ok else smoke.describe()))
        failing = [i for i in items if not i.ok and i.blocking]
        lines = [i.line() for i in items if not i.ok or not i.blocking]
        if failing and not force:
            raise GateRefused(
                f"refusing to widen v2 from {current.describe() if current else 'nothing'} to {target.describe()} "
                "(use --force to override):\n  " + "\n  ".join(i.line() for i in items),
                {"from": current.describe() if current else "nothing", "to": target.describe(),
                 "items": [asdict(i) for i in items]},
            )
        if failing:
            lines.insert(0, "gate overridden with --force:")
            txn.forced = [i.line() for i in failing]
        return lines

    return precheck


def refuses(items: list[Item]) -> bool:
    return any(not i.ok and i.blocking for i in items)
