"""The command line: parse, call the library once, print, turn LbsplitError into a message and an exit code."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from . import __version__, timing
from .config import Settings, find_config, load
from .errors import ConfigError, ExitCode, GateRefused, Interrupted, LbsplitError, NotServing
from .model import Change, Stage, format_span, parse_percent
from .rollout import planning, transaction
from .rollout.state import DamagedFile
from .app import commands
from .watch import gate

# The read-only views (status, plan, alerts, route, report) load their modules inside their
# commands: `lbsplit apply` starts without them.

PERCENT_ARG = {"ignore_unknown_options": True}  # so that "-5" reaches our own validation

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
reason_option = click.option("--reason", default="", help="Why, for the history.")
unreachable_option = click.option(
    "--allow-unreachable", is_flag=True,
    help="With [fleet]: change the reachable members even while some member's agent does not answer "
         "(they are named as skipped). Without it the change is refused, exit 12.")


class Context:
    def __init__(self, config: str | None):
        self.config_path = find_config(config)

    def settings(self, for_revert: bool = False) -> Settings:
        return load(self.config_path, for_revert=for_revert)

    def settings_for_revert(self) -> Settings:
        """The config as a revert reads it: problems outside what a revert needs are warnings."""
        settings = load(self.config_path, for_revert=True)
        for warning in settings.warnings:
            click.echo(f"lbsplit: warning: ignored for this revert: {warning}", err=True)
        return settings


def _unraisable(report) -> None:
    """An interruption Python dropped (raised in a finalizer): the transaction raises it again at its next
    step, so it is not printed as a traceback here. Anything else is reported as Python would."""
    if not isinstance(report.exc_value, Interrupted):
        sys.__unraisablehook__(report)


def run(fn):
    """Call the library; expected failures become one message and the error's exit code."""
    timing.entered()
    sys.unraisablehook = _unraisable
    try:
        return fn()
    except (LbsplitError, Interrupted) as e:
        click.echo(f"lbsplit: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # Ctrl-C outside a transaction (which turns it into Interrupted itself)
        click.echo("lbsplit: interrupted by SIGINT; nothing was changed", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    finally:
        timing.write()


def echo_lines(change: Change) -> None:
    for line in change.messages:
        click.echo(line)


def stage_arg(percent: str) -> Stage:
    return Stage.at(parse_percent(percent))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", metavar="PATH", help="Config file (default: $LBSPLIT_CONFIG, else ./lbsplit.toml).")
@click.version_option(__version__, prog_name="lbsplit")
@click.pass_context
def main(ctx: click.Context, config: str | None) -> None:
    """Staged (canary) releases on plain nginx: sticky per-user splits, whitelists, instant revert.

    \b
    lbsplit init          write the v1-only lbsplit.conf to include in nginx
    lbsplit plan          the plan's stages, thresholds and where the rollout stands
    lbsplit apply 10      whitelist + 10% of users on v2
    lbsplit promote       the next stage, through the gate (health, soak, checks)
    lbsplit revert        everyone back on v1, now
    lbsplit status        what is live, and is nginx really serving it
    """
    ctx.obj = Context(config)


@main.command()
@click.pass_obj
def init(obj: Context) -> None:
    """Write the first lbsplit.conf (everyone on v1) and check it with nginx -t; no reload.

    Run it once, then add `include <output_dir>/lbsplit.conf;` to nginx's http block.
    Example: lbsplit --config /etc/lbsplit/lbsplit.toml init
    """

    def go():
        settings = obj.settings(for_revert=True)
        echo_lines(transaction.init(settings))
        click.echo(f"Add at http level in nginx:  include {settings.nginx.live_file};")
        click.echo("and proxy with:              proxy_pass http://$lbsplit_upstream;")

    run(go)


@main.command(context_settings=PERCENT_ARG)
@click.argument("percent")
@click.option("--dry-run", is_flag=True, help="Show a unified diff against the live file; change nothing.")
@reason_option
@click.option("--force", is_flag=True, help="Widen even when the promotion gate finds v2 unhealthy.")
@unreachable_option
@click.pass_obj
def apply(obj: Context, percent: str, dry_run: bool, reason: str, force: bool, allow_unreachable: bool) -> None:
    """Send the whitelist plus PERCENT of users (0-100, two decimals) to v2.

    Widening (also from off) first passes the promotion gate (see `lbsplit check`).
    Returns once nginx serves the new config. With [fleet]: every member, in two phases
    (propose, commit), or none of them; refused while a member is unreachable unless
    --allow-unreachable. Example: lbsplit apply 30 --reason "stage 2"
    """

    def go():
        stage = stage_arg(percent)
        settings = obj.settings()
        if dry_run:
            dry = planning.dry_run_diff(settings, stage)
            for warning in dry.warnings:
                click.echo(warning, err=True)
            click.echo(dry.diff, nl=False)
            return
        echo_lines(commands.apply(settings, stage, reason, force, allow_unreachable))

    run(go)


@main.command()
@reason_option
@click.option("--force", is_flag=True, help="Promote even when the gate refuses (recorded in the history).")
@click.option("--confirm", "confirm", multiple=True, metavar="ITEM",
              help="Record that you checked ITEM, a manual check the next stage requires (repeatable).")
@unreachable_option
@click.pass_obj
def promote(obj: Context, reason: str, force: bool, confirm: tuple[str, ...], allow_unreachable: bool) -> None:
    """Move to the next stage of `stages` through the promotion gate: health, soak time, manual checks.

    Example: lbsplit promote --confirm "user feedback positive" --reason "survey 2026-12-01"
    """
    run(lambda: echo_lines(commands.promote(obj.settings(), reason, force, confirm, allow_unreachable)))


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
        stage, items = commands.check(obj.settings(), stage_arg(percent) if percent is not None else None)
        if stage is None:
            click.echo("v2 is at the last stage: nothing to promote (give a PERCENT to check one)")
            return
        click.echo(f"promotion checklist for v2 at {stage.describe()}:")
        for item in items:
            click.echo(f"  {item.line()}")
        if gate.refuses(items):
            raise GateRefused(f"v2 is not ready for {stage.describe()}")

    run(go)


@main.command()
@click.option("--once", is_flag=True, help="Exactly one check, then exit.")
@click.option("--loop", is_flag=True, help="Check forever at the stage's interval (systemd service).")
@click.pass_obj
def watchdog(obj: Context, once: bool, loop: bool) -> None:
    """Check v2's health at the stage's frequency and revert on a sustained breach.

    For cron, every minute: the run makes the checks that one minute holds at the live stage's
    check_every (one a minute at 10%, four at 15 s at 100% with the plan's defaults; see
    `lbsplit plan`) and ends before the next. Exit 10 when it reverted, 11 when it cannot act (act now).
    With [fleet]: one host's watchdog leads (an etcd lease) and reverts the whole fleet; the
    others exit 0 naming the leader (with --loop they stand by and take over).
    Example crontab line: * * * * * lbsplit --config /etc/lbsplit/lbsplit.toml watchdog
    """

    def go():
        if once and loop:
            raise ConfigError("--once and --loop: choose one (or neither: the checks one cron minute holds)")
        mode = "once" if once else "loop" if loop else "cron"
        settings = obj.settings_for_revert()
        health = settings.require_health()
        if health is None:
            raise ConfigError("health: no [health] section; add one (url = v2's health endpoint) to use the watchdog")
        chatty = sys.stderr.isatty()
        sys.exit(commands.watchdog(settings, health, mode, lambda m: click.echo(m, err=True), chatty))

    run(go)


@main.command()
@reason_option
@click.option("--local", "local", is_flag=True,
              help="With [fleet]: revert this host only, without etcd; its agent then ignores the fleet until "
                   "`lbsplit rejoin`.")
@click.pass_obj
def revert(obj: Context, reason: str, local: bool) -> None:
    """Turn v2 off: everyone, whitelist included, back on v1.

    Needs only nginx: no health endpoint, no network, not even a valid [split] section.
    With [fleet]: one write to etcd that every reachable member applies; exit 12 names each
    unreachable member and what it last served. --local is the break-glass on one host.
    Example: lbsplit revert --reason "error rate 7%"
    """

    run(lambda: echo_lines(commands.revert(obj.settings_for_revert(), reason, local)))


@main.command()
@click.pass_obj
def rejoin(obj: Context) -> None:
    """With [fleet]: clear this host's `revert --local` override; its agent follows the fleet again.

    The agent then applies the fleet's desired stage here. Example: lbsplit rejoin
    """

    run(lambda: click.echo(commands.rejoin(obj.settings(for_revert=True))))


@main.command()
@click.argument("host")
@reason_option
@click.pass_obj
def forget(obj: Context, host: str, reason: str) -> None:
    """With [fleet]: remove HOST, a member that is gone for good (its agent stopped), from the fleet.

    Until then an unreachable member makes apply refuse and revert and status exit 12. Recorded
    in the fleet's history. Example: lbsplit forget lb-3 --reason "decommissioned"
    """
    run(lambda: click.echo(commands.forget(obj.settings(for_revert=True), host, reason)))


@main.command()
@click.pass_obj
def agent(obj: Context) -> None:
    """With [fleet]: follow the fleet's desired state on this load balancer (run it as a service).

    Registers this host in etcd under a lease, validates and applies every fleet change with the
    local transaction, and reports what this host serves. Stops on SIGTERM. See
    docs/examples/lbsplit-agent.service. Example: lbsplit --config /etc/lbsplit/lbsplit.toml agent
    """
    run(lambda: sys.exit(commands.agent(obj.config_path, lambda m: click.echo(f"lbsplit agent: {m}", err=True))))


@main.command(context_settings=PERCENT_ARG)
@click.argument("percent")
@click.option("--whitelist-file", "map_file", is_flag=True, help="Print the whitelist's map file (that lbsplit.conf includes) instead.")
@click.pass_obj
def render(obj: Context, percent: str, map_file: bool) -> None:
    """Print the lbsplit.conf that `apply PERCENT` would write; touch nothing.

    PERCENT may be "off" for the revert config. Example: lbsplit render 10 --whitelist-file
    """

    def go():
        stage = Stage.off() if percent == "off" else stage_arg(percent)
        settings = obj.settings(for_revert=not stage.v2_enabled)
        text, warnings = planning.render_text(settings, stage, map_file)
        for warning in warnings:
            click.echo(warning, err=True)
        click.echo(text, nl=False)

    run(go)


@main.command()
@click.option("--listen", default="127.0.0.1:8089", show_default=True, metavar="ADDRESS:PORT",
              help="Where the page is served.")
@click.option("--refresh", default=10, show_default=True, type=click.IntRange(0, 3600), metavar="SECONDS",
              help="The page reloads itself this often (0: never).")
@click.option("--allow-actions", is_flag=True, help="Show revert and promote buttons (needs --token-file).")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --allow-actions: the file holding the token the buttons must send.")
@click.pass_obj
def dashboard(obj: Context, listen: str, refresh: int, allow_actions: bool, token_file: Path | None) -> None:
    """Serve the rollout as a web page until stopped: the stage, v2 against v1 per check, the history,
    the next stage's checklist; /api/status is the JSON. Read-only unless --allow-actions.

    Example: lbsplit dashboard --listen 127.0.0.1:8089   then open http://127.0.0.1:8089/
    """

    def go():
        from .web import server  # noqa: PLC0415 - only this command loads it; `lbsplit --help` and the others start without it

        if allow_actions and token_file is None:
            raise ConfigError("--allow-actions: give --token-file F, the file holding the token the buttons send")
        if token_file is not None and not allow_actions:
            raise ConfigError("--token-file: only used with --allow-actions; add it, or drop --token-file")
        token = server.read_token(token_file) if token_file is not None else None
        obj.settings(for_revert=True)  # a config that does not load stops here, with its one-line error
        board = server.Dashboard(lambda: obj.settings(for_revert=True), obj.config_path, refresh, token)

        def ready(address):
            host, port = address[0], address[1]
            shown = f"[{host}]" if ":" in host else host
            click.echo(f"lbsplit dashboard: serving http://{shown}:{port}/ "
                       f"({'actions on' if token else 'read-only'}); Ctrl-C stops it", err=True)

        try:
            server.serve(board, listen, ready)
        except KeyboardInterrupt:
            click.echo("lbsplit dashboard: stopped", err=True)

    run(go)


SNIPPETS = {"proxy": "lbsplit-proxy.conf", "site": "example-site.conf"}


@main.command()
@click.argument("name", type=click.Choice(sorted(SNIPPETS)))
@click.option("--path", "show_path", is_flag=True, help="Print where the file is installed instead of its text.")
def snippet(name: str, show_path: bool) -> None:
    """Print an nginx snippet that ships with lbsplit; needs no config.

    proxy: the lines for the location that proxies to $lbsplit_upstream (HTTP/1.1 for keep-alive, the
    client's Host); site: an example server block. Example: lbsplit snippet proxy > /etc/nginx/lbsplit-proxy.conf
    """
    from . import resources  # noqa: PLC0415 - only this command loads it; `lbsplit --help` and the others start without it

    def go():
        path = resources.snippets_dir() / SNIPPETS[name]
        click.echo(str(path) if show_path else path.read_text(encoding="utf-8"), nl=show_path)

    run(go)


@main.command()
@json_option
@click.option("--local", "local", is_flag=True, help="With [fleet]: this host only, without etcd.")
@click.pass_obj
def status(obj: Context, as_json: bool, local: bool) -> None:
    """Show the live stage and whether nginx really serves it; exit 9 when it does not.

    With [fleet]: the desired state and every member (reachable, change, stage nginx serves,
    generation, served, last error); exit 9 when a reachable member does not serve the desired
    state, else 12 while a member is unreachable.
    Example: lbsplit status --json
    """

    def go():
        from .watch import planview  # noqa: PLC0415 - only this command loads it; `lbsplit --help` and the others start without it

        settings = obj.settings(for_revert=True)
        f = commands.fleet_status(settings, local)
        if f is not None:
            click.echo(json.dumps({k: v for k, v in f.items() if k != "lines"}, indent=2) if as_json
                       else "\n".join(f["lines"]))
            commands.require_serving(f)
            return
        s = planview.full_status(settings)
        if as_json:
            click.echo(json.dumps(s, indent=2))
        else:
            for line in status_lines(s):
                click.echo(line)
        if s["damaged"]:
            raise DamagedFile(s["damaged"][0])
        if s["generation"] is not None and not s["serving"]:
            raise NotServing("nginx does not serve what lbsplit's state says is live"
                             + ("" if s["nginx_running"] else " (nginx is not running)")
                             + ("; it serves a revert that state_dir had no room to record: run `lbsplit repair`"
                                if s.get("unrecorded_revert") is not None else ""))

    run(go)


def status_lines(s: dict) -> list[str]:
    """The human form of `status`."""
    lines = [f"damaged:     {d}" for d in s["damaged"]]
    if s["generation"] is None:
        return lines + ["nothing applied yet; run `lbsplit init`, then `lbsplit apply PERCENT`"]
    if s["v2_enabled"]:
        lines.append(f"v2:          on, {s['percent']:g}% of users plus the whitelist ({s['mode']} mode)")
    else:
        lines.append("v2:          off (everyone on v1)")
    lines.append(f"generation:  {s['generation']}")
    lines.append(f"applied:     {s['applied_at']} by {s['applied_by']} ({s['command']})")
    if not s["nginx_running"]:
        lines.append("serving:     no, nginx is not running")
    elif s["serving"]:
        workers = (s["serving_answer"] or {}).get("workers")
        live = f" from all {len(workers)} workers (lua runtime: stage set live)" if isinstance(workers, list) else ""
        lines.append(f"serving:     yes, nginx answers generation {s['serving_generation']}{live}")
    elif s["serving_answer"] is None:  # nginx runs, but nothing answers on status_listen
        lines.append("serving:     NO, nginx runs but nothing answers on nginx.status_listen: does nginx include "
                     "lbsplit.conf yet (and was it reloaded since)?")
    elif s.get("unrecorded_revert") is not None:
        lines.append(f"serving:     NO: a revert (generation {s['unrecorded_revert']}, everyone on v1) is live but was "
                     "not recorded (state_dir was full); free some space there and run `lbsplit repair`")
    else:
        lines.append(f"serving:     NO, nginx answers {json.dumps(s['serving_answer'])}")
        if s["served_owner"] not in (None, s["owner"]):
            lines.append(f"owner:       nginx serves the file of another lbsplit config (owner {s['served_owner']}, "
                         f"this one is {s['owner']}); two configs share one output_dir")
    plan = s.get("plan") or {}
    if plan.get("position"):
        line = f"plan:        stage {plan['position']} of {plan['of']}"
        if plan.get("soak_s"):
            line += f", clean for {format_span(plan['clean_for_s'])} of {format_span(plan['soak_s'])} watched"
            if plan.get("soak_note"):
                line += f" ({plan['soak_note']})"
        line += "; release complete" if plan.get("release_complete") else (
            f"; next {plan['next']}%" if plan.get("next") is not None else "")
        lines.append(line)
    wd = s.get("watchdog") or {}
    if wd.get("last_check_at"):
        # One entry per (level, rule, source): with source = "both" a rule breached in the endpoint's numbers and in
        # the access log's is two alerts, named by source; alerts of a stage that is no longer live are not shown.
        shown = dict.fromkeys(f"{a['level']} {a['rule']}" + (f" ({a['source']})" if a.get("source") else "")
                              for a in wd["active_alerts"] if isinstance(a, dict)) if s["v2_enabled"] else {}
        alerts = ", ".join(shown) or "none"
        lines.append(f"watchdog:    last check {wd['last_outcome']}, {wd['failures_in_a_row']} failed in a row, "
                     f"active alerts: {alerts}")
    if s["unfinished_transaction"]:
        lines.append(f"unfinished:  `{s['unfinished_transaction']}` was interrupted; run `lbsplit repair`")
    if s["in_progress"]:
        lines.append(f"running:     `{s['in_progress']}` is in progress")
    return lines


@main.command(name="plan")
@json_option
@click.option("--check", "with_gate", is_flag=True, help="Also run the promotion gate for the next stage (probes v2).")
@click.pass_obj
def plan_command(obj: Context, as_json: bool, with_gate: bool) -> None:
    """Print the rollout plan (stages, thresholds, levels, windows, intervals) and where the rollout stands.

    With --check, exit 8 when the gate refuses the next stage (as `lbsplit check` does).
    Example: lbsplit plan --check
    """

    def go():
        from .watch import planview  # noqa: PLC0415 - only this command loads it; `lbsplit --help` and the others start without it

        settings = obj.settings_for_revert()
        view = planview.plan_view(settings)
        if with_gate:
            stage, items = commands.check(obj.settings(), None)
            view["gate"] = None if stage is None else {
                "stage": stage.describe(), "refuses": gate.refuses(items),
                "items": [{"name": i.name, "ok": i.ok, "blocking": i.blocking, "detail": i.detail} for i in items]}
        if as_json:
            click.echo(json.dumps(view, indent=2))
        else:
            for line in planview.plan_lines(view):
                click.echo(line)
        if view.get("gate") and not as_json:
            verdict = "refuses" if view["gate"]["refuses"] else "would let it through"
            click.echo(f"gate for {view['gate']['stage']}: {verdict}")
            for item in items:
                click.echo(f"  {item.line()}")
        if view.get("gate") and view["gate"]["refuses"]:  # the same exit code as `lbsplit check`
            raise GateRefused(f"the promotion gate refuses {view['gate']['stage']} (see the items above)")

    run(go)


@main.command()
@json_option
@click.pass_obj
def alerts(obj: Context, as_json: bool) -> None:
    """List the active alerts: level, rule, value against its limit, since when, cooldown left.

    Example: lbsplit alerts --json
    """

    def go():
        from .watch import planview  # noqa: PLC0415 - only this command loads it; `lbsplit --help` and the others start without it

        view = planview.alerts_view(obj.settings_for_revert())
        if as_json:
            click.echo(json.dumps(view, indent=2))
        else:
            for line in planview.alert_lines(view, time.time()):
                click.echo(line)

    run(go)


@main.command()
@json_option
@click.option("-n", "--limit", type=int, default=None, help="Only the last N entries (N >= 1).")
@click.option("--local", "local", is_flag=True, help="With [fleet]: this host's own history instead of the fleet's.")
@click.pass_obj
def history(obj: Context, as_json: bool, limit: int, local: bool) -> None:
    """One line per change: time, user, command, from -> to, reason. With [fleet]: the fleet's changes
    from etcd, with each host's result (--local: this host's own). Example: lbsplit history -n 5"""

    def go():
        if limit is not None and limit < 1:
            raise ConfigError(f"-n: {limit} is not a number of entries; give 1 or more, or leave -n out for all")
        entries, in_fleet = commands.history(obj.settings(for_revert=True), local)
        if not entries and not as_json:
            click.echo("no history yet: nothing has been applied")
        for e in entries[-limit:] if limit else entries:
            if as_json:
                click.echo(json.dumps(e, ensure_ascii=False))
            else:
                reason = f"  reason: {e.get('reason')}" if e.get("reason") else ""
                where = f"change {e.get('id')}" if in_fleet else f"gen {e.get('generation')}"
                forced = f"  FORCED past: {'; '.join(e['forced'])}" if e.get("forced") else ""
                click.echo(
                    f"{e.get('time')}  {e.get('user')}  {e.get('command')}  {e.get('from')} -> {e.get('to')}  "
                    f"{where}  {e.get('result', '')}{reason}{forced}"
                )
                if in_fleet and e.get("hosts"):
                    click.echo("    " + ", ".join(f"{h}: {r}" for h, r in sorted(e["hosts"].items())))

    run(go)


@main.command()
@click.argument("user_id")
@click.option("--percent", default=None, help="Explain under this percent (and the config's whitelist) instead of the live one.")
@click.option("--fallback", default=None, metavar="VALUE", help="Value of the fallback key (e.g. the client IP) for an empty id.")
@click.option("--force-header", "header_value", default=None, metavar="VALUE",
              help="What the request sends in split.force_header (the QA override), e.g. v2.")
@click.option("--force-cookie", "cookie_value", default=None, metavar="VALUE",
              help="What the request sends in the split.force_cookie cookie (the QA override), e.g. v1.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output; has \"variant\": \"v1\"/\"v2\".")
@click.pass_obj
def route(obj: Context, user_id: str, percent: str | None, fallback: str | None, header_value: str | None,
          cookie_value: str | None, as_json: bool) -> None:
    """Which variant USER_ID gets, and why, computed exactly as nginx does. USER_ID "-": ids from stdin, one per
    line, answered as one JSON line each.

    Example: lbsplit route test_user_001   or   lbsplit route u42 --percent 30 --json   or   lbsplit route - < ids
    or   lbsplit route u42 --force-header v2
    """

    def go():
        from .rollout import status as status_mod  # noqa: PLC0415 - only this command loads it; `lbsplit --help` and the others start without it

        stage = stage_arg(percent) if percent is not None else None
        explain = status_mod.router(obj.settings(for_revert=stage is None), stage, fallback, header_value, cookie_value)
        if user_id == "-":
            for line in sys.stdin:
                click.echo(json.dumps(explain(line.rstrip("\r\n")).as_dict(), ensure_ascii=False))
            return
        answer = explain(user_id)
        if as_json:
            click.echo(json.dumps(answer.as_dict(), ensure_ascii=False, indent=2))
        else:
            click.echo(f"{answer.variant}: {answer.reason}")

    run(go)


def _pct(x):
    return "-" if x is None else f"{100 * x:.2f}%"


def _sec(x):
    return "-" if x is None else f"{x:.3f}s"


@main.command()
@click.option("--window", default="5m", show_default=True, help="How far back: 30s, 5m, 1h.")
@json_option
@click.pass_obj
def report(obj: Context, window: str, as_json: bool) -> None:
    """v1 and v2 side by side, from nginx's access log: requests, error and timeout rates, latency.

    Needs [health] access_log and `access_log PATH lbsplit;` in nginx. Example: lbsplit report --window 1m
    """

    def go():
        from .watch import sources  # noqa: PLC0415 - only this command loads it; `lbsplit --help` and the others start without it
        from .watch.logsource import parse_duration  # noqa: PLC0415 - only this command loads it; `lbsplit --help` and the others start without it

        try:
            seconds = parse_duration(window)
        except ValueError as e:
            raise ConfigError(f"--window: {e}") from None
        r = sources.report(obj.settings(for_revert=True), seconds)
        if as_json:
            click.echo(json.dumps({k: r[k] for k in ("window_seconds", "log", "variants")}, indent=2))
            return
        click.echo(f"last {window} of {r['log']}")
        click.echo(f"{'variant':<8} {'requests':>9} {'errors':>8} {'timeouts':>9} {'avg':>9} {'p95':>9}")
        for variant, row in r["variants"].items():
            click.echo(f"{variant:<8} {row['requests']:>9} {_pct(row['error_rate']):>8} {_pct(row['timeout_rate']):>9} "
                       f"{_sec(row['avg_response_time']):>9} {_sec(row['p95_response_time']):>9}")
        if r["not_enough_data"]:
            click.echo(f"not enough data to judge {', '.join(r['not_enough_data'])}: fewer than {r['min_requests']} "
                       "requests (health.min_requests)")

    run(go)


@main.command()
@click.pass_obj
def repair(obj: Context) -> None:
    """Finish or roll back a command that was interrupted (kill -9, power loss).

    Every mutating command does this first anyway. Example: lbsplit repair
    """
    run(lambda: click.echo(transaction.repair(obj.settings(for_revert=True))))


if __name__ == "__main__":  # pragma: no cover
    main()
