"""`lbsplit plan`: the rollout plan as data, and where the rollout stands in it. Reads only."""

from __future__ import annotations

import time

from ..config import Settings
from ..model import DEFAULT_LEVELS, DEFAULT_THRESHOLDS, FINAL_METRIC_ITEMS, METRICS, format_span, Level, next_stage, Stage
from ..rollout.state import StateStore
from ..rollout.status import live_status
from .gate import clean_time, missing_final_metrics, unwatched_note
from .memory import load_state

MODES = ("standard", "enhanced", "critical")  # the plan's monitoring modes, by threshold row


def _limit(value: float, metric: str) -> str:
    return f"{100 * value:g}%" if metric.endswith("_rate") else f"{value:g}"


def plan_view(settings: Settings, clock=time.time) -> dict:
    """Each stage with its thresholds, levels and custom rules; the live stage and the next one."""
    health = settings.health
    rows = health.thresholds if health else DEFAULT_THRESHOLDS
    levels = dict(health.levels) if health else dict(DEFAULT_LEVELS)
    state = StateStore(settings.state_dir).read_state_or_none()
    live = state.stage if state else None
    stages = []
    for number, hundredths in enumerate(settings.stages, start=1):
        row_index, row = next(((i, r) for i, r in enumerate(rows) if hundredths <= r.up_to_hundredths),
                              (len(rows) - 1, rows[-1]))
        custom = []
        for rule in (health.custom if health else ()):
            custom += [{"metric": rule.name, "bound": str(bound), "limit": limit, "level": str(rule.level)}
                       for bound, limit in rule.limits_for(hundredths)]
        stages.append({
            "number": number,
            "percent": Stage.at(hundredths).percent,
            "name": "whitelist only" if hundredths == 0 else f"{Stage.at(hundredths).percent}% of users",
            "mode": MODES[row_index] if row_index < len(MODES) else f"row {row_index + 1}",
            "thresholds": {m: {"limit": row.limit(m), "level": str(levels.get(m, Level.P1))} for m in METRICS},
            "window_s": row.window, "check_every_s": row.check_every, "alert_cooldown_s": row.alert_cooldown,
            "custom": custom,
            "live": live is not None and live.v2_enabled and live.hundredths == hundredths,
        })
    position = next((s["number"] for s in stages if s["live"]), None)
    following = next_stage(settings.stages, live)
    clean = clean_time(settings, state, clock())
    soak = settings.plan.soak_for(live.hundredths) if live is not None and live.v2_enabled else 0.0
    last = bool(settings.stages) and live is not None and live.v2_enabled and live.hundredths == settings.stages[-1]
    return {
        "stages": stages,
        "live": live.describe() if live else "nothing applied yet",
        "position": position,
        "of": len(stages),
        "next": following.percent if following else None,
        "health": health is not None,
        "clean_for_s": clean,
        "soak_s": soak,
        "soak_done": clean is not None and clean >= soak,
        "soak_note": unwatched_note(settings, state, clock()),
        "final_check": final_check(settings),
        "release_complete": last and clean is not None and clean >= soak,
    }


def full_status(settings: Settings, clock=time.time) -> dict:
    """`lbsplit status`: what is live and served, where the rollout stands in the plan, the watchdog's state."""
    out = live_status(settings)
    view = plan_view(settings, clock)
    out["plan"] = {k: view[k] for k in ("position", "of", "next", "clean_for_s", "soak_s", "soak_done", "soak_note",
                                         "release_complete")}
    wd = load_state(StateStore(settings.state_dir).watchdog_path)
    out["watchdog"] = {"last_check_at": wd.last_check_at, "last_outcome": wd.last_outcome or None,
                       "failures_in_a_row": wd.consecutive_failures, "active_alerts": wd.active_alerts}
    return out


def plan_lines(view: dict) -> list[str]:
    """The human form of `lbsplit plan`."""
    head = (f"{'#':>2}  {'stage':<16} {'mode':<9} {'error':>7} {'timeout':>8} {'dead/h':>7} {'avg s':>6} "
            f"{'window':>7} {'every':>6} {'cooldown':>9}")
    lines = [head]
    for s in view["stages"]:
        t = s["thresholds"]
        mark = " <- live" if s["live"] else ""
        lines.append(
            f"{s['number']:>2}  {s['name']:<16} {s['mode']:<9} "
            f"{_limit(t['error_rate']['limit'], 'error_rate'):>7} {_limit(t['timeout_rate']['limit'], 'timeout_rate'):>8} "
            f"{t['dead_letter_growth']['limit']:>7g} {t['avg_response_time']['limit']:>6g} "
            f"{s['window_s']:>6g}s {s['check_every_s']:>5g}s {s['alert_cooldown_s']:>8g}s{mark}")
        for rule in s["custom"]:
            relation = "<=" if rule["bound"] == "max" else ">="
            lines.append(f"      {rule['metric']} {relation} {rule['limit']:g} ({rule['level']})")
    first = view["stages"][0]["thresholds"] if view["stages"] else {}
    lines.append("levels: " + ", ".join(f"{m} {first[m]['level']}" for m in METRICS if m in first)
                 + " (P1 reverts; P2 alerts and holds promotion; P3 informs)")
    where = (f"stage {view['position']} of {view['of']}" if view["position"] else view["live"])
    lines.append(f"live: {where}; next: {view['next'] + '%' if view['next'] is not None else 'none (last stage)'}"
                 + ("; `lbsplit check` shows what the gate says" if view["next"] is not None else ""))
    if view["clean_for_s"] is not None and view["soak_s"]:
        lines.append(f"soak: clean for {format_span(view['clean_for_s'])} of {format_span(view['soak_s'])}"
                     + ("; release complete" if view["release_complete"] else "")
                     + (f"; {view['soak_note']}, so the clock stands still" if view.get("soak_note") else ""))
    if not view["health"]:
        lines.append("no [health] section: these are the plan's defaults, and nothing is checked")
    lines.append("final check before 100% (the plan's ten items):")
    lines += [f"  {'ok  ' if row['covered'] else 'todo'} {row['item']}: {row['by']}" for row in view["final_check"]]
    return lines


def final_check(settings: Settings) -> list[dict]:
    """The plan's final check before 100%, item by item, with what in this config judges each."""
    health = settings.health
    t = health.thresholds_for(10000) if health is not None else DEFAULT_THRESHOLDS[-1]
    watched = "the watchdog, from cron (a stale or never-run one blocks a widening)"
    rows = [("error rate below 3%", f"health threshold error_rate {t.error_rate:g} at 100%", health is not None),
            ("timeout rate below 1%", f"health threshold timeout_rate {t.timeout_rate:g} at 100%", health is not None),
            ("average response time below 20 s", f"health threshold avg_response_time {t.avg_response_time:g} s",
             health is not None)]
    missing = {metric for _, metric, _ in missing_final_metrics(settings)}
    for item, metric, bound in FINAL_METRIC_ITEMS:
        rows.append((item, f"custom metric {metric}" if metric not in missing else
                     f"not configured: add a [[health.metrics]] entry with name = \"{metric}\" and {bound}",
                     metric not in missing))
    checks = settings.plan.checks_for(10000)
    for item in ("performance baseline passed", "user feedback positive"):
        key = "" if item not in settings.plan.advisory else " (not key: warns only)"
        rows.append((item, f"manual check, `promote --confirm \"{item}\"`{key}" if item in checks else
                     "not configured: add it to plan.checks.\"100\"", item in checks))
    rows += [("monitoring running", watched, health is not None),
             ("rollback script ready", "the gate's revert config check (nginx -t inside your config)", True)]
    return [{"item": item, "by": by if covered or by.startswith("not configured") else "no [health] section",
             "covered": covered} for item, by, covered in rows]


def alerts_view(settings: Settings, clock=time.time) -> dict:
    """`lbsplit alerts`: the last check's breaches, with when each started and the cooldown left."""
    store = StateStore(settings.state_dir)
    wd = load_state(store.watchdog_path)
    state = store.read_state_or_none()
    now = clock()
    cooldown_left = 0.0
    if settings.health is not None and state is not None and state.v2_enabled and wd.last_alert_at is not None:
        cooldown = settings.health.thresholds_for(state.hundredths).alert_cooldown
        cooldown_left = max(0.0, wd.last_alert_at + cooldown - now)
    alerts = [a for a in wd.active_alerts if isinstance(a, dict)] if state is not None and state.v2_enabled else []
    return {"alerts": alerts, "last_check_at": wd.last_check_at, "cooldown_left_s": cooldown_left}


def alert_lines(view: dict, now: float) -> list[str]:
    if not view["alerts"]:
        return ["no active alerts" + ("" if view["last_check_at"] else " (the watchdog has not checked v2 yet)")]
    lines = [f"{'level':<5}  {'rule':<24} {'value':>10} {'limit':>10}  since"]
    for a in view["alerts"]:
        value = "-" if a.get("value") is None else f"{a['value']:.4g}"
        limit = "-" if a.get("limit") is None else f"{'>=' if a.get('bound') == 'min' else '<='}{a['limit']:.4g}"
        lines.append(f"{a['level']:<5}  {a['rule']:<24} {value:>10} {limit:>10}  {format_span(now - a['since'])} ago"
                     + (f"  ({a['why']})" if a.get("why") else ""))
    lines.append(f"next alert notification allowed in {format_span(view['cooldown_left_s'])}")
    return lines
