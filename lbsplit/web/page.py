"""The dashboard's page: one HTML text from a view (plain dicts), with its charts as inline SVG.

Pure: no file, clock or network; the server gathers the view (lbsplit.web.server). Everything the
page needs is in this text (no script, style or font from elsewhere: an LB host may have no internet).
"""

from __future__ import annotations

import datetime as dt
import html
import math

from ..model import format_span

# (chart id, title, v2 metric names in order of preference, v1 metric, the limit drawn and the v2 metrics it
# bounds, how values print). The access log's p95 is judged against v1, not against avg_response_time's limit.
CHARTS = (
    ("error-rate", "error rate", ("log_v2_error_rate", "error_rate"), "log_v1_error_rate",
     ("error_rate", ("log_v2_error_rate", "error_rate")), "pct"),
    ("timeout-rate", "timeout rate", ("log_v2_timeout_rate", "timeout_rate"), "log_v1_timeout_rate",
     ("timeout_rate", ("log_v2_timeout_rate", "timeout_rate")), "pct"),
    ("latency", "p95 latency (access log), else average (endpoint)", ("log_v2_p95_response_time", "avg_response_time"),
     "log_v1_p95_response_time", ("avg_response_time", ("avg_response_time",)), "s"),
)
V2_COLOUR, V1_COLOUR, LIMIT_COLOUR = "#d9480f", "#1c7ed6", "#c92a2a"
WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP = 640, 180, 56, 28, 12

STYLE = """
body{font-family:system-ui,sans-serif;margin:0;background:#f8f9fa;color:#212529}
header{background:#212529;color:#fff;padding:12px 20px}header h1{margin:0;font-size:20px}
main{padding:16px 20px;display:grid;gap:16px;grid-template-columns:repeat(auto-fit,minmax(660px,1fr))}
section{background:#fff;border:1px solid #dee2e6;border-radius:6px;padding:12px 16px}
h2{font-size:16px;margin:0 0 8px}table{border-collapse:collapse;width:100%;font-size:13px}
td,th{border-bottom:1px solid #e9ecef;padding:4px 6px;text-align:left;vertical-align:top}
.ok{color:#2b8a3e}.bad{color:#c92a2a;font-weight:600}.warn{color:#e67700}.muted{color:#868e96}
.big{font-size:28px;font-weight:700}form{display:inline-block;margin:4px 8px 4px 0}
button{padding:6px 12px;font-size:14px}button.revert{background:#c92a2a;color:#fff;border:0;border-radius:4px}
svg text{font-size:11px;fill:#495057}figure{margin:8px 0}
"""


def escape(value: object) -> str:
    """HTML-escaped text (None as empty), for the page and for the action result page."""
    return html.escape("" if value is None else str(value), quote=True)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "pct":
        return f"{100 * value:.2f}%"
    if value < 1:
        return f"{value * 1000:.3g} ms"
    return f"{value:.3g} s" if value < 10 else f"{value:.0f} s"


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def series_of(checks: list[dict], names: tuple[str, ...] | str) -> list[tuple[float, float, str]]:
    """(time, value, metric) of the first metric of `names` each check has as a finite number."""
    names = (names,) if isinstance(names, str) else names
    points = []
    for c in checks:
        for name in names:
            value = c["metrics"].get(name)
            if _number(value):
                points.append((float(c["at"]), float(value), name))
                break
    return points


def limit_of(checks: list[dict], metric: str, bounds: tuple[str, ...], v2: list) -> list[tuple[float, float]]:
    """The stage's limit at each check whose v2 point is a metric the limit bounds."""
    bounded = {t for t, _, name in v2 if name in bounds}
    points = []
    for c in checks:
        value = (c.get("limits") or {}).get(metric)
        if float(c["at"]) in bounded and _number(value):
            points.append((float(c["at"]), float(value)))
    return points


def chart(chart_id: str, title: str, v2: list, v1: list, limit: list, unit: str) -> str:
    """One SVG line chart: v2 and v1 over time, the stage's limit as a dashed step line."""
    everything = v2 + v1 + limit
    head = f'<figure id="chart-{chart_id}" data-points="{len(v2)}"><figcaption>{escape(title)}</figcaption>'
    if not v2 and not v1:
        return head + '<p class="muted">no checks recorded yet: the watchdog writes one point per check</p></figure>'
    t0 = min(t for t, _ in everything)
    t1 = max(t for t, _ in everything)
    top = max(v for _, v in everything) or 1.0
    top *= 1.1
    span = (t1 - t0) or 1.0
    plot_w, plot_h = WIDTH - PAD_LEFT - 8, HEIGHT - PAD_BOTTOM - PAD_TOP

    def xy(t: float, v: float) -> str:
        return f"{PAD_LEFT + (t - t0) / span * plot_w:.1f},{PAD_TOP + plot_h - v / top * plot_h:.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
             f'aria-label="{escape(title)}">',
             f'<rect x="{PAD_LEFT}" y="{PAD_TOP}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#ced4da"/>']
    for k in range(5):  # horizontal grid with its values
        v = top * k / 4
        y = PAD_TOP + plot_h - plot_h * k / 4
        parts.append(f'<line x1="{PAD_LEFT}" x2="{PAD_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#f1f3f5"/>'
                     f'<text x="{PAD_LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{escape(_fmt(v, unit))}</text>')
    for t, anchor in ((t0, "start"), (t1, "end")):
        x = PAD_LEFT + (t - t0) / span * plot_w
        parts.append(f'<text x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="{anchor}">'
                     f'{escape(_when(t)[11:19])}</text>')
    if limit:
        steps = []
        for i, (t, v) in enumerate(limit):
            if i:
                steps.append(xy(t, limit[i - 1][1]))
            steps.append(xy(t, v))
        parts.append(f'<polyline class="threshold" points="{" ".join(steps)}" fill="none" stroke="{LIMIT_COLOUR}" '
                     f'stroke-dasharray="6 4" stroke-width="1.5"><title>limit at the stage</title></polyline>')
    for name, points, colour in (("v1", v1, V1_COLOUR), ("v2", v2, V2_COLOUR)):
        if not points:
            continue
        parts.append(f'<polyline class="series-{name}" points="{" ".join(xy(t, v) for t, v in points)}" '
                     f'fill="none" stroke="{colour}" stroke-width="2"/>')
        if len(points) == 1:
            parts.append(f'<circle class="series-{name}" cx="{xy(*points[0]).split(",")[0]}" '
                         f'cy="{xy(*points[0]).split(",")[1]}" r="3" fill="{colour}"/>')
    legend = [("v2", V2_COLOUR, v2), ("v1", V1_COLOUR, v1), ("limit", LIMIT_COLOUR, limit)]
    x = PAD_LEFT + 8
    for label, colour, points in legend:
        if points:
            last = _fmt(points[-1][1], unit)
            parts.append(f'<rect x="{x}" y="{PAD_TOP + 4}" width="10" height="10" fill="{colour}"/>'
                         f'<text x="{x + 14}" y="{PAD_TOP + 13}">{label} {escape(last)}</text>')
            x += 120
    parts.append("</svg>")
    return head + "".join(parts) + "</figure>"


def _stage_text(status: dict) -> str:
    if status.get("generation") is None:
        return "nothing applied yet"
    if not status.get("v2_enabled"):
        return "v2 off (everyone on v1)"
    return f"v2 at {status['percent']:g}% of users plus the whitelist"


def summary(view: dict) -> str:
    status, plan = view["status"], view.get("plan") or {}
    serving = status.get("serving")
    rows = [
        ("stage", f'<span id="stage" class="big">{escape(_stage_text(status))}</span>'),
        ("generation", escape(status.get("generation"))),
        ("plan", escape(f"stage {plan['position']} of {plan['of']}" if plan.get("position") else "not at a plan stage")
         + (escape(f"; next {plan['next']}%") if plan.get("next") is not None else "")),
        ("applied", escape(f"{status.get('applied_at')} by {status.get('applied_by')} ({status.get('command')})")),
        ("nginx serves it", f'<span id="serving" class="{"ok" if serving else "bad"}">'
                            f'{"yes" if serving else "NO"}</span>'
                            + ("" if status.get("nginx_running", True) else " (nginx is not running)")),
    ]
    if plan.get("soak_s"):
        rows.append(("soak", escape(f"clean for {format_span(plan.get('clean_for_s') or 0)} of "
                                f"{format_span(plan['soak_s'])} watched")
                     + (f' <span class="muted">({escape(plan["soak_note"])})</span>' if plan.get("soak_note") else "")))
    wd = status.get("watchdog") or {}
    if wd:
        rows.append(("watchdog", escape(f"last check {wd.get('last_outcome') or '-'} at {_when(wd.get('last_check_at'))}, "
                                    f"{wd.get('failures_in_a_row', 0)} failed in a row")))
        alerts = [a for a in wd.get("active_alerts") or [] if isinstance(a, dict)] if status.get("v2_enabled") else []
        if alerts:
            rows.append(("active alerts", '<span class="warn">' + escape(", ".join(
                f"{a.get('level')} {a.get('rule')}" for a in alerts)) + "</span>"))
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<section id="summary"><h2>Where the rollout stands</h2><table>{body}</table></section>'


def fleet_table(fleet: dict) -> str:
    desired = fleet.get("desired") or {}
    rows = []
    for h in fleet.get("hosts", []):
        reachable = h.get("reachable")
        stage = h.get("stage")
        stage_text = "-" if not isinstance(stage, int) else ("off" if stage < 0 else f"{stage / 100:g}%")
        rows.append(f'<tr class="member"><td>{escape(h.get("host"))}</td>'
                    f'<td class="{"ok" if reachable else "bad"}">{"yes" if reachable else "UNREACHABLE"}</td>'
                    f'<td>{escape(stage_text)}</td><td>{escape(h.get("generation"))}</td>'
                    f'<td class="{"ok" if h.get("served") else "bad"}">{"yes" if h.get("served") else "NO"}</td>'
                    f'<td>{escape(h.get("error") or "")}{" (revert --local)" if h.get("override") else ""}</td></tr>')
    target = desired.get("target")
    head = f"desired: change {escape(desired.get('id'))}, {escape(target)} ({escape(desired.get('phase'))})" if desired else \
        "desired: nothing yet"
    return (f'<section id="fleet"><h2>Fleet members</h2><p>{head}</p><table><tr><th>host</th><th>reachable</th>'
            f'<th>stage</th><th>generation</th><th>served</th><th>note</th></tr>{"".join(rows)}</table></section>')


def timeline(events: list[dict]) -> str:
    rows = "".join(
        f'<tr class="event {escape(e["kind"])}"><td>{escape(_when(e["at"]))}</td><td>{escape(e["kind"])}</td>'
        f'<td>{escape(e["who"])}</td><td>{escape(e["what"])}</td><td>{escape(e["why"])}</td></tr>' for e in events)
    if not events:
        rows = '<tr><td colspan="5" class="muted">no history yet: nothing has been applied</td></tr>'
    return (f'<section id="history"><h2>History</h2><table><tr><th>when</th><th>event</th><th>who</th>'
            f'<th>what</th><th>why</th></tr>{rows}</table></section>')


def checklist(gate: dict | None) -> str:
    if not gate:
        return ('<section id="checklist"><h2>Promotion checklist</h2>'
                '<p class="muted">v2 is at the last stage: nothing to promote</p></section>')
    rows = "".join(
        f'<tr><td class="{"ok" if i["ok"] else ("bad" if i["blocking"] else "warn")}">'
        f'{"ok" if i["ok"] else ("FAIL" if i["blocking"] else "warn")}</td><td>{escape(i["name"])}</td>'
        f'<td>{escape(i["detail"])}</td></tr>' for i in gate["items"])
    verdict = ('<p class="bad">the gate refuses this stage now</p>' if gate["refuses"]
               else '<p class="ok">the gate would let this stage through now</p>')
    return (f'<section id="checklist"><h2>Promotion checklist for {escape(gate["stage"])}</h2>{verdict}'
            f'<table>{rows}</table><p class="muted">{escape(gate.get("note", ""))}</p></section>')


def actions(enabled: bool) -> str:
    if not enabled:
        return ""
    token = '<input type="password" name="token" placeholder="token" required autocomplete="off">'
    reason = '<input type="text" name="reason" placeholder="reason" maxlength="200">'
    return ('<section id="actions"><h2>Actions</h2>'
            f'<form method="post" action="/api/revert">{token}{reason}'
            '<button class="revert" type="submit">Revert: everyone on v1</button></form>'
            f'<form method="post" action="/api/promote">{token}{reason}'
            '<button type="submit">Promote through the gate</button></form>'
            '<p class="muted">The same commands as <code>lbsplit revert</code> and <code>lbsplit promote</code> '
            '(promote never forces past the gate).</p></section>')


def render(view: dict) -> str:
    """The whole page."""
    checks = view.get("checks") or []
    charts = []
    for cid, title, v2_names, v1_name, (limit_metric, bounds), unit in CHARTS:
        v2 = series_of(checks, v2_names)
        v1 = series_of(checks, v1_name)
        limit = limit_of(checks, limit_metric, bounds, v2)
        charts.append(chart(cid, title, [p[:2] for p in v2], [p[:2] for p in v1], limit, unit))
    charts = "".join(charts)
    refresh = int(view.get("refresh") or 0)
    script = ("<script>setInterval(function(){var a=document.activeElement;"
              "if(!a||a.tagName!=='INPUT'||!a.value)location.reload()}," + str(refresh * 1000) + ")</script>"
              if refresh > 0 else "")
    parts = [
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>lbsplit: {escape(_stage_text(view['status']))}</title><style>{STYLE}</style></head><body>",
        f"<header><h1>lbsplit rollout</h1><span class=\"muted\">{escape(view.get('config', ''))} - "
        f"shown {escape(_when(view.get('now')))}</span></header><main>",
        summary(view),
        fleet_table(view["fleet"]) if view.get("fleet") else "",
        f'<section id="charts"><h2>v2 against v1, per watchdog check</h2>{charts}</section>',
        timeline(view.get("events") or []),
        checklist(view.get("gate")),
        actions(bool(view.get("actions"))),
        f"</main>{script}</body></html>",
    ]
    return "".join(parts)


def events_of(history: list[dict], checks: list[dict], epoch, limit: int = 50) -> list[dict]:
    """The timeline, newest first: every change in the history, and the watchdog's alerts and failed checks."""
    events = []
    for e in history:
        at = epoch(str(e.get("time", "")))
        if at is None:
            continue
        command = str(e.get("command", ""))
        kind = "revert" if "revert" in command else "promote" if "promote" in command else \
            "apply" if "apply" in command else command.split(" ")[0] or "change"
        what = f"{e.get('from')} -> {e.get('to')} {e.get('result', '')}".strip()
        if e.get("hosts"):
            what += "; " + ", ".join(f"{h}: {r}" for h, r in sorted(e["hosts"].items()))
        why = str(e.get("reason") or "")
        if e.get("forced"):
            why += f" (FORCED past: {'; '.join(map(str, e['forced']))})"
        events.append({"at": at, "kind": kind, "who": str(e.get("user", "")), "what": what, "why": why})
    for c in checks:
        if c.get("outcome") in ("alert", "fail"):
            events.append({"at": float(c["at"]), "kind": "alert" if c["outcome"] == "alert" else "failed check",
                           "who": "watchdog", "what": f"at {c.get('stage', 0) / 100:g}% ({c.get('consecutive')} in a row)",
                           "why": str(c.get("summary", ""))})
    events.sort(key=lambda e: e["at"], reverse=True)
    return events[:limit]
