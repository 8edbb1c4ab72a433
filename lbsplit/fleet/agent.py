"""`lbsplit agent`: one per load balancer. Follows the fleet's desired state with the local transaction.

It registers the host under a lease, follows `<prefix>/desired`, validates proposals (the same
checks as a local apply, plus `nginx -t` of the new lbsplit.conf in a private config), applies
committed changes through the local transaction (validate, nginx -t, reload, verify served), and
reports what the host's nginx says it serves. The lease and the report's heartbeat are kept by a
thread of their own, so a local change that takes longer than agent_ttl never makes the host look
unreachable; a lease that lapsed anyway is granted again under the same member. One agent per
state_dir: a second one refuses to start and touches nothing. When etcd is unreachable it keeps
serving what it last applied and changes nothing; a host reverted with `lbsplit revert --local`
ignores the fleet until `lbsplit rejoin`.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

from ..config import Settings, load
from ..errors import ConfigError, Interrupted, LbsplitError, LockBusy, NginxTestFailed, NotServing
from ..model import Runtime, Stage
from ..nginx.dialect import answered_stage
from ..nginx.process import Nginx
from ..rollout import files
from ..rollout.planning import plan
from ..rollout.state import StateStore
from ..nginx.process import lua_modules
from ..stamps import actor, now
from ..watch.logsource import Window, read_appended, variant_of_addr
from . import protocol
from .protocol import COMMITTED, PROPOSED, Desired, Report
from .store import Etcd, StoreUnavailable

POLL = 0.5  # seconds between two looks at the desired state when the watch stream is down or quiet
LOCAL_EVERY = 1.0  # seconds between two looks at what this host's nginx serves, when nothing happens
OVERRIDE_FILE = "fleet-override.json"  # in state_dir: `revert --local` was run here
AGENT_LOCK = "agent.lock"  # in state_dir: flocked by the one agent of this host
ERROR_CHARS = 4000  # a published error's message is cut here (a 1M-line nginx -t output must not fill etcd)


def override_path(settings: Settings) -> Path:
    return settings.state_dir / OVERRIDE_FILE


def read_override(settings: Settings) -> str | None:
    """Who reverted this host locally, and when; None when the host follows the fleet."""
    raw = files.read_bytes(override_path(settings))
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        return f"reverted locally by {data['by']} at {data['at']}"
    except (ValueError, KeyError, TypeError):
        return "reverted locally (the override file is unreadable)"


def set_override(settings: Settings, reason: str) -> None:
    StateStore(settings.state_dir).ensure()
    files.atomic_write(override_path(settings), json.dumps({"by": actor(), "at": now(), "reason": reason}) + "\n")


def clear_override(settings: Settings) -> bool:
    existed = override_path(settings).exists()
    files.remove(override_path(settings))
    return existed


def digest(settings: Settings) -> str:
    """split_digest of this host's config; "invalid: ..." when the config cannot be split at all."""
    try:
        inputs = plan(settings, Stage.at(0)).inputs
    except LbsplitError as e:
        return f"invalid: {e}"[:200]
    name = inputs.include_file.name if inputs.include_file else ",".join(inputs.whitelist)
    forcing = f"{inputs.force_header}\0{inputs.force_cookie}" if inputs.force_header or inputs.force_cookie else ""
    return protocol.split_digest(str(inputs.mode), inputs.key, inputs.fallback_key, name, forcing)


def local_report(settings: Settings, base: Report) -> Report:
    """What this host serves now: the stage its nginx answers (status page or lua dict), and whether that is
    the generation and stage lbsplit installed."""
    state = StateStore(settings.state_dir).read_state_or_none()
    answer = Nginx(settings.nginx).serving()
    answered = answered_stage(answer)
    installed = state.stage if state else Stage.off()
    served = bool(state and answer and answer.get("generation") == state.generation and answered == installed)
    return replace(base, seen=time.time(), stage=protocol.stage_json(answered if answered is not None else installed),
                   generation=state.generation if state else None, served=served,
                   override=read_override(settings))


def published_error(e: LbsplitError) -> dict:
    data = e.to_data()
    data["message"] = data["message"][:ERROR_CHARS]
    return data


class Agent:
    """One load balancer's member of the fleet. `local` changes this host's stage (app.local: its apply,
    restore and revert, with the gate, hooks and notifications): given by the caller, since the commands
    live above the fleet."""

    def __init__(self, config_path: Path, local, log=print, clock=time.time):
        self.config_path = config_path
        self.local = local
        self.settings = load(config_path)
        self.config_mtime = config_path.stat().st_mtime_ns
        self.fleet = self.settings.require_fleet()
        if self.fleet is None:
            raise ConfigError("agent: the config has no [fleet] section; add one (etcd, prefix) to run the agent")
        self.store = Etcd.for_fleet(self.fleet, timeout=2.0)
        self.log = log
        self.clock = clock
        self.lease = 0
        self.published_at = 0.0
        self.guard = threading.Lock()  # the report and its put, shared with the liveness thread
        self.override_recorded = ""  # the `revert --local` (its time) already in the fleet's history
        self.lock = files.Lock(self.settings.state_dir / AGENT_LOCK, 0, f"agent for {self.fleet.host}")
        self.looked_at = 0.0  # when local_report last asked nginx
        self.digest_of: tuple | None = None  # (config, whitelist file) the cached digest belongs to
        self.digest = ""
        self.tested: set[tuple[str, str | None]] = set()  # (skeleton key, whitelist file) that passed nginx -t here
        self.log_window, self.log_cursor = Window(), None  # the access log, read incrementally
        self.report = Report(host=self.fleet.host, seen=clock())
        self.etcd_down_since: float | None = None
        self.stop = threading.Event()
        self.wake = threading.Event()  # set by the watch stream when the desired state changes

    # ---- etcd housekeeping (the liveness thread)
    def _renew(self) -> None:
        """Keep the lease alive; when it lapsed (a frozen agent, etcd restarted empty), register again."""
        if self.lease and self.store.keepalive(self.lease) > 0:
            return
        lease = self.store.grant(self.fleet.agent_ttl)
        self.store.put(protocol.alive_key(self.fleet.prefix, self.fleet.host), self.fleet.host, lease=lease)
        again = bool(self.lease)
        self.lease = lease
        self.log(f"{'re-' if again else ''}registered {self.fleet.host} under lease {lease:x} "
                 f"(ttl {self.fleet.agent_ttl}s)")

    def _liveness(self) -> None:
        """A thread: the lease and the report's heartbeat, apart from the work of the main loop."""
        down = False
        while True:
            try:
                self._renew()
                with self.guard:
                    self._put_report(replace(self.report, seen=self.clock(), lease=self.lease))
                down = False
            except LbsplitError as e:
                if not down:
                    self.log(f"cannot renew the lease ({e}); retrying")
                down = True
            if self.stop.wait(self.fleet.agent_ttl / 3):
                return

    def _put_report(self, report: Report) -> None:
        self.report = report
        self.published_at = 0.0  # a failed write is tried again at the next step
        self.store.put(protocol.host_key(self.fleet.prefix, self.fleet.host), report.dumps())
        self.published_at = time.monotonic()

    def _publish(self, report: Report) -> None:
        """Write the report when it changed, else as a heartbeat every agent_ttl/3 seconds."""
        with self.guard:
            report = replace(report, lease=self.lease)
            changed = replace(self.report, seen=0) != replace(report, seen=0)
            if changed or time.monotonic() - self.published_at > self.fleet.agent_ttl / 3:
                self._put_report(report)
            else:
                self.report = report

    # ---- one step
    def step(self) -> None:
        try:
            entry = self.store.get(protocol.desired_key(self.fleet.prefix))
        except StoreUnavailable as e:
            if self.etcd_down_since is None:
                self.etcd_down_since = time.monotonic()
                self.log(f"etcd unreachable ({e}); keeping what this host serves and changing nothing")
            return
        if self.etcd_down_since is not None:
            self.log("etcd answers again")
            self.etcd_down_since = None
        self._reload_settings_if_changed()
        try:
            desired = Desired.loads(entry.value) if entry else None
        except (ValueError, TypeError) as e:
            self.log(f"ignoring a desired state that is not lbsplit's ({e})")
            desired = None
        look = time.monotonic() - self.looked_at > LOCAL_EVERY
        uid = desired.uid if desired else None
        if read_override(self.settings) is not None:
            with self.guard:  # after `rejoin`, apply the desired state again
                self.report = replace(self.report, applied_uid="", applied_id=0)
            self._record_override(desired)
        elif desired is not None:
            if desired.phase == PROPOSED and uid not in (self.report.ready_uid, self.report.error_uid):
                self._validate(desired)
            elif desired.phase == COMMITTED and self.report.error_uid != uid and (
                    self.report.applied_uid != uid or look and self._local_stage() != desired.target):
                self._apply(desired)
                return
        if look:
            self.looked_at = time.monotonic()
            self._publish(local_report(self.settings, replace(self.report, digest=self._digest())))
            self._publish_counts()
        else:
            self._publish(replace(self.report, seen=self.clock()))

    def _record_override(self, desired: Desired | None) -> None:
        """A `revert --local` (made with or without etcd) goes into the fleet's history once etcd answers: one
        entry per override, whoever's agent writes it first (create-only, so a restart never writes it twice)."""
        raw = files.read_bytes(override_path(self.settings))
        try:
            data = json.loads(raw) if raw else None
            at, by = str(data["at"]), str(data["by"])
        except (ValueError, KeyError, TypeError):
            return
        if self.override_recorded == at:
            return
        key = protocol.history_key(self.fleet.prefix, desired.id if desired else 0) + \
            f"-local-{self.fleet.host}-{at.replace(':', '')}"
        entry = {"id": desired.id if desired else 0, "time": at, "user": by, "command": "revert --local",
                 "from": "?", "to": "off", "reason": str(data.get("reason", "")),
                 "result": f"{self.fleet.host} reverted locally, without the fleet (break-glass)",
                 "hosts": {self.fleet.host: "reverted locally"}}
        self.store.swap(key, json.dumps(entry, sort_keys=True), 0)
        self.override_recorded = at

    def _publish_counts(self) -> None:
        """With health.source reading nginx's log: this host's per-variant counts over the stage's window,
        for the leading watchdog to sum over the fleet. Read incrementally, like the watchdog reads it."""
        health = self.settings.health if self.settings.health_error is None else None
        lease = self.lease
        if health is None or not health.uses_log or health.access_log is None or not lease \
                or self.settings.v2 is None:
            return
        state = StateStore(self.settings.state_dir).read_state_or_none()
        thresholds = health.thresholds_for(state.hundredths if state and state.v2_enabled else 0)
        now_ts = self.clock()
        oldest = now_ts - thresholds.window
        addrs = variant_of_addr(self.settings.v1, self.settings.v2)
        try:
            self.log_cursor, _ = read_appended(health.access_log, self.log_cursor,
                                               lambda text: self.log_window.add_text(text, addrs, oldest))
        except OSError:
            return  # the counts go stale; the leader says which host is missing
        self.log_window.prune(oldest)
        stats = self.log_window.stats(oldest, now_ts)
        row = lambda st: [st.requests, st.errors, st.timeouts, st.time_sum, {str(b): n for b, n in st.hist.items()}]  # noqa: E731
        self.store.put(protocol.counts_key(self.fleet.prefix, self.fleet.host),
                       json.dumps({"at": now_ts, "window": thresholds.window, "v1": row(stats["v1"]),
                                   "v2": row(stats["v2"])}), lease=lease)

    def _digest(self) -> str:
        """digest(), recomputed only when the config or the whitelist file changed."""
        wl = self.settings.split.whitelist_file if self.settings.split else None
        try:
            st = wl.stat() if wl else None
        except OSError:
            st = None
        key = (self.config_mtime, wl, st and (st.st_mtime_ns, st.st_size))
        if key != self.digest_of:
            self.digest, self.digest_of = digest(self.settings), key
        return self.digest

    def _local_stage(self) -> Stage | None:
        state = StateStore(self.settings.state_dir).read_state_or_none()
        return state.stage if state else None

    def _reload_settings_if_changed(self) -> None:
        try:
            mtime = self.config_path.stat().st_mtime_ns
        except OSError:
            return
        if mtime != self.config_mtime:
            self.config_mtime = mtime
            self._reload_settings()

    def _reload_settings(self) -> None:
        """Each host's lbsplit.toml may change between fleet changes: read it again for each one."""
        try:
            self.settings = load(self.config_path)
        except LbsplitError as e:
            self.log(f"keeping the previous config: {e}")

    def _validate(self, desired: Desired) -> None:
        self._reload_settings_if_changed()
        stage = desired.target
        try:
            if Nginx(self.settings.nginx).serving() is None:
                raise NotServing(f"nginx on {self.fleet.host} does not answer at {self.settings.nginx.status_listen} "
                                 "(not running, or lbsplit.conf not included): it could not serve the change")
            prepared = plan(self.settings, stage)
            text = prepared.checked_text(0)
            include = prepared.inputs.include
            skeleton = (prepared.skeleton_key(), include)
            # nginx -t once per skeleton and whitelist file: texts that differ only in the
            # percentage pass or fail alike.
            if skeleton not in self.tested and (include is None or Path(include).is_file()):
                lua = self.settings.nginx.runtime == Runtime.LUA
                problem = Nginx(self.settings.nginx).test_snippet(text, lua_modules() if lua else ())
                if problem:
                    raise NginxTestFailed(f"nginx -t rejects the new lbsplit.conf: {problem}")
                self.tested.add(skeleton)
        except LbsplitError as e:
            self.log(f"proposal {desired.id} ({stage.describe()}) refused: {e}")
            self._publish(replace(self.report, error_uid=desired.uid, error=published_error(e), seen=self.clock()))
            return
        self.log(f"proposal {desired.id} ({stage.describe()}) ready")
        self._publish(replace(self.report, ready_uid=desired.uid, error=None, seen=self.clock()))

    def _apply(self, desired: Desired) -> None:
        self._reload_settings_if_changed()
        stage = desired.target
        reason = f"fleet change {desired.id} by {desired.by}" + (f": {desired.reason}" if desired.reason else "")
        try:
            if desired.undo:  # what was live a moment ago: no gate (a narrowing's undo is a widening on paper)
                change = self.local.restore(self.settings, stage, reason, command=f"fleet {desired.command}")
            elif stage.v2_enabled:
                change = self.local.apply(self.settings, stage, reason, force=desired.force, strict=desired.strict,
                                           command=f"fleet {desired.command or 'apply'}")
            else:
                change = self.local.revert(self.settings, reason)
        except Interrupted as e:  # SIGTERM reached the transaction, which undid itself: stop the agent too
            self.log(f"change {desired.id} ({stage.describe()}) interrupted: {e}")
            self.stop.set()
            return
        except LbsplitError as e:
            self.log(f"change {desired.id} ({stage.describe()}) failed: {e}")
            self._publish(replace(local_report(self.settings, self.report), error_uid=desired.uid,
                                  error=published_error(e), digest=self._digest()))
            return
        self.log(f"change {desired.id}: {'; '.join(change.messages[-1:])}")
        self.looked_at = time.monotonic()
        report = replace(local_report(self.settings, self.report), applied_uid=desired.uid, applied_id=desired.id,
                         error=None, digest=self._digest())
        if not report.serves(stage):  # installed, but nginx does not serve it (not running): say so at once
            problem = NotServing(f"installed on {self.fleet.host}, but its nginx does not serve it: "
                                 + ("; ".join(change.messages[-1:]) or "no answer from its status page"))
            report = replace(report, error_uid=desired.uid, error=published_error(problem))
        self._publish(report)

    def _watch(self) -> None:
        """A thread: wake the loop at once when <prefix>/desired changes (polling stays the fallback)."""
        store = Etcd.for_fleet(self.fleet, timeout=2.0)  # its own connection: the stream holds one open
        while not self.stop.is_set():
            try:
                for _ in store.watch(protocol.desired_key(self.fleet.prefix), self.stop):
                    self.wake.set()
            except LbsplitError:
                pass
            self.stop.wait(1.0)  # etcd away: try the stream again in a second

    def run(self) -> int:
        def stop(signum, _frame):
            self.stop.set()
            self.wake.set()

        StateStore(self.settings.state_dir).ensure()
        try:
            self.lock.acquire()
        except LockBusy:
            raise LockBusy(f"agent: another agent for {self.fleet.host} already runs with this state_dir "
                           f"({self.lock.holder()}); this one changed nothing and stops") from None
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, stop)
        self.log(f"agent for {self.fleet.host} following {self.fleet.prefix} on {len(self.fleet.etcd)} etcd endpoint(s)")
        # The liveness thread's first report already says how this host splits users: a report without it
        # would make an apply in that first moment refuse ("the hosts do not split users alike").
        self.report = replace(self.report, digest=self._digest())
        threading.Thread(target=self._liveness, daemon=True).start()
        threading.Thread(target=self._watch, daemon=True).start()
        while not self.stop.is_set():
            try:
                self.step()
            except LbsplitError as e:
                self.log(f"step failed: {e}")
            self.wake.wait(POLL)
            self.wake.clear()
        try:
            if self.lease:  # unreachable at once, not after agent_ttl: a member stays one until `forget`
                self.store.revoke(self.lease)
        except StoreUnavailable:
            pass
        self.lock.release()
        self.log("agent stopped")
        return 0

