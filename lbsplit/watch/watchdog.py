"""The watchdog's runner: probe, clock, ask the judge, act through the transaction.

Probe, clocks, sleep and notify are parameters, so tests neither sleep nor mock HTTP. `judge`
gives the verdict on v2's health; the runner decides only around it: the cooldown after a breach,
auto-promotion, and when a release is complete. In fleet mode the state it judges (`state_of`),
the action (`act`) and whether it still leads (`leading`) are handed in by the fleet part.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from ..config import HealthSettings, Settings
from ..errors import ExitCode, GateRefused, Interrupted, LbsplitError, NotLeader
from ..model import format_span, Level, next_stage, Outcome, Thresholds
from ..rollout import files
from ..rollout.state import StateStore
from ..rollout.transaction import Transaction
from ..stamps import epoch
from . import endpoint, gate, hooks, judge, notify, sources
from .memory import WatchdogState, active_alerts, append_check, check_record, load_state, prometheus_text, save_state

CRON_PERIOD = judge.CRON_PERIOD


class Kind:
    """What one check of a run came to."""

    NOTHING = "nothing"  # v2 is off: nothing to watch
    BUSY = "busy"  # another command holds the lock
    CHANGED = "changed"  # the stage changed while probing
    REVERTED = "reverted"
    REVERT_FAILED = "revert_failed"
    STUCK = "stuck"  # the lock has been held for longer than the stage's interval


@dataclass
class RunResult:
    kind: str  # an Outcome, or one of Kind
    interval: float = CRON_PERIOD
    messages: list[str] = field(default_factory=list)


class Watchdog:
    """One watchdog run."""

    def __init__(self, settings: Settings, health: HealthSettings, probe=endpoint.probe, clock=time.time,
                 sleep=time.sleep, notify=endpoint.post_json, echo=print, monotonic=None, chatty: bool = False,
                 act=None, log_check=None, state_of=None, leading=None):
        self.settings = settings
        self.leading = leading  # fleet mode: () -> bool, False once another watchdog leads the fleet
        self.act = act  # fleet mode: (target, reason) -> Change, a fleet-wide change
        self.log_check = log_check  # fleet mode: (thresholds, now) -> Check over the whole fleet's access logs
        self.health = health
        self.probe = probe
        self.clock = clock  # wall time: timestamps in logs and state
        # Waits and intervals follow a clock that never jumps back (a test's fake clock is both).
        self.monotonic = monotonic or (time.monotonic if clock is time.time else clock)
        self.sleep = sleep
        self.notify = notify
        self.echo = echo
        self.chatty = chatty  # a person at a terminal: say why a run does nothing
        self._hooks_running: list = []  # on_alert hooks started in the background of this run
        self.store = StateStore(settings.state_dir)
        self.state_path = self.store.watchdog_path
        self.state_of = state_of or self.store.read_state_or_none  # fleet mode: the fleet's desired state

    def _log(self, line: str) -> None:
        """Append to the watchdog log; a log that cannot be written never stops a check or a revert."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock()))
        data = f"{stamp} {line}\n".encode("utf-8")
        try:
            self.health.log.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.health.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as e:
            self.echo(f"lbsplit watchdog: cannot write {self.health.log}: {e.strerror}; {line}")

    def _notify(self, event: str, payload: dict, level: Level = Level.P1, text: str = "") -> None:
        # In the background: a hanging webhook never delays the next check (errors are logged as they come).
        notify.send(self.settings, event, level, text or f"watchdog {event}", payload, post=self.notify,
                    background=True)

    def _measure(self, thresholds: Thresholds, hundredths: int) -> tuple[judge.Check, sources.LogProgress | None]:
        checks, progress = [], None
        if self.health.uses_endpoint:
            checks.append(sources.endpoint_check(self.health, thresholds, self.probe, hundredths))
        if self.health.uses_prometheus:
            from . import prometheus  # noqa: PLC0415 - only with source = "prometheus" (requests)

            checks.append(prometheus.check(self.health, thresholds, hundredths))
        if self.health.uses_log and self.log_check is not None:
            checks.append(self.log_check(thresholds, self.clock()))
        elif self.health.uses_log:
            wd = load_state(self.state_path)
            log_check, progress = sources.incremental_log_check(
                self.settings, self.health, thresholds, sources.LogProgress(wd.log_cursor, wd.log_window), self.clock())
            checks.append(log_check)
        return judge.combine(checks), progress

    def check_once(self) -> RunResult:
        """Probe v2 once and act on the verdict; exits quietly when there is nothing to watch."""
        state = self.state_of()
        if state is None or not state.v2_enabled:
            if self.chatty:  # a person at a terminal gets one line, never silence
                self.echo("lbsplit watchdog: v2 is off, nothing to watch")
            return RunResult(Kind.NOTHING)
        thresholds = self.health.thresholds_for(state.hundredths)
        check, progress = self._measure(thresholds, state.hundredths)

        lock = files.Lock(self.store.lock_path, 0, "watchdog")
        if not lock.try_acquire():
            result = self._busy(state, thresholds, lock.holder())
            if self.chatty and result.kind == Kind.BUSY:
                self.echo(f"check skipped: {lock.holder()} holds the lock")
            return result
        try:
            current = self.state_of()
            if current is None or current.generation != state.generation or current.sha256 != state.sha256:
                self._log(f"gen={state.generation} check discarded: the stage changed while probing")
                return RunResult(Kind.CHANGED, thresholds.check_every)
            return self._act(state, thresholds, check, lock, progress)
        finally:
            lock.release()

    def _busy(self, state, thresholds: Thresholds, holder: str) -> RunResult:
        """The lock is held: fine for a moment, an alarm when it stays held past the stage's interval."""
        wd = load_state(self.state_path)
        now_ts = self.clock()
        if wd.busy_since is None or wd.busy_since > now_ts:
            wd.busy_since = now_ts
        held = now_ts - wd.busy_since
        limit = max(thresholds.check_every, CRON_PERIOD)
        self._log(f"gen={state.generation} check skipped: {holder} holds the lock ({held:.0f}s)")
        result = RunResult(Kind.BUSY, thresholds.check_every)
        if held > limit:
            message = (f"lbsplit watchdog: ACT NOW: cannot check or revert v2 at {state.stage_text}: the lock has been "
                       f"held for {held:.0f}s by {holder} (a stopped or hung command?)")
            self._log(message)
            if not wd.busy_alerted:
                self._notify("stuck", {"stage": state.stage_text, "generation": state.generation, "holder": holder,
                                       "held_seconds": round(held)}, Level.P1, message)
                wd.busy_alerted = True
            result = RunResult(Kind.STUCK, thresholds.check_every, [message])
        self._save(wd)
        return result

    def _in_background(self, job) -> None:
        """Run an alert's hook beside the check loop: a slow hook never delays the next check."""
        import threading  # noqa: PLC0415 - only an alert with an on_alert hook starts a thread

        def work():
            result = job()
            if result is not None and not result.ok:
                self._log(result.describe())

        thread = threading.Thread(target=work, name="lbsplit-on-alert", daemon=True)
        thread.start()
        self._hooks_running.append(thread)

    def _save(self, wd: WatchdogState) -> None:
        try:
            save_state(self.state_path, wd)
        except LbsplitError as e:
            self._log(f"cannot save watchdog state: {e}")

    def _act(self, state, thresholds: Thresholds, check: judge.Check, lock,
             progress: sources.LogProgress | None = None) -> RunResult:
        wd = load_state(self.state_path)
        wd.busy_since, wd.busy_alerted = None, False
        if progress is not None:
            wd.log_cursor, wd.log_window = progress.cursor, progress.window
        verdict = judge.decide(wd.consecutive_failures, check, self.health.failures_before_revert,
                               self.health.revert_levels)
        wd.consecutive_failures = verdict.consecutive
        interval = max(judge.CRON_PERIOD, thresholds.check_every)
        wd.watched_generation, wd.watched_s, wd.watched_last_at = judge.watched(
            state.generation, epoch(state.applied_at), check.outcome, self.clock(), interval,
            (wd.watched_generation, wd.watched_s, wd.watched_last_at))
        wd.last_check_at = self.clock()
        wd.last_outcome = str(check.outcome)
        wd.last_metrics = check.metrics
        if check.outcome in (Outcome.FAIL, Outcome.ALERT):
            wd.last_breach_at, wd.last_breach_generation = self.clock(), state.generation
        elif check.outcome == Outcome.PASS and wd.active_alerts:
            self._notify("recovery", {"stage": state.stage_text, "generation": state.generation},
                         Level.P3, f"v2 at {state.stage_text} passes its checks again")
        wd.active_alerts = active_alerts(check, wd.active_alerts, self.clock())
        self._release_complete(state, wd)
        stage = state.stage
        values = " ".join(f"{m}={'-' if v is None else f'{v:g}'}" for m, v in check.metrics.items())
        detail = check.summary()
        line = (f"gen={state.generation} stage={stage.describe()} check={check.outcome.upper()} "
                f"consecutive={verdict.consecutive}/{self.health.failures_before_revert} no_data={check.policy} "
                f"{values}" + (f" [{detail}]" if detail else ""))
        self._log(line)
        try:
            append_check(self.store.checks_path, check_record(self.clock(), state.generation, stage.hundredths, check,
                                                              verdict.consecutive, thresholds))
        except (OSError, ValueError, LbsplitError) as e:
            self._log(f"cannot record the check for the dashboard: {e}")
        if self.chatty:  # a person at a terminal sees every check, a pass too
            self.echo(line)
        result = RunResult(check.outcome, thresholds.check_every)
        if verdict.revert:
            result = self._revert(state, check, wd, lock)
        elif check.outcome == Outcome.PASS and self.settings.plan.auto_promote:
            result.messages.extend(self._auto_promote(state, lock))
        elif check.outcome in (Outcome.FAIL, Outcome.ALERT):
            now_ts = self.clock()
            cooldown_over = wd.last_alert_at is None or now_ts - wd.last_alert_at >= thresholds.alert_cooldown
            if cooldown_over:
                wd.last_alert_at = now_ts
                if check.outcome == Outcome.ALERT:
                    message = (f"lbsplit watchdog: P2 alert at {stage.describe()} (holds promotion, no revert): "
                               f"{detail}")
                else:
                    message = (f"lbsplit watchdog: v2 failed a check at {stage.describe()} "
                               f"({verdict.consecutive}/{self.health.failures_before_revert} before revert): {detail}")
                result.messages.append(message)
                levels = sorted({r.level for r in check.breaches} | {m.level for m in check.missing})
                self._notify("alert", {"stage": stage.describe(), "generation": state.generation, "reason": detail,
                                       "metrics": check.metrics, "consecutive_failures": verdict.consecutive,
                                       "levels": [str(level) for level in levels]},
                             levels[0] if levels else Level.P1, message)
                self._in_background(lambda: hooks.run(self.settings, "on_alert", {
                    "stage": stage.percent, "generation": state.generation, "reason": detail}))
        self._save(wd)
        self._write_prometheus(wd, thresholds)
        return result

    def _auto_promote(self, state, lock) -> list[str]:
        """plan.auto_promote: the next stage, through the strict gate (soak, health, confirmed checks)."""
        state_now = self.store.read_state_or_none()
        target = next_stage(self.settings.stages, state_now.stage if state_now else None)
        if target is None:
            return []
        if [i for i in gate.check_items(self.settings, state_now, target, strict=True) if not i.ok]:
            return []  # a person must confirm the manual checks first; the gate would say so
        txn = Transaction(self.settings, f"auto-promote {target.percent}", "watchdog: soak and gate passed")
        lock.rename(txn.command)  # a person's revert ends a widening (its gate may run a long smoke test)
        precheck = gate.precheck_for(target, force=False, probe=self.probe, clock=self.clock, strict=True)
        try:
            try:
                outcome = txn.run(target, lock_held=lock, precheck=precheck)
            finally:
                lock.release()  # as after a step back (_revert): what follows needs no lock
        except GateRefused as e:
            failing = [i for i in e.details.get("items", []) if not i["ok"] and i["blocking"]]
            held = gate.Item(**failing[0]).line() if failing else str(e).splitlines()[0]
            self._log(f"gen={state.generation} auto-promote to {target.describe()} held: {held}")
            return []
        except Interrupted as e:
            self._log(f"gen={state.generation} auto-promote to {target.describe()} interrupted: {e}")
            raise
        except LbsplitError as e:
            self._log(f"gen={state.generation} auto-promote to {target.describe()} failed: {e}")
            return [f"lbsplit watchdog: auto-promote to {target.describe()} failed: {e}"]
        message = f"lbsplit watchdog: auto-promoted v2 to {target.describe()} (generation {outcome.generation})"
        self._log(message)
        self._notify("promote", {"stage": target.describe(), "generation": outcome.generation,
                                 "reason": "auto_promote"}, Level.P3, message)
        return [message]

    def _release_complete(self, state, wd: WatchdogState) -> None:
        """Once per generation: the last stage has been clean for its observation time."""
        stages = self.settings.stages
        if not stages or state.hundredths != stages[-1] or wd.release_generation == state.generation:
            return
        need = self.settings.plan.soak_for(state.hundredths)
        clean = gate.clean_time(self.settings, state, self.clock())
        if clean is not None and clean >= need:
            wd.release_generation = state.generation
            self._log(f"gen={state.generation} release complete: {state.stage_text} clean for {format_span(clean)}")
            self._notify("release_complete", {"stage": state.stage_text, "generation": state.generation}, Level.P3,
                         f"release complete: v2 at {state.stage_text} has been clean for {format_span(clean)}")

    def _revert(self, state, check: judge.Check, wd: WatchdogState, lock) -> RunResult:
        stage = state.stage
        split_ok = self.settings.split is not None and self.settings.deferred_error is None
        target = judge.breach_target(stage, self.settings.stages if split_ok else (), self.health.on_breach)
        reason = (f"watchdog: {self.health.failures_before_revert} failed checks in a row at {stage.describe()}: "
                  + check.summary())
        try:
            command = "watchdog revert" if not target.v2_enabled else f"watchdog step back to {target.percent}"
            if self.act is not None:
                lock.release()  # this host's agent takes the lock to apply the fleet's change here too
                outcome = self.act(target, reason)
            else:
                lock.rename(command)  # a step back yields to a person's revert; a revert does not
                txn = Transaction(self.settings, command, reason, metrics=dict(check.metrics))
                try:
                    outcome = txn.run(target, tolerate_repair_failure=True, lock_held=lock)
                finally:
                    # Done or undone: the notification, the post_revert hook and the state save that follow
                    # need no lock (a person's commands run theirs after the lock too), and a person's revert
                    # must find it free rather than end this watchdog in the middle of them.
                    lock.release()
        except NotLeader as e:
            self._log(f"gen={state.generation} stood down: {e}")
            return RunResult(Kind.CHANGED, messages=[f"lbsplit watchdog: {e}"])
        except Interrupted as e:  # a person's revert ended the step back: no failure to alert on, exit 130
            self._log(f"gen={state.generation} {command} interrupted: {e}")
            raise
        except LbsplitError as e:
            message = f"lbsplit watchdog: REVERT FAILED at {stage.describe()}: {e}"
            self._log(message)
            self._notify("revert_failed", {"stage": stage.describe(), "generation": state.generation, "error": str(e),
                                           "metrics": check.metrics}, Level.P1, message)
            return RunResult(Kind.REVERT_FAILED, messages=[message])
        wd.consecutive_failures = 0
        wd.reverts_total += 1
        message = (f"lbsplit watchdog: v2 {stage.describe()} -> {target.describe()} "
                   f"(generation {outcome.generation}): {reason}")
        self._log(message)
        self._notify("revert", {"from": stage.describe(), "to": target.describe(), "generation": outcome.generation,
                                "reason": reason, "metrics": check.metrics}, Level.P1, message)
        hook = hooks.run(self.settings, "post_revert", {"stage": target.percent if target.v2_enabled else "off",
                                                         "from": stage.percent, "generation": outcome.generation,
                                                         "reason": reason})
        if hook is not None and not hook.ok:
            self._log(hook.describe())
            self._notify("hook_failed", {"hook": "post_revert", "exit_code": hook.code, "output": hook.tail},
                         Level.P2, hook.describe())
        return RunResult(Kind.REVERTED, messages=[message] + outcome.messages)

    def _write_prometheus(self, wd: WatchdogState, thresholds: Thresholds | None) -> None:
        if self.health.prometheus_textfile is None:
            return
        state = self.store.read_state_or_none()
        percent = state.hundredths / 100 if state and state.v2_enabled else 0
        try:
            files.atomic_write(self.health.prometheus_textfile,
                               prometheus_text(percent, state.generation if state else 0, wd, thresholds))
        except LbsplitError as e:
            self._log(f"cannot write health.prometheus_textfile: {e}")

    def run(self, mode: str = "cron", max_loops: int | None = None) -> int:
        """cron: the checks one minute holds at the stage's frequency; once: one check; loop: forever."""
        self.store.ensure()
        guard = files.Lock(self.store.watchdog_lock_path, 0, "watchdog")
        if not guard.try_acquire():
            if self.chatty:
                self.echo(f"another watchdog is running ({guard.holder()}); leaving it to that one")
            return ExitCode.OK
        start = self.monotonic()
        try:
            checks = 0
            while True:
                if self.leading is not None and not self.leading():
                    self.echo("lbsplit watchdog: this host no longer leads the fleet's watchdog; standing down")
                    return ExitCode.OK
                result = self.check_once()
                for error in notify.collect():
                    self._log(error)
                for message in result.messages:
                    self.echo(message)
                if result.kind in (Kind.REVERT_FAILED, Kind.STUCK):
                    return ExitCode.WATCHDOG_ACT_NOW
                if result.kind == Kind.REVERTED and mode != "loop":
                    return ExitCode.WATCHDOG_REVERTED
                if mode == "once" or (mode == "cron" and result.kind in (Kind.NOTHING, Kind.BUSY)):
                    return ExitCode.OK
                checks += 1
                if max_loops is not None and checks >= max_loops:
                    return ExitCode.OK
                if mode == "cron":
                    next_at = start + checks * result.interval
                    if next_at >= start + CRON_PERIOD or checks >= judge.cron_checks(result.interval):
                        return ExitCode.OK
                else:
                    next_at = self.monotonic() + (result.interval if result.kind != Kind.NOTHING else CRON_PERIOD)
                self.sleep(max(0.0, next_at - self.monotonic()))
        finally:
            guard.release()
            # The run ends: give the alerts still on their way at most one webhook timeout in all.
            budget = self.settings.notify.timeout + 0.5 if self.settings.notify is not None else 0.0
            for error in notify.drain(budget):
                self._log(error)
            # Alert hooks still running get what is left of this cron minute (their own timeout bounds them too).
            left = max(0.0, CRON_PERIOD - 5 - (self.monotonic() - start)) if mode == "cron" else \
                self.settings.hooks.timeout
            for thread in self._hooks_running:
                thread.join(max(0.0, min(left, self.settings.hooks.timeout)))
                if thread.is_alive():
                    self._log("hook on_alert still running at the end of this run; left to finish on its own")
            self._hooks_running = []
