"""The command line: parse, call the library, turn LbsplitError into a message and an exit code."""

from __future__ import annotations

import json
import sys

import click

from . import __version__, files
from .apply import Transaction, dry_run_diff, install_only, plan
from .config import Settings, find_config, load
from .errors import ConfigError, EnvironmentProblem, LbsplitError
from .model import Stage, parse_percent
from .state import StateStore
from .status import live_status

PERCENT_ARG = {"ignore_unknown_options": True}  # so that "-5" reaches our own validation


class Context:
    def __init__(self, config: str | None):
        self.config_path = find_config(config)

    def settings(self, for_revert: bool = False) -> Settings:
        return load(self.config_path, for_revert=for_revert)


def run(fn):
    """Call the library; expected failures become one message and the error's exit code."""
    try:
        return fn()
    except LbsplitError as e:
        click.echo(f"lbsplit: {e}", err=True)
        sys.exit(e.exit_code)


def echo_outcome(outcome) -> None:
    for message in outcome.messages:
        click.echo(message)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", metavar="PATH", help="Config file (default: $LBSPLIT_CONFIG, else ./lbsplit.toml).")
@click.version_option(__version__, prog_name="lbsplit")
@click.pass_context
def main(ctx: click.Context, config: str | None) -> None:
    """Staged (canary) releases on plain nginx: sticky per-user splits, whitelists, instant revert.

    \b
    lbsplit init          write the v1-only lbsplit.conf to include in nginx
    lbsplit apply 10      whitelist + 10% of users on v2
    lbsplit revert        everyone back on v1, now
    lbsplit status        what is live, and is nginx really serving it
    """
    ctx.obj = Context(config)


@main.command()
@click.pass_obj
def init(obj: Context) -> None:
    """Write the first lbsplit.conf (everyone on v1) and check it with nginx -t; no reload.

    Run it once, then add `include <output_dir>/lbsplit.conf;` to nginx's http block.
    Example: lbsplit --config /etc/lbsplit.toml init
    """

    def go():
        settings = obj.settings(for_revert=True)
        echo_outcome(install_only(settings))
        click.echo(f"Add at http level in nginx:  include {settings.nginx.live_file};")
        click.echo("and proxy with:              proxy_pass http://$lbsplit_upstream;")

    run(go)


@main.command(context_settings=PERCENT_ARG)
@click.argument("percent")
@click.option("--dry-run", is_flag=True, help="Show a unified diff against the live file; change nothing.")
@click.option("--reason", default="", help="Why, for the history.")
@click.option("--force", is_flag=True, help="Widen even when the promotion gate finds v2 unhealthy.")
@click.pass_obj
def apply(obj: Context, percent: str, dry_run: bool, reason: str, force: bool) -> None:
    """Send the whitelist plus PERCENT of users (0-100, two decimals) to v2.

    Widening a live rollout first passes the promotion gate (see `lbsplit check`).
    Returns once nginx serves the new config. Example: lbsplit apply 30 --reason "stage 2"
    """

    def go():
        stage = Stage.at(parse_percent(percent))
        settings = obj.settings()
        if dry_run:
            dry = dry_run_diff(settings, stage)
            for warning in dry.warnings:
                click.echo(warning, err=True)
            click.echo(dry.diff, nl=False)
            return
        _apply(settings, stage, reason, force)

    run(go)


def _apply(settings: Settings, stage: Stage, reason: str, force: bool) -> None:
    from .gate import precheck_for

    txn = Transaction(settings, f"apply {stage.percent}", reason)
    echo_outcome(txn.run(stage, precheck=precheck_for(stage, force)))


def _next_stage(settings: Settings) -> Stage:
    if not settings.stages:
        raise ConfigError("stages: not set; add e.g. stages = [10, 30, 100] to the config")
    state = StateStore(settings.state_dir).read_state()
    current = state.hundredths if state and state.v2_enabled else -1
    higher = [s for s in settings.stages if s > current]
    if not higher:
        raise ConfigError(f"stages: v2 is already at the last stage ({settings.stages[-1] / 100:g}%)")
    return Stage.at(higher[0])


@main.command()
@click.option("--reason", default="", help="Why, for the history.")
@click.option("--force", is_flag=True, help="Promote even when the gate finds v2 unhealthy.")
@click.pass_obj
def promote(obj: Context, reason: str, force: bool) -> None:
    """Move to the next stage of `stages` through the promotion gate.

    Example: with stages = [10, 30, 100] and v2 at 10%, `lbsplit promote` applies 30.
    """

    def go():
        settings = obj.settings()
        _apply(settings, _next_stage(settings), reason, force)

    run(go)


@main.command(context_settings=PERCENT_ARG)
@click.argument("percent", required=False)
@click.pass_obj
def check(obj: Context, percent: str | None) -> None:
    """Print the promotion checklist for PERCENT (default: the next stage) without acting.

    v2's health against that stage's thresholds, whether the revert config passes
    nginx -t, and whether the watchdog is running. Exit 8 when an item fails.
    Example: lbsplit check 100
    """

    def go():
        from .gate import GateRefused, checklist

        settings = obj.settings()
        stage = Stage.at(parse_percent(percent)) if percent is not None else _next_stage(settings)
        txn = Transaction(settings, "check")
        txn.store.ensure()
        with files.Lock(txn.store.lock_path, settings.lock_timeout, "check"):
            txn.repair()
            items = checklist(txn, stage)
        click.echo(f"promotion checklist for v2 at {stage.describe()}:")
        for item in items:
            click.echo(f"  {item.line()}")
        if any(not i.ok and i.blocking for i in items):
            raise GateRefused(f"v2 is not ready for {stage.describe()}")

    run(go)


@main.command()
@click.option("--once", "mode", flag_value="once", help="Exactly one check, then exit.")
@click.option("--loop", "mode", flag_value="loop", help="Check forever at the stage's interval (systemd service).")
@click.pass_obj
def watchdog(obj: Context, mode: str | None) -> None:
    """Check v2's health at the stage's frequency and revert on a sustained breach.

    For cron, every minute: the run makes the checks that one minute holds (4 at 15 s)
    and ends before the next. Exit 10 when it reverted, 11 when the revert failed.
    Example crontab line: * * * * * lbsplit --config /etc/lbsplit.toml watchdog
    """

    def go():
        from .watchdog import Watchdog

        settings = obj.settings(for_revert=True)
        health = settings.require_health()
        if health is None:
            raise ConfigError("health: no [health] section; add one (url = v2's health endpoint) to use the watchdog")
        code = Watchdog(settings, health, echo=lambda m: click.echo(m, err=True)).run(mode or "cron")
        sys.exit(code)

    run(go)


@main.command()
@click.option("--reason", default="", help="Why, for the history.")
@click.pass_obj
def revert(obj: Context, reason: str) -> None:
    """Turn v2 off: everyone, whitelist included, back on v1.

    Needs only nginx: no health endpoint, no network, not even a valid [split] section.
    Example: lbsplit revert --reason "error rate 7%"
    """

    def go():
        settings = obj.settings(for_revert=True)
        echo_outcome(Transaction(settings, "revert", reason).run(Stage.off(), tolerate_repair_failure=True))

    run(go)


@main.command(context_settings=PERCENT_ARG)
@click.argument("percent")
@click.pass_obj
def render(obj: Context, percent: str) -> None:
    """Print the lbsplit.conf that `apply PERCENT` would write; touch nothing.

    PERCENT may be "off" for the revert config. Example: lbsplit render 10
    """

    def go():
        stage = Stage.off() if percent == "off" else Stage.at(parse_percent(percent))
        settings = obj.settings(for_revert=not stage.v2_enabled)
        prepared = plan(settings, stage)
        for warning in prepared.warnings:
            click.echo(warning, err=True)
        click.echo(prepared.checked_text(StateStore(settings.state_dir).last_generation() + 1), nl=False)

    run(go)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status(obj: Context, as_json: bool) -> None:
    """Show the live stage and whether nginx really serves it. Example: lbsplit status --json"""

    def go():
        s = live_status(obj.settings(for_revert=True))
        if as_json:
            click.echo(json.dumps(s, indent=2))
            return
        if s["generation"] is None:
            click.echo("nothing applied yet; run `lbsplit init`, then `lbsplit apply PERCENT`")
            return
        if s["v2_enabled"]:
            click.echo(f"v2:          on, {s['percent']:g}% of users plus the whitelist ({s['mode']} mode)")
        else:
            click.echo("v2:          off (everyone on v1)")
        click.echo(f"generation:  {s['generation']}")
        click.echo(f"applied:     {s['applied_at']} by {s['applied_by']} ({s['command']})")
        if not s["nginx_running"]:
            click.echo("serving:     no, nginx is not running")
        elif s["serving"]:
            click.echo(f"serving:     yes, nginx answers generation {s['serving_generation']}")
        else:
            click.echo(f"serving:     NO, nginx answers generation {s['serving_generation']}")
        if s["unfinished_transaction"]:
            click.echo(f"unfinished:  `{s['unfinished_transaction']}` was interrupted; run `lbsplit repair`")
        if s["in_progress"]:
            click.echo(f"running:     `{s['in_progress']}` is in progress")

    run(go)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("-n", "--limit", type=int, default=0, help="Only the last N entries.")
@click.pass_obj
def history(obj: Context, as_json: bool, limit: int) -> None:
    """One line per change: time, user, command, from -> to, reason. Example: lbsplit history -n 5"""

    def go():
        entries = StateStore(obj.settings(for_revert=True).state_dir).read_history()
        if limit > 0:
            entries = entries[-limit:]
        for e in entries:
            if as_json:
                click.echo(json.dumps(e, ensure_ascii=False))
            else:
                reason = f"  reason: {e['reason']}" if e.get("reason") else ""
                click.echo(
                    f"{e['time']}  {e['user']}  {e['command']}  {e['from']} -> {e['to']}  "
                    f"gen {e.get('generation')}  {e.get('result', '')}{reason}"
                )

    run(go)


@main.command()
@click.argument("user_id")
@click.option("--percent", default=None, help="Explain under this percent (and the config's whitelist) instead of the live one.")
@click.option("--fallback", default=None, metavar="VALUE", help="Value of the fallback key (e.g. the client IP) for an empty id.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output; has \"variant\": \"v1\"/\"v2\".")
@click.pass_obj
def route(obj: Context, user_id: str, percent: str | None, fallback: str | None, as_json: bool) -> None:
    """Which variant USER_ID gets, and why, computed exactly as nginx does.

    Example: lbsplit route test_user_001   or   lbsplit route u42 --percent 30 --json
    """

    def go():
        from .route import explain, whitelist_from_live
        from .validate import fold_case
        from .whitelist import load as load_whitelist

        if percent is not None:
            settings = obj.settings()
            _, split = settings.require_rollout()
            stage = Stage.at(parse_percent(percent))
            keys = {fold_case(i) for i in load_whitelist(split).ids}
            mode, fallback_name = split.mode, split.fallback_key
        else:
            settings = obj.settings(for_revert=True)
            state = StateStore(settings.state_dir).read_state()
            if state is None:
                raise ConfigError("route: nothing is applied yet; pass --percent P to ask about a stage")
            stage = Stage.at(state.hundredths) if state.v2_enabled else Stage.off()
            live = (files.read_bytes(settings.nginx.live_file) or b"").decode("utf-8", errors="replace")
            keys = whitelist_from_live(live)
            mode = state.mode
            fallback_name = settings.split.fallback_key if settings.split else "$remote_addr"
        answer = explain(user_id, stage, mode, keys, fallback, fallback_name)
        if as_json:
            click.echo(json.dumps(answer.as_dict(), ensure_ascii=False, indent=2))
        else:
            click.echo(f"{answer.variant}: {answer.reason}")

    run(go)


@main.command()
@click.option("--window", default="5m", show_default=True, help="How far back: 30s, 5m, 1h.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def report(obj: Context, window: str, as_json: bool) -> None:
    """v1 and v2 side by side, from nginx's access log: requests, error and timeout rates, latency.

    Needs [health] access_log and `access_log PATH lbsplit;` in nginx. Example: lbsplit report --window 1m
    """

    def go():
        import time as _time

        from .logsource import parse_duration, read_window, variant_of_addr

        try:
            seconds = parse_duration(window)
        except ValueError as e:
            raise ConfigError(f"--window: {e}") from None
        settings = obj.settings(for_revert=True)
        health = settings.require_health()
        if health is None or health.access_log is None:
            raise ConfigError("health.access_log: not set; add it (and `access_log PATH lbsplit;` in nginx) to use report")
        now = _time.time()
        try:
            stats = read_window(health.access_log, seconds, now, variant_of_addr(settings.v1, settings.v2))
        except OSError as e:
            raise EnvironmentProblem(f"health.access_log: cannot read {health.access_log}: {e.strerror}") from None
        table = {v: st.as_dict() for v, st in sorted(stats.stats(now - seconds, now).items())}
        if as_json:
            click.echo(json.dumps({"window_seconds": seconds, "log": str(health.access_log), "variants": table}, indent=2))
            return
        click.echo(f"last {window} of {health.access_log}")
        click.echo(f"{'variant':<8} {'requests':>9} {'errors':>8} {'timeouts':>9} {'avg':>9} {'p95':>9}")
        for variant, row in table.items():
            def pct(x):
                return "-" if x is None else f"{100 * x:.2f}%"

            def sec(x):
                return "-" if x is None else f"{x:.3f}s"

            click.echo(f"{variant:<8} {row['requests']:>9} {pct(row['error_rate']):>8} {pct(row['timeout_rate']):>9} "
                       f"{sec(row['avg_response_time']):>9} {sec(row['p95_response_time']):>9}")
        low = [v for v, row in table.items() if row["requests"] < health.min_requests]
        if low:
            click.echo(f"not enough data to judge {', '.join(low)}: fewer than {health.min_requests} requests "
                       "(health.min_requests)")

    run(go)


@main.command()
@click.pass_obj
def repair(obj: Context) -> None:
    """Finish or roll back a command that was interrupted (kill -9, power loss).

    Every mutating command does this first anyway. Example: lbsplit repair
    """

    def go():
        settings = obj.settings(for_revert=True)
        txn = Transaction(settings, "repair")
        txn.store.ensure()
        with files.Lock(txn.store.lock_path, settings.lock_timeout, "repair"):
            click.echo(txn.repair() or "nothing to repair")

    run(go)


if __name__ == "__main__":  # pragma: no cover
    main()
