"""The fleet's apply, revert, status, history, forget and watchdog election: one desired state in etcd.

Every host that has reported is a *member* until `lbsplit forget`; a member whose agent's lease
lapsed is *unreachable*, never gone. A command exits 0 only when every member serves what it
claims, checked against what each host's nginx answers (stage and generation), not against a
remembered id.

apply is two phases. (1) The new stage is written as *proposed* with a compare-and-swap on
etcd's revision (two operators racing: exactly one wins, the other gets exit 5), under a lease
of the proposing command: when that command stops keeping it alive, etcd (not a wall clock)
says the proposal is stale. Every member validates it and says ready or why not. (2) It is
committed; every member applies it with its local transaction and reports served. Any member
failing, or becoming unreachable, sends the fleet back to the previous stage, with no gate on
the way back. revert is one write that every reachable member applies; unreachable members are
named with what they last served (exit 12).
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
import types
from dataclasses import dataclass, replace

from .. import model, timing
from ..config import Settings
from ..errors import (
    ConfigError,
    EnvironmentProblem,
    ExitCode,
    Interrupted,
    LbsplitError,
    LockBusy,
    NotLeader,
    NotServing,
    Unreachable,
    from_data,
)
from ..model import Change, Stage
from ..rollout.state import State
from ..rollout.transaction import failpoint
from ..stamps import actor, now
from . import protocol
from .protocol import COMMITTED, PROPOSED, Desired, Member, Report
from .store import Entry, Etcd, Fence

WAIT_POLL = 0.02
PROPOSER_TTL = 5  # seconds etcd keeps a proposing command's lease after that command stops renewing it
# When several members fail, the fleet command exits with the most telling of their codes.
PRIORITY = (ExitCode.BAD_INPUT, ExitCode.GATE_REFUSED, ExitCode.NGINX_TEST_FAILED, ExitCode.RELOAD_FAILED,
            ExitCode.NOT_SERVING, ExitCode.UNREACHABLE, ExitCode.LOCK_BUSY, ExitCode.ENVIRONMENT)


def store_for(settings: Settings) -> tuple[Etcd, str, float]:
    fleet = settings.require_fleet()
    return Etcd.for_fleet(fleet), fleet.prefix, fleet.apply_timeout


def _members(alive_entries: list[Entry], report_entries: list[Entry]) -> list[Member]:
    alive = {protocol.host_of(e.key): e.lease for e in alive_entries}
    reports = {}
    for e in report_entries:
        try:
            reports[protocol.host_of(e.key)] = Report.loads(e.value)
        except (ValueError, TypeError):
            continue
    return protocol.members(alive, reports)


def members(store: Etcd, prefix: str) -> list[Member]:
    (alive, reports), _ = store.read(protocol.alive_dir(prefix), protocol.hosts_dir(prefix))
    return _members(alive, reports)


def _desired(entries: list[Entry]) -> tuple[Desired | None, int]:
    if not entries:
        return None, 0
    try:
        return Desired.loads(entries[0].value), entries[0].mod_revision
    except (ValueError, TypeError):
        raise EnvironmentProblem(f"fleet: {entries[0].key} does not hold lbsplit's desired state; "
                                 "run `lbsplit revert` to write a fresh one") from None


def current(store: Etcd, prefix: str) -> tuple[Desired | None, int]:
    entry = store.get(protocol.desired_key(prefix))
    return _desired([entry] if entry else [])


def snapshot(store: Etcd, prefix: str) -> tuple[Desired | None, int, list[Member], int]:
    """The desired state (and its mod revision), every member, and the store's revision: one round trip."""
    (desired, alive, reports), revision = store.read(protocol.desired_key(prefix), protocol.alive_dir(prefix),
                                                     protocol.hosts_dir(prefix))
    return (*_desired(desired), _members(alive, reports), revision)


class Waker:
    """Wakes the waiting operator the moment anything under <prefix>/ changes: an etcd watch in a
    thread, on connections of its own. When the stream cannot be held, the wait polls instead."""

    FALLBACK = 0.25  # seconds between two reads even while the stream is up (a lost event costs no more)

    def __init__(self, store: Etcd, prefix: str, revision: int):
        self.event, self._stop, self.streaming = threading.Event(), threading.Event(), True
        self._store = store.twin()
        self._thread = threading.Thread(target=self._follow, args=(protocol.fleet_dir(prefix), revision + 1), daemon=True)
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


@dataclass
class Waited:
    """What became of each member a wait was for."""

    ok: list[str]
    failed: dict[str, LbsplitError]  # the member's own published error
    silent: list[str]  # reachable, but no answer within apply_timeout
    dropped: list[str]  # became unreachable (its lease lapsed) while waited for
    members: list[Member]  # as last read


def _wait(store: Etcd, prefix: str, names: list[str], uid: str, done, timeout: float, waker: Waker,
          first_failure_ends: bool = True) -> Waited:
    """Wait until each named member is done with change `uid` or failed it (its error is read at once:
    with `first_failure_ends`, the first failure ends the wait, since the change is undone anyway)."""
    pending, result = set(names), Waited([], {}, [], [], [])
    deadline = time.monotonic() + timeout
    while True:
        result.members = members(store, prefix)
        by_name = {m.name: m for m in result.members}
        for name in sorted(pending):
            member = by_name.get(name)
            r = member.report if member else None
            if r is not None and r.error_uid == uid:
                result.failed[name] = from_data(r.error)
                pending.discard(name)
            elif r is not None and done(r):
                result.ok.append(name)
                pending.discard(name)
            elif member is None or not member.reachable:
                result.dropped.append(name)
                pending.discard(name)
        broken = first_failure_ends and (result.failed or result.dropped)
        left = deadline - time.monotonic()
        if not pending or broken or left <= 0:
            # After a failure the rest are not failures of their own: the change ended before they answered.
            result.silent = [] if broken else sorted(pending)
            return result
        waker.wait(left)


def _problems(waited: Waited, timeout: float) -> list[str]:
    """One line per distinct failure, with the members it applies to (a gate refusal once, not per host)."""
    groups: dict[tuple[str, str], tuple[str, list[str]]] = {}
    for name, error in waited.failed.items():
        # Alike when kind and first line agree (the gate's checklist differs by a second of soak per host).
        text = str(error)
        groups.setdefault((error.kind, text.splitlines()[0] if text else ""), (text, []))[1].append(name)
    lines = [f"{', '.join(names)}: {text}" for text, names in groups.values()]
    lines += [f"{name}: became unreachable during the change (its agent's lease lapsed)" for name in waited.dropped]
    lines += [f"{name}: no answer within fleet.apply_timeout ({timeout:g}s)" for name in waited.silent]
    return lines


def _exit_code(waited: Waited) -> int:
    codes = {int(e.exit_code) for e in waited.failed.values()}
    if waited.dropped:
        codes.add(ExitCode.UNREACHABLE)
    if waited.silent:
        codes.add(ExitCode.RELOAD_FAILED)
    return next((c for c in PRIORITY if c in codes), ExitCode.RELOAD_FAILED)


class FleetFailed(LbsplitError):
    """A fleet change failed on some member; the exit code is that member's (see PRIORITY)."""

    kind = "fleet_failed"

    def __init__(self, message: str, exit_code: int, details: dict | None = None):
        super().__init__(message, details)
        self.exit_code = exit_code


def _record(store: Etcd, prefix: str, desired: Desired, result: str, per_host: dict) -> None:
    entry = {"id": desired.id, "uid": desired.uid, "time": now(), "user": desired.by, "command": desired.command,
             "from": protocol.stage_of(desired.previous).describe(), "to": desired.target.describe(),
             "reason": desired.reason, "result": result, "hosts": per_host}
    store.put(protocol.history_key(prefix, desired.id), json.dumps(entry, sort_keys=True))


def _per_host(waited: Waited) -> dict[str, str]:
    return {**{n: "served" for n in waited.ok}, **{n: str(e).splitlines()[0][:200] for n, e in waited.failed.items()},
            **{n: "became unreachable" for n in waited.dropped}, **{n: "no answer" for n in waited.silent}}


def _check_digests(live: list[Member]) -> None:
    digests: dict[str, list[str]] = {}
    for m in live:
        digests.setdefault(m.report.digest if m.report and m.report.digest else "(no report yet)", []).append(m.name)
    if len(digests) > 1:
        groups = "; ".join(f"{', '.join(names)}: {d}" for d, names in sorted(digests.items()))
        raise ConfigError("fleet: the hosts do not split users alike (mode, key, fallback_key or whitelist differ), so "
                          f"a user would get another version on another load balancer; make their configs agree ({groups})")


def _unreachable_lines(unreachable: list[Member]) -> list[str]:
    at = time.time()
    return [f"{m.name}: unreachable, {m.last_known(at)}" for m in unreachable]


class Proposer:
    """The proposing command's lease, kept alive by a thread while the command runs: the proposal is live
    exactly as long as etcd keeps <prefix>/proposer/<uid> (a frozen or dead command's lease lapses)."""

    def __init__(self, store: Etcd, prefix: str, uid: str):
        self.store, self.key = store, protocol.proposer_key(prefix, uid)
        self.lease = store.grant(PROPOSER_TTL)
        store.put(self.key, actor(), lease=self.lease)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, daemon=True)
        self._thread.start()

    def _keep(self) -> None:
        store = self.store.twin()
        while not self._stop.wait(PROPOSER_TTL / 3):
            try:
                store.keepalive(self.lease)
            except LbsplitError:
                pass  # etcd away: the lease lapses and another operator may take the proposal over

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(LbsplitError):
            self.store.revoke(self.lease)


def proposal_is_live(store: Etcd, prefix: str, desired: Desired) -> bool:
    """Is the command that proposed `desired` still running? etcd's lease says, not the proposal's time."""
    return bool(desired.uid) and store.get(protocol.proposer_key(prefix, desired.uid)) is not None


def change(settings: Settings, stage: Stage, command: str, reason: str = "", force: bool = False,
           strict: bool = False, allow_unreachable: bool = False, fence: Fence | None = None) -> Change:
    """`apply`/`promote` with [fleet]: propose, wait for every member, commit, wait; roll back on any failure."""
    store, prefix, timeout = store_for(settings)
    key = protocol.desired_key(prefix)
    now_desired, revision, all_members, at = snapshot(store, prefix)
    previous = now_desired.target if now_desired else Stage.off()
    if now_desired is not None and now_desired.phase == PROPOSED:
        if proposal_is_live(store, prefix, now_desired):
            raise LockBusy(f"fleet change {now_desired.id} ({now_desired.target.describe()}) by {now_desired.by} since "
                           f"{now_desired.at} is still being proposed; wait for it (or `lbsplit revert`)")
        previous = protocol.stage_of(now_desired.previous)  # a proposal its command left behind: never committed
    reachable = [m for m in all_members if m.reachable]
    unreachable = [m for m in all_members if not m.reachable]
    if unreachable and not allow_unreachable:
        raise Unreachable(f"fleet {command} refused, nothing changed: "
                          + "; ".join(_unreachable_lines(unreachable))
                          + ". Start its agent again, `lbsplit forget HOST` if it is gone for good, or add "
                            "--allow-unreachable to change the reachable members only",
                          {"unreachable": [m.name for m in unreachable]})
    if not reachable:
        raise EnvironmentProblem(f"fleet: no reachable agent under {prefix}; run `lbsplit agent` on every load balancer")
    _check_digests(reachable)
    proposal = Desired(id=(now_desired.id if now_desired else 0) + 1, stage=protocol.stage_json(stage), phase=PROPOSED,
                       previous=protocol.stage_json(previous), uid=protocol.new_uid(), command=command, by=actor(),
                       at=now(), reason=reason, force=force, strict=strict,
                       skipped=tuple(m.name for m in unreachable))
    waker = Waker(store, prefix, at)
    proposer = Proposer(store, prefix, proposal.uid)
    try:
        done = _propose_and_commit(store, prefix, key, timeout, revision, proposal, previous,
                                   [m.name for m in reachable], waker, fence)
    finally:
        proposer.close()
        waker.close()
    done.messages += [f"skipped (--allow-unreachable): {line}" for line in _unreachable_lines(unreachable)]
    return done


def _describe_desired(store: Etcd, prefix: str) -> str:
    now_desired, _ = current(store, prefix)
    if now_desired is None:
        return "no desired state"
    return f"change {now_desired.id} ({now_desired.command}: {now_desired.target.describe()}) by {now_desired.by}"


def _undo(store: Etcd, prefix: str, key: str, expected: Desired, back: Desired, names: list[str], timeout: float,
          waker: Waker) -> str:
    """Put `back` in place of `expected` and say, truthfully, where every member now stands."""
    if not store.swap_value(key, expected.dumps(), back.dumps()):
        return (f"the fleet's desired state was changed by someone else meanwhile, so this command undid nothing: "
                f"it is now {_describe_desired(store, prefix)}")
    waited = _wait(store, prefix, names, back.uid, lambda r: r.serves_change(back), timeout, waker,
                   first_failure_ends=False)
    _record(store, prefix, back, "rollback" if not _problems(waited, timeout) else "rollback, incomplete",
            _per_host(waited))
    where = back.target.describe()
    if not _problems(waited, timeout):
        return f"the fleet is back at the previous stage ({where}) on {', '.join(sorted(waited.ok))}"
    return (f"the rollback to {where} is incomplete: " + "; ".join(_problems(waited, timeout))
            + (f"; back at {where}: {', '.join(sorted(waited.ok))}" if waited.ok else ""))


def _propose_and_commit(store: Etcd, prefix: str, key: str, timeout: float, revision: int, proposal: Desired,
                        previous: Stage, names: list[str], waker: Waker, fence: Fence | None) -> Change:
    command, stage = proposal.command, proposal.target
    failpoint("before-propose")  # the fleet read, the compare-and-swap not yet tried
    back = replace(proposal, id=proposal.id + 1, stage=protocol.stage_json(previous), phase=COMMITTED,
                   previous=proposal.stage, uid=protocol.new_uid(), command=f"abandon {command}",
                   reason="a host refused the proposal", undo=True, force=True, strict=False)
    # The guard is armed before the compare-and-swap: a signal that lands just after etcd took the proposal
    # (before swap() returns) must still withdraw it, not kill the command with the proposal left behind.
    with timing.phase("fleet: proposal"), _withdrawn_if_interrupted(store, key, proposal, back) as guard:
        if not store.swap(key, proposal.dumps(), revision, fence=fence):
            guard.lost = True  # the value there is someone else's: never "withdraw" it
            if fence is not None and getattr(store.get(fence.key), "create_revision", 0) != fence.create_revision:
                raise NotLeader("this watchdog no longer leads the fleet (its lease lapsed); nothing was changed")
            raise LockBusy(f"another fleet change got there first: {_describe_desired(store, prefix)}; "
                           "nothing was changed by this command")
        failpoint("after-propose")  # the proposal is in etcd, no host has answered yet
        waited = _wait(store, prefix, names, proposal.uid, lambda r: r.ready_uid == proposal.uid, timeout, waker)
    if waited.failed or waited.silent or waited.dropped:
        withdrawn = store.swap_value(key, proposal.dumps(), back.dumps())
        _record(store, prefix, proposal, "refused", _per_host(waited))
        outcome = ("nothing changed (the proposal was withdrawn)" if withdrawn else
                   f"the proposal had already been replaced: the fleet's desired state is {_describe_desired(store, prefix)}")
        raise FleetFailed(f"fleet {command} refused by {', '.join([*waited.failed, *waited.dropped, *waited.silent])}; "
                          f"{outcome}.\n  " + "\n  ".join(_problems(waited, timeout)), _exit_code(waited),
                          {"hosts": _per_host(waited)})
    committed = replace(proposal, phase=COMMITTED)
    if not store.swap_value(key, proposal.dumps(), committed.dumps(), fence=fence):
        raise LockBusy(f"the fleet's desired state changed while this change was proposed: it is now "
                       f"{_describe_desired(store, prefix)}; nothing was committed by this command")
    with timing.phase("fleet: commit"):
        waited = _wait(store, prefix, names, committed.uid, lambda r: r.serves_change(committed), timeout, waker)
    if waited.failed or waited.silent or waited.dropped:
        failing = [*waited.failed, *waited.dropped, *waited.silent]
        undo = Desired(id=committed.id + 1, stage=protocol.stage_json(previous), phase=COMMITTED,
                       previous=committed.stage, uid=protocol.new_uid(), command=f"rollback {command}", by=actor(),
                       at=now(), reason=f"change {committed.id} failed on {', '.join(failing)}", undo=True, force=True)
        _record(store, prefix, committed, "failed, rolled back", _per_host(waited))
        outcome = _undo(store, prefix, key, committed, undo, names, timeout, waker)
        raise FleetFailed(f"fleet {command} failed on {', '.join(failing)}; {outcome}.\n  "
                          + "\n  ".join(_problems(waited, timeout)), _exit_code(waited), {"hosts": _per_host(waited)})
    hosts = {**_per_host(waited), **{n: "skipped (unreachable)" for n in proposal.skipped}}
    _record(store, prefix, committed, "served by every member" if not proposal.skipped else
            "served by every reachable member", hosts)
    total = len(names) + len(proposal.skipped)
    return Change(committed.id, stage, changed=True, hosts=hosts, messages=[
        f"fleet change {committed.id}: v2 {stage.describe()} served by {len(waited.ok)} of {total} members",
        *table(waited.members, committed)])


@contextlib.contextmanager
def _withdrawn_if_interrupted(store: Etcd, key: str, proposal: Desired, back: Desired):
    """SIGINT, SIGTERM or SIGHUP while proposing: withdraw the proposal (nothing was committed), then stop."""

    def interrupted() -> Interrupted:
        return Interrupted(f"interrupted by {guard.signal}; the proposal was withdrawn, nothing changed")

    def interrupt(signum, _frame):
        guard.signal = signal.Signals(signum).name
        raise interrupted()

    guard = types.SimpleNamespace(lost=False, signal=None)
    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        yield guard
        if guard.signal:  # Python dropped what the handler raised (in a finalizer): withdraw all the same
            raise interrupted()
    except BaseException:
        if guard.lost:
            raise
        for s in previous:
            signal.signal(s, signal.SIG_IGN)  # the withdrawal itself must not be interrupted
        try:
            # Compare-and-swap on the proposal's own value: a no-op when etcd never took it.
            store.swap_value(key, proposal.dumps(), back.dumps())
        except LbsplitError:
            pass  # etcd away: the proposal's lease lapses and the next apply takes over
        raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def revert(settings: Settings, reason: str = "", fence: Fence | None = None) -> Change:
    """`revert` with [fleet]: one write that every member applies; exit 0 only when every member serves v2 off."""
    store, prefix, timeout = store_for(settings)
    key = protocol.desired_key(prefix)
    now_desired, _, all_members, at = snapshot(store, prefix)
    previous = now_desired.target if now_desired else Stage.off()
    off = Desired(id=(now_desired.id if now_desired else 0) + 1, stage=protocol.stage_json(Stage.off()),
                  phase=COMMITTED, previous=protocol.stage_json(previous), uid=protocol.new_uid(), command="revert",
                  by=actor(), at=now(), reason=reason)
    names = [m.name for m in all_members if m.reachable]
    waker = Waker(store, prefix, at)
    try:
        if not store.put_fenced(key, off.dumps(), fence):
            raise NotLeader("this watchdog no longer leads the fleet (its lease lapsed); it reverted nothing")
        # A member reverted with `revert --local` serves v2 off already: that is what a revert asks.
        waited = _wait(store, prefix, names, off.uid,
                       lambda r: r.serves(Stage.off()) and (r.applied_uid == off.uid or bool(r.override)),
                       timeout, waker, first_failure_ends=False)
    finally:
        waker.close()
    unreachable = [m for m in waited.members if not m.reachable and m.name not in names] \
        + [m for m in waited.members if m.name in waited.dropped]
    problems = _problems(waited, timeout)
    hosts = {**_per_host(waited), **{m.name: "unreachable" for m in unreachable if m.name not in waited.dropped}}
    _record(store, prefix, off, "reverted" if not problems and not unreachable else "reverted, incomplete", hosts)
    total = len({m.name for m in waited.members} | set(names))
    lines = [f"fleet change {off.id}: v2 off, served by {len(waited.ok)} of {total} members",
             *table(waited.members, off)]
    if waited.failed or waited.silent:
        raise FleetFailed("\n".join(lines) + "\nfleet revert did not complete:\n  " + "\n  ".join(problems)
                          + "\nrun `lbsplit revert --local` on those hosts", _exit_code(replace(waited, dropped=[])),
                          {"hosts": _per_host(waited)})
    if unreachable:
        raise Unreachable("\n".join(lines) + "\nfleet revert reached every reachable member, but not:\n  "
                          + "\n  ".join(_unreachable_lines(unreachable))
                          + "\nrun `lbsplit revert --local` there (or `lbsplit forget HOST` for a host that is gone)",
                          {"unreachable": [m.name for m in unreachable]})
    return Change(off.id, Stage.off(), changed=True, messages=lines, hosts=hosts)


def next_stage(settings: Settings) -> Stage | None:
    """The first configured stage above the fleet's desired one; None at the last stage."""
    store, prefix, _ = store_for(settings)
    desired, _ = current(store, prefix)
    return model.next_stage(settings.stages, desired.target if desired else None)


def forget(settings: Settings, host: str, reason: str = "") -> str:
    """`lbsplit forget HOST`: a member that is gone for good stops counting; recorded in the history."""
    store, prefix, _ = store_for(settings)
    listed = {m.name: m for m in members(store, prefix)}
    member = listed.get(host)
    if member is None:
        raise ConfigError(f"forget: {host!r} is not a member of {prefix} (members: {', '.join(listed) or 'none'})")
    if member.reachable:
        raise ConfigError(f"forget: {host}'s agent is running (its lease is alive); stop it first, "
                          "or it registers again at once")
    for k in (protocol.host_key(prefix, host), protocol.alive_key(prefix, host), protocol.counts_key(prefix, host)):
        store.delete(k)
    desired, _ = current(store, prefix)
    entry_id = (desired.id if desired else 0)
    store.put(protocol.forget_key(prefix, entry_id, host),
              json.dumps({"id": entry_id, "time": now(), "user": actor(), "command": f"forget {host}",
                          "from": "", "to": "", "reason": reason, "result": "forgotten",
                          "hosts": {host: member.last_known(time.time())}}, sort_keys=True))
    return f"{host} is no longer a member of the fleet ({member.last_known(time.time())})"


class Leadership:
    """The fleet's watchdog election: whoever creates <prefix>/watchdog under its lease leads while etcd keeps
    that lease. The key's create revision fences every write the leader makes: once the lease lapsed (a frozen
    leader), its key is gone and a write fenced by it fails, even if the old leader thaws and tries."""

    def __init__(self, settings: Settings):
        self.store, self.prefix, _ = store_for(settings)
        fleet = settings.require_fleet()
        self.host, self.ttl = fleet.host, fleet.agent_ttl
        self.lease = 0
        self.fence: Fence | None = None
        self._stop = None

    def acquire(self) -> str | None:
        """None when this host now leads; else the leader's name."""
        key = protocol.watchdog_key(self.prefix)
        lease = self.store.grant(self.ttl)
        if not self.store.swap(key, self.host, 0, lease=lease):
            self.store.revoke(lease)
            entry = self.store.get(key)
            return entry.value if entry else "(a leader that just stopped)"
        entry = self.store.get(key)
        if entry is None or entry.lease != lease:
            return "(a leader that took over at once)"
        self.lease, self.fence = lease, Fence(key, entry.create_revision)
        self._stop = threading.Event()
        store = self.store.twin()

        def keep():
            while not self._stop.wait(self.ttl / 3):
                try:
                    store.keepalive(self.lease)
                except LbsplitError:
                    pass  # etcd away: the lease runs out and another host may lead

        threading.Thread(target=keep, daemon=True).start()
        return None

    def leads(self) -> bool:
        """Still the leader by etcd's word: the lease lives and the election key is still ours."""
        if self.fence is None:
            return False
        try:
            entry = self.store.get(self.fence.key)
            return self.store.lease_ttl(self.lease) > 0 and entry is not None \
                and entry.create_revision == self.fence.create_revision
        except LbsplitError:
            return False

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self.lease:
            try:
                self.store.revoke(self.lease)
            except LbsplitError:
                pass
            self.lease = 0


def watchdog_action(settings: Settings, leadership: Leadership):
    """The leading watchdog's revert (or step back): a fleet change fenced by the leader's election key."""

    def act(target: Stage, reason: str) -> Change:
        if not leadership.leads():
            raise NotLeader("this watchdog no longer leads the fleet (its lease lapsed); it changed nothing")
        failpoint("before-fleet-act")  # checked that it leads; the fenced write not yet tried
        if target.v2_enabled:
            return change(settings, target, f"watchdog step back to {target.percent}", reason, force=True,
                          allow_unreachable=True, fence=leadership.fence)
        return revert(settings, reason, fence=leadership.fence)

    return act


def fleet_state(settings: Settings):
    """What the fleet's watchdog judges: the fleet's desired state (committed; a proposal counts as the stage
    before it), read from etcd, never this host's own state (which `revert --local` may have changed)."""
    store, prefix, _ = store_for(settings)

    def state() -> State | None:
        desired, _ = current(store, prefix)
        if desired is None:
            return None
        stage = desired.target if desired.phase == COMMITTED else protocol.stage_of(desired.previous)
        generation = desired.id if desired.phase == COMMITTED else desired.id - 1
        return State(generation=generation, v2_enabled=stage.v2_enabled, hundredths=stage.hundredths, mode="fleet",
                     applied_at=desired.at, applied_by=desired.by, command=desired.command, sha256=desired.uid,
                     reloaded=True)

    return state


def fleet_log_check(settings: Settings, health):
    """The leader's nginx_log source: every reachable member's window counts, checked, summed, judged as one log."""
    from ..watch import judge  # noqa: PLC0415 - only the fleet's watchdog judges; apply and revert do not load it
    from ..watch.logsource import VariantStats  # noqa: PLC0415 - the same

    store, prefix, _ = store_for(settings)

    def check(thresholds, now: float):
        v1, v2, used, refused = VariantStats(), VariantStats(), [], []
        (counts, alive, reports), _ = store.read(protocol.counts_dir(prefix), protocol.alive_dir(prefix), protocol.hosts_dir(prefix))
        by_name = {m.name: m for m in _members(alive, reports)}
        for e in counts:
            name = protocol.host_of(e.key)
            try:
                data = json.loads(e.value)
            except ValueError:
                data = None
            problem = protocol.counts_problem(data, e.lease, by_name.get(name))
            if problem:
                refused.append(f"{name} ({problem})")
                continue
            v1.merge(data["v1"])
            v2.merge(data["v2"])
            used.append(name)
        missing = [n for n, m in by_name.items() if m.reachable and n not in used and not any(
            r.startswith(f"{n} ") for r in refused)]
        problem = None if used else "no member published access-log counts (are the agents running?)"
        result = judge.evaluate_log(v1, v2, thresholds, health, problem)
        note = (f"fleet access logs: {len(used)} hosts" + (f"; no data from: {', '.join(refused)}" if refused else "")
                + (f"; nothing published by: {', '.join(missing)}" if missing else ""))
        return judge.Check(result.outcome, result.readings, result.missing, result.metrics, result.policy,
                           result.notes + (note,))

    return check


def lead_and_watch(settings: Settings, health, mode: str, echo, chatty: bool) -> int:
    """`watchdog` with [fleet]: run only while leading; the leader's revert is a fleet revert, fenced."""
    from ..watch.watchdog import Watchdog  # noqa: PLC0415 - only the watchdog command loads it

    while True:
        leadership = Leadership(settings)
        failpoint("before-lead")  # about to stand for the fleet's watchdog election
        leader = leadership.acquire()
        if leader is None:
            try:
                echo(f"{leadership.host} leads the fleet's watchdog") if chatty else None
                log_check = fleet_log_check(settings, health) if health.uses_log else None
                code = Watchdog(settings, health, echo=echo, chatty=chatty, act=watchdog_action(settings, leadership),
                                log_check=log_check, state_of=fleet_state(settings),
                                leading=leadership.leads).run(mode)
            finally:
                leadership.release()
            if mode != "loop" or code != ExitCode.OK:
                return code
            continue  # lost the lead: stand for it again
        if mode != "loop":
            echo(f"{leader} leads the fleet's watchdog; this one stands down")
            return 0
        time.sleep(max(1.0, leadership.ttl / 2))  # stand by: take over when the leader's lease runs out


def table(all_members: list[Member], desired: Desired | None) -> list[str]:
    rows = [f"{'host':<16} {'reach':<6} {'change':>6} {'stage':<8} {'gen':>5} {'served':<7} note"]
    at = time.time()
    for m in all_members:
        r = m.report
        reach = "yes" if m.reachable else "NO"
        if r is None:
            rows.append(f"{m.name:<16} {reach:<6} {'-':>6} {'-':<8} {'-':>5} {'-':<7} no report yet")
            continue
        note = r.override or (from_data(r.error).args[0].splitlines()[0][:120]
                              if r.error and desired is not None and r.error_uid == desired.uid else "")
        if desired is not None and not note and desired.phase == COMMITTED and not r.serves_change(desired):
            note = f"does not serve the desired change {desired.id} ({desired.target.describe()})"
        if not m.reachable:
            note = f"unreachable, {m.last_known(at)}" + (f"; {note}" if note else "")
        rows.append(f"{m.name:<16} {reach:<6} {r.applied_id:>6} "
                    f"{protocol.stage_of(r.stage).describe():<8} {r.generation if r.generation is not None else '-':>5} "
                    f"{'yes' if r.served else 'NO':<7} {note}")
    return rows


def status(settings: Settings) -> dict:
    store, prefix, _ = store_for(settings)
    desired, _, all_members, _ = snapshot(store, prefix)
    committed = desired is not None and desired.phase == COMMITTED
    behind = [m.name for m in all_members if m.reachable and committed and not (
        m.report and m.report.serves_change(desired) and not m.report.override)]
    unreachable = [m.name for m in all_members if not m.reachable]
    digests = {m.report.digest for m in all_members if m.reachable and m.report}
    return {"prefix": prefix, "desired": desired.__dict__ if desired else None,
            "hosts": [{"host": m.name, "alive": m.reachable, "reachable": m.reachable,
                       **(m.report.__dict__ if m.report else {})} for m in all_members],
            "not_serving_desired": behind, "unreachable": unreachable, "digests_agree": len(digests) <= 1,
            "lines": [f"desired:  change {desired.id}, v2 {desired.target.describe()} ({desired.phase}) by {desired.by} "
                      f"at {desired.at}" if desired else "desired:  nothing yet", *table(all_members, desired)]
            + ([] if len(digests) <= 1 else ["WARNING: the reachable members do not split users alike (digests differ)"])}


def require_serving(s: dict) -> None:
    """status's exit code: 9 while a reachable member does not serve the desired state, else 12 while one is
    unreachable."""
    if s["not_serving_desired"]:
        raise NotServing(f"fleet: {', '.join(s['not_serving_desired'])} do not serve the desired state")
    if s["unreachable"]:
        raise Unreachable(f"fleet: {', '.join(s['unreachable'])} unreachable: what they serve cannot be vouched for")


def history(settings: Settings) -> list[dict]:
    store, prefix, _ = store_for(settings)
    out = []
    for e in store.prefix(protocol.history_dir(prefix)):
        try:
            out.append(json.loads(e.value))
        except ValueError:
            continue
    return out
