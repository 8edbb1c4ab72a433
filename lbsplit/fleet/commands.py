"""The fleet's apply, revert, status and history: one desired state in etcd, every live agent follows it.

apply is two phases. (1) The new stage is written as *proposed* with a compare-and-swap on
etcd's revision (two operators racing: exactly one wins, the other gets exit 5); every live
agent validates it and says ready or why not. (2) It is committed; every agent applies it with
its local transaction and reports served. Any host failing sends the fleet back to the previous
stage. revert is one unconditional write that every agent applies.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import signal
import threading
import types
import time
from dataclasses import dataclass, replace

from .. import timing
from ..config import Settings
from ..errors import (
    ConfigError,
    EnvironmentProblem,
    GateRefused,
    Interrupted,
    LbsplitError,
    LockBusy,
    NginxTestFailed,
    NotServing,
    ReloadFailed,
)
from ..model import Stage
from ..rollout.transaction import actor, failpoint, now
from . import protocol
from .protocol import COMMITTED, PROPOSED, Desired, Report
from .store import Etcd

WAIT_POLL = 0.02
# A failed host's error names its class; the fleet command exits with that class's code.
CODES = {"ConfigError": ConfigError, "NginxTestFailed": NginxTestFailed, "ReloadFailed": ReloadFailed,
         "GateRefused": GateRefused, "LockBusy": LockBusy, "EnvironmentProblem": EnvironmentProblem}


@dataclass(frozen=True)
class Host:
    name: str
    alive: bool
    report: Report | None


def store_for(settings: Settings) -> tuple[Etcd, str, float]:
    fleet = settings.require_fleet()
    return Etcd.for_fleet(fleet), fleet.prefix, fleet.apply_timeout


def _hosts(alive_entries, report_entries) -> list[Host]:
    alive = {e.key.rsplit("/", 1)[1] for e in alive_entries}
    reports = {}
    for e in report_entries:
        try:
            reports[e.key.rsplit("/", 1)[1]] = Report.loads(e.value)
        except (ValueError, TypeError):
            continue
    return [Host(name, name in alive, reports.get(name)) for name in sorted(alive | set(reports))]


def hosts(store: Etcd, prefix: str) -> list[Host]:
    (alive, reports), _ = store.read(f"{prefix}/alive/", f"{prefix}/hosts/")
    return _hosts(alive, reports)


def _desired(entries) -> tuple[Desired | None, int]:
    return (Desired.loads(entries[0].value), entries[0].mod_revision) if entries else (None, 0)


def current(store: Etcd, prefix: str) -> tuple[Desired | None, int]:
    entry = store.get(protocol.desired_key(prefix))
    return _desired([entry] if entry else [])


def snapshot(store: Etcd, prefix: str) -> tuple[Desired | None, int, list[Host], int]:
    """The desired state (and its mod revision), every host, and the store's revision: one round trip."""
    (desired, alive, reports), revision = store.read(protocol.desired_key(prefix), f"{prefix}/alive/",
                                                     f"{prefix}/hosts/")
    return (*_desired(desired), _hosts(alive, reports), revision)


class Waker:
    """Wakes the waiting operator the moment anything under <prefix>/ changes: an etcd watch in a
    thread, on connections of its own. When the stream cannot be held, the wait polls instead."""

    FALLBACK = 0.25  # seconds between two reads even while the stream is up (a lost event costs no more)

    def __init__(self, store: Etcd, prefix: str, revision: int):
        self.event, self._stop, self.streaming = threading.Event(), threading.Event(), True
        self._store = store.twin()
        self._thread = threading.Thread(target=self._follow, args=(f"{prefix}/", revision + 1), daemon=True)
        self._thread.start()

    def _follow(self, key: str, start: int) -> None:
        try:
            for _ in self._store.watch(key, self._stop, start_revision=start):
                self.event.set()
        except LbsplitError:
            pass
        self.streaming = False

    def wait(self, timeout: float) -> None:
        if self.streaming:
            self.event.wait(min(timeout, self.FALLBACK))
        else:
            time.sleep(min(timeout, WAIT_POLL))
        self.event.clear()

    def close(self) -> None:
        self._stop.set()
        self._store.close()
        self._thread.join(timeout=1.0)


def _wait(store: Etcd, prefix: str, names: list[str], desired_id: int, done, timeout: float, waker: Waker):
    """Wait until each named host is done with `desired_id` or failed it.

    Returns (done, failed, silent, dropped, the hosts as last read)."""
    pending, ok, failed, dropped = set(names), [], {}, []
    deadline = time.monotonic() + timeout
    while True:
        all_hosts = hosts(store, prefix)
        by_name = {h.name: h for h in all_hosts}
        for name in sorted(pending):
            host = by_name.get(name)
            if host is None or not host.alive:
                dropped.append(name)  # its lease ran out: no longer a live host
                pending.discard(name)
                continue
            r = host.report
            if r is None:
                continue
            if r.error_id == desired_id:
                failed[name] = r.error or "failed"
                pending.discard(name)
            elif done(r):
                ok.append(name)
                pending.discard(name)
        left = deadline - time.monotonic()
        if not pending or left <= 0:
            return ok, failed, sorted(pending), dropped, all_hosts
        waker.wait(left)


def _error(failed: dict[str, str], silent: list[str], what: str, timeout: float) -> LbsplitError:
    parts = [f"{name}: {error}" for name, error in failed.items()]
    parts += [f"{name}: no answer within fleet.apply_timeout ({timeout:g}s)" for name in silent]
    kinds = {error.split(":", 1)[0] for error in failed.values()}
    cls = next((CODES[k] for k in ("ConfigError", "GateRefused", "NginxTestFailed", "ReloadFailed") if k in kinds),
               ReloadFailed)
    hosts_named = ", ".join([*failed, *silent])
    return cls(f"{what} failed on {hosts_named}; the fleet is back at the previous stage.\n  " + "\n  ".join(parts))


def _record(store: Etcd, prefix: str, desired: Desired, result: str, per_host: dict) -> None:
    entry = {"id": desired.id, "time": now(), "user": desired.by, "command": desired.command,
             "from": protocol.stage_of(desired.previous).describe(), "to": desired.target.describe(),
             "reason": desired.reason, "result": result, "hosts": per_host}
    store.put(protocol.history_key(prefix, desired.id), json.dumps(entry, sort_keys=True))


def _check_digests(live: list[Host]) -> None:
    digests: dict[str, list[str]] = {}
    for host in live:
        digests.setdefault(host.report.digest if host.report else "(no report yet)", []).append(host.name)
    if len(digests) > 1:
        groups = "; ".join(f"{', '.join(names)}: {d}" for d, names in sorted(digests.items()))
        raise ConfigError("fleet: the hosts do not split users alike (mode, key, fallback_key or whitelist differ), so "
                          f"a user would get another version on another load balancer; make their configs agree ({groups})")


def change(settings: Settings, stage: Stage, command: str, reason: str = "", force: bool = False,
           strict: bool = False) -> list[str]:
    """`apply`/`promote` with [fleet]: propose, wait for every live host, commit, wait; roll back on any failure."""
    store, prefix, timeout = store_for(settings)
    key = protocol.desired_key(prefix)
    now_desired, revision, all_hosts, at = snapshot(store, prefix)
    previous = now_desired.target if now_desired else Stage.off()
    if now_desired is not None and now_desired.phase == PROPOSED:
        if _age(now_desired) < timeout + STALE_AFTER:
            raise LockBusy(f"fleet change {now_desired.id} ({now_desired.target.describe()}) by {now_desired.by} since "
                           f"{now_desired.at} is still being proposed; wait for it (or `lbsplit revert`)")
        previous = protocol.stage_of(now_desired.previous)  # a proposal its command left behind: never committed
    live = [h for h in all_hosts if h.alive]
    if not live:
        raise EnvironmentProblem(f"fleet: no live agent under {prefix}; run `lbsplit agent` on every load balancer")
    _check_digests(live)
    proposal = Desired(id=(now_desired.id if now_desired else 0) + 1, stage=protocol.stage_json(stage), phase=PROPOSED,
                       previous=protocol.stage_json(previous), command=command, by=actor(), at=now(), reason=reason,
                       force=force, strict=strict)
    waker = Waker(store, prefix, at)
    try:
        return _propose_and_commit(store, prefix, key, timeout, revision, proposal, previous,
                                   [h.name for h in live], waker)
    finally:
        waker.close()


def _propose_and_commit(store: Etcd, prefix: str, key: str, timeout: float, revision: int, proposal: Desired,
                        previous: Stage, names: list[str], waker: Waker) -> list[str]:
    command, stage = proposal.command, proposal.target
    failpoint("before-propose")  # the fleet read, the compare-and-swap not yet tried
    back = replace(proposal, id=proposal.id + 1, stage=protocol.stage_json(previous), phase=COMMITTED,
                   previous=proposal.stage, command=f"abandon {command}", reason="a host refused the proposal")
    # The guard is armed before the compare-and-swap: a signal that lands just after etcd took the proposal
    # (before swap() returns) must still withdraw it, not kill the command with the proposal left behind.
    with timing.phase("fleet: proposal"), _withdrawn_if_interrupted(store, key, proposal, back) as guard:
        if not store.swap(key, proposal.dumps(), revision):
            guard.lost = True  # the value there is someone else's: never "withdraw" it
            winner, _ = current(store, prefix)
            raise LockBusy(f"another fleet change got there first: {winner.command if winner else '?'} "
                           f"({winner.target.describe() if winner else '?'}) by {winner.by if winner else '?'}; "
                           "nothing was changed by this command")
        failpoint("after-propose")  # the proposal is in etcd, no host has answered yet
        _, failed, silent, _, _ = _wait(store, prefix, names, proposal.id, lambda r: r.ready_id == proposal.id,
                                        timeout, waker)
    if failed or silent:
        _swap_or_report(store, key, proposal, back)
        _record(store, prefix, proposal, "refused", {**failed, **{n: "no answer" for n in silent}})
        raise _error(failed, silent, f"fleet {command} (proposal)", timeout)
    committed = replace(proposal, phase=COMMITTED)
    if not _swap_or_report(store, key, proposal, committed):
        raise LockBusy("the fleet's desired state changed while this change was proposed (a revert?); "
                       "nothing was committed by this command")
    done = lambda r: r.applied_id == committed.id and r.served  # noqa: E731
    with timing.phase("fleet: commit"):
        ok, failed, silent, dropped, last = _wait(store, prefix, names, committed.id, done, timeout, waker)
    if failed or silent:
        back = Desired(id=committed.id + 1, stage=protocol.stage_json(previous), phase=COMMITTED,
                       previous=committed.stage, command=f"rollback {command}", by=actor(), at=now(),
                       reason=f"change {committed.id} failed on {', '.join([*failed, *silent])}")
        _swap_or_report(store, key, committed, back)
        _wait(store, prefix, names, back.id, lambda r: r.applied_id == back.id, timeout, waker)
        _record(store, prefix, committed, "failed, rolled back",
                {**{n: "served" for n in ok}, **failed, **{n: "no answer" for n in silent}})
        _record(store, prefix, back, "rollback", {})
        raise _error(failed, silent, f"fleet {command}", timeout)
    _record(store, prefix, committed, "served by every live host",
            {**{n: "served" for n in ok}, **{n: "dropped out (lease expired)" for n in dropped}})
    return [f"fleet change {committed.id}: v2 {stage.describe()} served by {len(ok)} of {len(names)} live hosts",
            *table(last, committed)]


STALE_AFTER = 10.0  # seconds past apply_timeout after which a proposal's command is taken to be gone


def _age(desired: Desired) -> float:
    try:
        return time.time() - dt.datetime.fromisoformat(desired.at.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return float("inf")


@contextlib.contextmanager
def _withdrawn_if_interrupted(store: Etcd, key: str, proposal: Desired, back: Desired):
    """SIGINT, SIGTERM or SIGHUP while proposing: withdraw the proposal (nothing was committed), then stop."""

    def interrupt(signum, _frame):
        raise Interrupted(f"interrupted by {signal.Signals(signum).name}; the proposal was withdrawn, nothing changed")

    guard = types.SimpleNamespace(lost=False)
    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        yield guard
    except BaseException:
        if guard.lost:
            raise
        for s in previous:
            signal.signal(s, signal.SIG_IGN)  # the withdrawal itself must not be interrupted
        try:
            # Compare-and-swap on the proposal's own value: a no-op when etcd never took it.
            _swap_or_report(store, key, proposal, back)
        except LbsplitError:
            pass  # etcd away: the proposal goes stale and the next apply takes over
        raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _swap_or_report(store: Etcd, key: str, expected: Desired, new: Desired) -> bool:
    """Replace `expected` with `new` only if the desired state is still `expected`."""
    return store.swap_value(key, expected.dumps(), new.dumps())


def revert(settings: Settings, reason: str = "") -> list[str]:
    """`revert` with [fleet]: one write that every agent applies; then wait for the live hosts (for the table)."""
    store, prefix, timeout = store_for(settings)
    key = protocol.desired_key(prefix)
    now_desired, _, all_hosts, at = snapshot(store, prefix)
    previous = now_desired.target if now_desired else Stage.off()
    off = Desired(id=(now_desired.id if now_desired else 0) + 1, stage=protocol.stage_json(Stage.off()),
                  phase=COMMITTED, previous=protocol.stage_json(previous), command="revert", by=actor(), at=now(),
                  reason=reason)
    waker = Waker(store, prefix, at)
    try:
        store.put(key, off.dumps())
        names = [h.name for h in all_hosts if h.alive]
        ok, failed, silent, dropped, last = _wait(
            store, prefix, names, off.id, lambda r: r.applied_id == off.id and r.served or bool(r.override), timeout,
            waker)
    finally:
        waker.close()
    _record(store, prefix, off, "reverted" if not failed and not silent else "reverted, some hosts failed",
            {**{n: "served" for n in ok}, **failed, **{n: "no answer" for n in silent}})
    lines = [f"fleet change {off.id}: v2 off, served by {len(ok)} of {len(names)} live hosts", *table(last, off)]
    if failed or silent:
        raise ReloadFailed("\n".join(lines) + "\nfleet revert did not complete on "
                           f"{', '.join([*failed, *silent])}; run `lbsplit revert --local` there")
    return lines


def next_stage(settings: Settings) -> Stage | None:
    """The first configured stage above the fleet's desired one; None at the last stage."""
    store, prefix, _ = store_for(settings)
    desired, _ = current(store, prefix)
    now_stage = desired.target if desired else Stage.off()
    higher = [s for s in settings.stages if s > (now_stage.hundredths if now_stage.v2_enabled else -1)]
    return Stage.at(higher[0]) if higher else None


class Leadership:
    """The fleet's watchdog election: whoever creates <prefix>/watchdog under its lease leads until it stops."""

    def __init__(self, settings: Settings):
        self.store, self.prefix, _ = store_for(settings)
        fleet = settings.require_fleet()
        self.host, self.ttl = fleet.host, fleet.agent_ttl
        self.lease = 0
        self._stop = None

    def acquire(self) -> str | None:
        """None when this host now leads; else the leader's name."""
        key = protocol.watchdog_key(self.prefix)
        lease = self.store.grant(self.ttl)
        if not self.store.swap(key, self.host, 0, lease=lease):
            self.store.revoke(lease)
            entry = self.store.get(key)
            return entry.value if entry else "(a leader that just stopped)"
        self.lease = lease
        self._stop = threading.Event()

        def keep():
            while not self._stop.wait(self.ttl / 3):
                try:
                    self.store.keepalive(self.lease)
                except LbsplitError:
                    pass  # etcd away: the lease runs out and another host may lead

        threading.Thread(target=keep, daemon=True).start()
        return None

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self.lease:
            try:
                self.store.revoke(self.lease)
            except LbsplitError:
                pass
            self.lease = 0


def watchdog_action(settings: Settings):
    """The leading watchdog's revert (or step back): a fleet change, so every host moves once."""

    def act(target: Stage, reason: str) -> tuple[int, list[str]]:
        if target.v2_enabled:
            lines = change(settings, target, f"watchdog step back to {target.percent}", reason, force=True)
        else:
            lines = revert(settings, reason)
        store, prefix, _ = store_for(settings)
        desired, _ = current(store, prefix)
        return (desired.id if desired else 0), lines

    return act


COUNTS_FRESH = 5.0  # seconds: counts older than this come from an agent that stopped publishing


def fleet_log_check(settings: Settings, health):
    """The leader's nginx_log source: every live host's window counts, summed, judged as one access log."""
    from ..watch import judge
    from ..watch.logsource import VariantStats

    store, prefix, _ = store_for(settings)

    def check(thresholds, now: float):
        v1, v2, used, stale = VariantStats(), VariantStats(), [], []
        for e in store.prefix(f"{prefix}/counts/"):
            try:
                data = json.loads(e.value)
                if now - float(data["at"]) > COUNTS_FRESH:
                    stale.append(e.key.rsplit("/", 1)[1])
                    continue
                v1.merge(data["v1"])
                v2.merge(data["v2"])
                used.append(e.key.rsplit("/", 1)[1])
            except (ValueError, KeyError, TypeError, IndexError, AttributeError):
                continue
        problem = None if used else "no load balancer published access-log counts (are the agents running?)"
        result = judge.evaluate_log(v1, v2, thresholds, health, problem)
        note = f"fleet access logs: {len(used)} hosts" + (f", stale: {', '.join(stale)}" if stale else "")
        return judge.Check(result.outcome, result.readings, result.missing, result.metrics, result.policy,
                           result.notes + (note,))

    return check


def lead_and_watch(settings: Settings, health, mode: str, echo, chatty: bool) -> int:
    """`watchdog` with [fleet]: run only while leading; the leader's revert is a fleet revert."""
    from ..watch.watchdog import Watchdog

    while True:
        leadership = Leadership(settings)
        failpoint("before-lead")  # about to stand for the fleet's watchdog election
        leader = leadership.acquire()
        if leader is None:
            try:
                echo(f"{leadership.host} leads the fleet's watchdog") if chatty else None
                log_check = fleet_log_check(settings, health) if health.uses_log else None
                return Watchdog(settings, health, echo=echo, chatty=chatty, act=watchdog_action(settings),
                                log_check=log_check).run(mode)
            finally:
                leadership.release()
        if mode != "loop":
            echo(f"{leader} leads the fleet's watchdog; this one stands down")
            return 0
        time.sleep(max(1.0, leadership.ttl / 2))  # stand by: take over when the leader's lease runs out


def table(all_hosts: list[Host], desired: Desired | None) -> list[str]:
    rows = [f"{'host':<16} {'alive':<6} {'change':>6} {'stage':<8} {'gen':>5} {'served':<7} note"]
    for h in all_hosts:
        r = h.report
        if r is None:
            rows.append(f"{h.name:<16} {'yes' if h.alive else 'no':<6} {'-':>6} {'-':<8} {'-':>5} {'-':<7} no report yet")
            continue
        note = r.override or (r.error if r.error and r.error_id == (desired.id if desired else -1) else "")
        if desired is not None and not note and r.applied_id != desired.id:
            note = f"behind the desired change {desired.id}"
        if not h.alive:
            note = f"agent not seen for {time.time() - r.seen:.0f}s (lease expired)" + (f"; {note}" if note else "")
        rows.append(f"{h.name:<16} {'yes' if h.alive else 'no':<6} {r.applied_id:>6} "
                    f"{protocol.stage_of(r.stage).describe():<8} {r.generation if r.generation is not None else '-':>5} "
                    f"{'yes' if r.served else 'NO':<7} {note}")
    return rows


def status(settings: Settings) -> dict:
    store, prefix, _ = store_for(settings)
    desired, _ = current(store, prefix)
    all_hosts = hosts(store, prefix)
    behind = [h.name for h in all_hosts if h.alive and desired is not None and desired.phase == COMMITTED and not (
        h.report and h.report.applied_id == desired.id and h.report.served and not h.report.override)]
    digests = {h.report.digest for h in all_hosts if h.alive and h.report}
    return {"prefix": prefix, "desired": desired.__dict__ if desired else None,
            "hosts": [{"host": h.name, "alive": h.alive, **(h.report.__dict__ if h.report else {})} for h in all_hosts],
            "not_serving_desired": behind, "digests_agree": len(digests) <= 1,
            "lines": [f"desired:  change {desired.id}, v2 {desired.target.describe()} ({desired.phase}) by {desired.by} "
                      f"at {desired.at}" if desired else "desired:  nothing yet", *table(all_hosts, desired)]
            + ([] if len(digests) <= 1 else ["WARNING: the live hosts do not split users alike (digests differ)"])}


def require_serving(s: dict) -> None:
    if s["not_serving_desired"]:
        raise NotServing(f"fleet: {', '.join(s['not_serving_desired'])} do not serve the desired state")


def history(settings: Settings) -> list[dict]:
    store, prefix, _ = store_for(settings)
    out = []
    for e in store.prefix(f"{prefix}/history/"):
        try:
            out.append(json.loads(e.value))
        except ValueError:
            continue
    return out

