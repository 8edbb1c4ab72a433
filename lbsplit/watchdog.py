"""The health watchdog: pure decisions (evaluate, decide) and a runner with injected probe, clock and sleep."""

from __future__ import annotations

import json
import math
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import files, health as health_mod
from .apply import Transaction, now
from .config import METRICS, HealthSettings, Settings, Thresholds
from .logsource import Cursor, VariantStats, Window, read_appended, variant_of_addr
from .errors import LbsplitError
from .model import Stage
from .state import StateStore

EXIT_REVERTED = 10
EXIT_REVERT_FAILED = 11
CRON_PERIOD = 60.0


# ---------------------------------------------------------------- pure part
@dataclass(frozen=True)
class Check:
    """One check of v2 against a stage's thresholds."""

    outcome: str  # "pass", "fail", "no_data" (policy "ignore"), or "inconclusive" (v1 fails as badly)
    breaches: tuple[str, ...]  # "error_rate 0.07 > 0.04"
    no_data: tuple[str, ...]  # "endpoint: HTTP 500", "avg_response_time missing"
    metrics: dict[str, float | None]
    policy: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verdict:
    consecutive: int
    revert: bool


def extract(payload: object, fields: dict[str, str]) -> dict[str, float | None]:
    """Each metric by its dotted path, at top level or under "metrics" when the path is the bare name."""
    out: dict[str, float | None] = {}
    for metric, path in fields.items():
        candidates = [path] if "." in path or path != metric else [path, f"metrics.{path}"]
        value = None
        for candidate in candidates:
            node = payload
            for part in candidate.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, (int, float)) and not isinstance(node, bool):
                value = float(node)
                break
        out[metric] = value
    return out


def evaluate(sample: health_mod.Sample, thresholds: Thresholds, fields: dict[str, str], no_data: str) -> Check:
    """Compare one sample with the stage's thresholds; missing data follows the no_data policy."""
    if sample.error is not None:
        metrics = {m: None for m in METRICS}
        missing = (f"endpoint: {sample.error}",)
    else:
        metrics = extract(sample.payload, fields)
        missing = tuple(f"{m} missing" for m, v in metrics.items() if v is None)
    breaches = tuple(
        f"{m} {metrics[m]:g} > {getattr(thresholds, m):g}"
        for m in METRICS
        if metrics.get(m) is not None and metrics[m] > getattr(thresholds, m)
    )
    if breaches or (missing and no_data == "fail"):
        outcome = "fail"
    elif missing:
        outcome = "no_data"
    else:
        outcome = "pass"
    return Check(outcome, breaches, missing, metrics, no_data)


def evaluate_log(v1: VariantStats, v2: VariantStats, t: Thresholds, health: HealthSettings,
                 problem: str | None = None) -> Check:
    """Judge v2 by what nginx saw: absolute thresholds, then against v1 in the same window."""
    metrics = {
        "log_v2_requests": float(v2.requests), "log_v2_error_rate": v2.error_rate,
        "log_v2_timeout_rate": v2.timeout_rate, "log_v2_avg_response_time": v2.avg_response_time,
        "log_v2_p95_response_time": v2.p95_response_time, "log_v1_requests": float(v1.requests),
        "log_v1_error_rate": v1.error_rate, "log_v1_p95_response_time": v1.p95_response_time,
    }
    policy = health.no_data
    if problem or v2.requests < health.min_requests:
        why = problem or (f"log: not enough data: {v2.requests} v2 requests in the last {t.window:g}s "
                          f"(minimum {health.min_requests})")
        return Check("fail" if policy == "fail" else "no_data", (), (why,), metrics, policy)
    breaches, shared = [], []
    baseline = v1.requests >= health.min_requests
    for metric in ("error_rate", "timeout_rate", "avg_response_time"):
        value, limit = getattr(v2, metric), getattr(t, metric)
        if value > limit:
            theirs = getattr(v1, metric)
            if baseline and theirs is not None and theirs > limit:
                shared.append(f"log: v1 fails as badly ({metric} v1 {theirs:g}, v2 {value:g}); not blaming v2")
            else:
                breaches.append(f"log: v2 {metric} {value:g} > {limit:g}")
    if baseline:
        margin = health.baseline_error_margin
        if v2.error_rate > v1.error_rate + margin:
            breaches.append(f"log: v2 error_rate {v2.error_rate:g} > v1 {v1.error_rate:g} + {margin:g}")
        factor = health.baseline_latency_factor
        p2, p1 = v2.p95_response_time, v1.p95_response_time
        # differences under 50 ms are histogram noise at these sizes, not a regression
        if p2 > p1 * factor and p2 - p1 > 0.05:
            breaches.append(f"log: v2 p95 {p2:.3g}s > v1 p95 {p1:.3g}s x {factor:g}")
    outcome = "fail" if breaches else ("inconclusive" if shared else "pass")
    return Check(outcome, tuple(breaches), (), metrics, policy, tuple(shared))


def combine(checks: list[Check]) -> Check:
    """Either source failing counts; otherwise any that could not judge makes the check not a pass."""
    outcomes = [c.outcome for c in checks]
    if "fail" in outcomes:
        outcome = "fail"
    elif "inconclusive" in outcomes:
        outcome = "inconclusive"
    elif "no_data" in outcomes:
        outcome = "no_data"
    else:
        outcome = "pass"
    metrics: dict = {}
    for c in checks:
        metrics.update(c.metrics)
    return Check(outcome, sum((c.breaches for c in checks), ()), sum((c.no_data for c in checks), ()), metrics,
                 checks[0].policy, sum((c.notes for c in checks), ()))


def decide(consecutive: int, check: Check, failures_before_revert: int) -> Verdict:
    """A pass resets the count, a failure adds one, ignored no-data leaves it; N in a row revert."""
    if check.outcome == "pass":
        return Verdict(0, False)
    if check.outcome in ("no_data", "inconclusive"):
        return Verdict(consecutive, False)
    count = consecutive + 1
    return Verdict(count, count >= failures_before_revert)


def breach_target(current: Stage, stages: tuple[int, ...], on_breach: str) -> Stage:
    """Where a breach sends traffic: v2 off, or the configured stage below the current one."""
    if on_breach == "previous":
        lower = [s for s in stages if s < current.hundredths]
        if lower:
            return Stage.at(max(lower))
    return Stage.off()


def cron_checks(check_every: float, period: float = CRON_PERIOD) -> int:
    """How many checks one cron run makes so that it ends before the next one starts."""
    return max(1, math.ceil(period / check_every))


# ---------------------------------------------------------------- memory between runs
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


def load_state(path: Path) -> WatchdogState:
    raw = files.read_bytes(path)
    if not raw:
        return WatchdogState()
    try:
        return WatchdogState(**json.loads(raw))
    except (ValueError, TypeError):
        return WatchdogState()  # a damaged file only loses the count, never blocks a check


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
        lines += [f'lbsplit_v2_threshold{{metric="{m}"}} {getattr(thresholds, m):g}' for m in METRICS]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the runner
@dataclass
class RunResult:
    kind: str  # "nothing", "busy", "pass", "fail", "no_data", "reverted", "revert_failed", "changed"
    interval: float = CRON_PERIOD
    messages: list[str] = field(default_factory=list)


class Watchdog:
    """One watchdog run; probe, clock, sleep and notify are parameters so tests neither sleep nor mock HTTP."""

    def __init__(self, settings: Settings, health: HealthSettings, probe=health_mod.probe, clock=time.time,
                 sleep=time.sleep, notify=health_mod.post_json, echo=print):
        self.settings = settings
        self.health = health
        self.probe = probe
        self.clock = clock
        self.sleep = sleep
        self.notify = notify
        self.echo = echo
        self.store = StateStore(settings.state_dir)
        self.state_path = settings.state_dir / "watchdog.json"

    def _log(self, line: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock()))
        self.health.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.health.log, "a", encoding="utf-8") as f:
            f.write(f"{stamp} {line}\n")

    def _notify(self, event: str, payload: dict) -> str | None:
        if self.settings.notify is None:
            return None
        body = {"event": event, "host": socket.gethostname(), "time": now(), **payload}
        error = self.notify(self.settings.notify.webhook, body, self.settings.notify.timeout)
        if error:
            self._log(f"notify {event}: {error}")
        return error

    def check_once(self) -> RunResult:
        """Probe v2 once and act on the verdict; exits quietly when there is nothing to watch or an apply runs."""
        state = self.store.read_state()
        if state is None or not state.v2_enabled:
            return RunResult("nothing")
        thresholds = self.health.thresholds_for(state.hundredths)
        checks = []
        if self.health.uses_endpoint:
            headers = health_mod.auth_headers(self.health.headers, self.health.bearer_token_file,
                                              self.health.bearer_token_env)
            sample = self.probe(self.health.url, self.health.timeout, headers)
            checks.append(evaluate(sample, thresholds, dict(self.health.fields), self.health.no_data))
        log_update = None
        if self.health.uses_log:
            log_check, log_update = self._check_log(thresholds)
            checks.append(log_check)
        check = combine(checks) if len(checks) > 1 else checks[0]

        lock = files.Lock(self.store.lock_path, 0, "watchdog")
        if not lock.try_acquire():
            self._log(f"gen={state.generation} check skipped: another lbsplit command holds the lock")
            return RunResult("busy", thresholds.check_every)
        try:
            current = self.store.read_state()
            if current is None or current.generation != state.generation:
                self._log(f"gen={state.generation} check discarded: the stage changed while probing")
                return RunResult("changed", thresholds.check_every)
            return self._act(state, thresholds, check, lock, log_update)
        finally:
            lock.release()

    def _check_log(self, thresholds: Thresholds) -> tuple[Check, tuple]:
        """Read what nginx appended since the last run into the window; judge the window."""
        wd = load_state(self.state_path)
        cursor = Cursor(**wd.log_cursor) if wd.log_cursor else None
        window = Window(wd.log_window)
        now_ts = self.clock()
        oldest = now_ts - thresholds.window
        empty = {"v1": VariantStats(), "v2": VariantStats()}
        addrs = variant_of_addr(self.settings.v1, self.settings.v2)
        try:
            cursor, notes = read_appended(self.health.access_log, cursor,
                                          lambda text: window.add_text(text, addrs, oldest))
        except FileNotFoundError:
            return evaluate_log(empty["v1"], empty["v2"], thresholds, self.health,
                                f"log: {self.health.access_log} is missing"), (wd.log_cursor, wd.log_window)
        except OSError as e:
            return evaluate_log(empty["v1"], empty["v2"], thresholds, self.health,
                                f"log: cannot read {self.health.access_log}: {e.strerror}"), (wd.log_cursor, wd.log_window)
        window.prune(oldest)
        stats = window.stats(oldest, now_ts)
        check = evaluate_log(stats["v1"], stats["v2"], thresholds, self.health)
        if notes:
            check = Check(check.outcome, check.breaches, check.no_data, check.metrics, check.policy,
                          check.notes + tuple(notes))
        return check, ({"inode": cursor.inode, "offset": cursor.offset}, window.to_json())

    def _act(self, state, thresholds: Thresholds, check: Check, lock, log_update=None) -> RunResult:
        wd = load_state(self.state_path)
        if log_update is not None:
            wd.log_cursor, wd.log_window = log_update
        verdict = decide(wd.consecutive_failures, check, self.health.failures_before_revert)
        wd.consecutive_failures = verdict.consecutive
        wd.last_check_at = self.clock()
        wd.last_outcome = check.outcome
        wd.last_metrics = check.metrics
        stage = Stage.at(state.hundredths)
        values = " ".join(f"{m}={'-' if v is None else f'{v:g}'}" for m, v in check.metrics.items())
        detail = "; ".join(check.breaches + check.no_data + check.notes)
        self._log(
            f"gen={state.generation} stage={stage.describe()} check={check.outcome.upper()} "
            f"consecutive={verdict.consecutive}/{self.health.failures_before_revert} no_data={check.policy} "
            f"{values}" + (f" [{detail}]" if detail else "")
        )
        result = RunResult(check.outcome, thresholds.check_every)
        if verdict.revert:
            result = self._revert(state, stage, check, wd, lock)
        elif check.outcome == "fail":
            now_ts = self.clock()
            cooldown_over = wd.last_alert_at is None or now_ts - wd.last_alert_at >= thresholds.alert_cooldown
            if cooldown_over:
                wd.last_alert_at = now_ts
                message = (f"lbsplit watchdog: v2 failed a check at {stage.describe()} "
                           f"({verdict.consecutive}/{self.health.failures_before_revert} before revert): {detail}")
                result.messages.append(message)
                self._notify("alert", {"stage": stage.describe(), "generation": state.generation, "reason": detail,
                                       "metrics": check.metrics, "consecutive_failures": verdict.consecutive})
        save_state(self.state_path, wd)
        self._write_prometheus(wd, thresholds)
        return result

    def _revert(self, state, stage: Stage, check: Check, wd: WatchdogState, lock) -> RunResult:
        try:
            split_ok = self.settings.split is not None and self.settings.deferred_error is None
            target = breach_target(stage, self.settings.stages if split_ok else (), self.health.on_breach)
            reason = (f"watchdog: {self.health.failures_before_revert} failed checks in a row at {stage.describe()}: "
                      + "; ".join(check.breaches + check.no_data))
            values = {m: v for m, v in check.metrics.items()}
            command = "watchdog revert" if not target.v2_enabled else f"watchdog step back to {target.percent}"
            txn = Transaction(self.settings, command, reason, metrics=values)
            outcome = txn.run(target, tolerate_repair_failure=True, lock_held=lock)
        except LbsplitError as e:
            message = f"lbsplit watchdog: REVERT FAILED at {stage.describe()}: {e}"
            self._log(message)
            self._notify("revert_failed", {"stage": stage.describe(), "generation": state.generation, "error": str(e),
                                           "metrics": check.metrics})
            return RunResult("revert_failed", messages=[message])
        wd.consecutive_failures = 0
        wd.reverts_total += 1
        message = (f"lbsplit watchdog: v2 {stage.describe()} -> {target.describe()} "
                   f"(generation {outcome.generation}): {reason}")
        self._log(message)
        self._notify("revert", {"from": stage.describe(), "to": target.describe(), "generation": outcome.generation,
                                "reason": reason, "metrics": check.metrics})
        return RunResult("reverted", messages=[message] + outcome.messages)

    def _write_prometheus(self, wd: WatchdogState, thresholds: Thresholds | None) -> None:
        if self.health.prometheus_textfile is None:
            return
        state = self.store.read_state()
        percent = state.hundredths / 100 if state and state.v2_enabled else 0
        files.atomic_write(self.health.prometheus_textfile,
                           prometheus_text(percent, state.generation if state else 0, wd, thresholds))

    def run(self, mode: str = "cron", max_loops: int | None = None) -> int:
        """cron: the checks one minute holds at the stage's frequency; once: one check; loop: forever."""
        guard = files.Lock(self.settings.state_dir / "watchdog.lock", 0, "watchdog")
        self.store.ensure()
        if not guard.try_acquire():
            return 0  # another watchdog is running: leave it to that one
        try:
            start = self.clock()
            checks = 0
            while True:
                result = self.check_once()
                for message in result.messages:
                    self.echo(message)
                if result.kind == "revert_failed":
                    return EXIT_REVERT_FAILED
                if result.kind == "reverted" and mode != "loop":
                    return EXIT_REVERTED
                if mode == "once" or (mode == "cron" and result.kind in ("nothing", "busy")):
                    return 0
                checks += 1
                if max_loops is not None and checks >= max_loops:
                    return 0
                if mode == "cron":
                    next_at = start + checks * result.interval
                    if next_at >= start + CRON_PERIOD or checks >= cron_checks(result.interval):
                        return 0
                else:
                    next_at = self.clock() + (result.interval if result.kind != "nothing" else CRON_PERIOD)
                self.sleep(max(0.0, next_at - self.clock()))
        finally:
            guard.release()
