"""`lbsplit plan`: the rollout plan as data, and where the rollout stands in it. Reads only."""

from __future__ import annotations

from ..config import DEFAULT_THRESHOLDS, Settings
from ..model import DEFAULT_LEVELS, METRICS, Level, Stage
from ..rollout.state import StateStore

MODES = ("standard", "enhanced", "critical")  # the plan's monitoring modes, by threshold row


def _limit(value: float, metric: str) -> str:
    return f"{100 * value:g}%" if metric.endswith("_rate") else f"{value:g}"


def plan_view(settings: Settings) -> dict:
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
    current = live.hundredths if live is not None and live.v2_enabled else -1
    higher = [h for h in settings.stages if h > current]
    next_stage = Stage.at(higher[0]).percent if higher else None
    return {
        "stages": stages,
        "live": live.describe() if live else "nothing applied yet",
        "position": position,
        "of": len(stages),
        "next": next_stage,
        "health": health is not None,
    }


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
    if not view["health"]:
        lines.append("no [health] section: these are the plan's defaults, and nothing is checked")
    return lines
