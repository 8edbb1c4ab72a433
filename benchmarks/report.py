"""Turn the benchmark results into docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _when(r: dict, name: str) -> list[str]:
    """When a section was measured; sections an earlier run left in the JSON say so."""
    measured = r.get("measured", {}).get(name)
    if measured is None:
        return ["Measured: by a run before sections were dated; run `make bench` again to refresh it.", ""]
    this_run = r["machine"]["date"]
    line = f"Measured {measured['date']} on {measured['cores']} cores" + (" with `--quick`" if measured["quick"] else "")
    if not measured["date"].startswith(this_run):
        line += f", carried over from an earlier run (this run: {this_run}, `--only` other sections)"
    return [line + ".", ""]


def _lua_runtime(r: dict) -> list[str]:
    lr = r.get("lua_runtime")
    if not lr:
        return []
    out = [
        "## 7. The zero-reload runtime (`nginx.runtime = \"lua\"`)",
        "",
        *_when(r, "lua_runtime"),
        "Method: two sandboxes with the same whitelist of n UUIDs, one per runtime, each changed 10% <-> 20% in",
        "alternating rounds (medians). *apply* is the whole `lbsplit apply` process, start-up included, measured",
        "from outside. *live* is the lua runtime's control write until the status page reports the new",
        "generation from every worker (the `set live` + `wait` phases). nginx RSS is the sum over nginx's master",
        "and all its children (old workers still shutting down included): at the start of the apply -> its peak,",
        "sampled every 20 ms from /proc (no process spawned) during up to 3 further applies per size, apart from",
        "the timed rounds, which run with no sampler beside them.",
        "",
        "| whitelist ids | apply, reload runtime | apply, lua runtime | live (lua) | peak nginx RSS, reload | peak nginx RSS, lua |",
        "|---|---|---|---|---|---|",
    ]
    for row in lr["rows"]:
        out.append(
            f"| {row['ids']:,} | {row['reload_apply_s']:.3f} s | {row['lua_apply_s']:.3f} s | "
            f"{row['lua_live_ms']:.1f} ms (max {row['lua_live_ms_max']:.1f}) | "
            f"{row['reload_rss_before_mib']:.0f} -> {row['reload_rss_peak_mib']:.0f} MiB | "
            f"{row['lua_rss_before_mib']:.0f} -> {row['lua_rss_peak_mib']:.0f} MiB |")
    load = lr["under_load"]
    out += [
        "",
        f"Failed requests across {lr['changes']} percent changes under keep-alive load (wrk, 50 connections;",
        "failed = socket errors + non-2xx):",
        "",
        "| runtime | requests | requests/s | failed |",
        "|---|---|---|---|",
    ]
    out += [f"| {runtime} | {x['requests']:,} | {x['rps']:,.0f} | {x['failed']:,} |" for runtime, x in load.items()]
    out += ["", "The lua runtime's changes take less time, so its window under load is shorter: compare requests/s."]
    broken = lr["revert_with_broken_nginx_conf_exit"]
    biggest = max(lr["rows"], key=lambda row: row["ids"])
    out += [
        "",
        f"`lbsplit revert` with an unrelated broken directive in nginx.conf: exit {broken['reload']} in the reload "
        f"runtime, exit {broken['lua']} in the lua runtime.",
        "",
        "Goals:",
        f"- 0 failed requests across {lr['changes']} changes with keep-alive clients: "
        f"{_verdict(load['lua']['failed'] == 0)} ({load['lua']['failed']}).",
        f"- a percent change at {biggest['ids']:,} ids live in under 50 ms: "
        f"{_verdict(biggest['lua_live_ms'] < 50)} ({biggest['lua_live_ms']:.1f} ms).",
        f"- the whole `lbsplit apply` under 0.4 s at {biggest['ids']:,} ids: "
        f"{_verdict(biggest['lua_apply_s'] < 0.4)} ({biggest['lua_apply_s']:.3f} s).",
        f"- revert with a broken nginx.conf: {_verdict(broken['lua'] == 0)}.",
        "",
    ]
    return out


def _fleet(r: dict) -> list[str]:
    f = r.get("fleet")
    if not f:
        return []
    out = [
        "## 8. Fleet mode",
        "",
        *_when(r, "fleet"),
        "Method: a single-node etcd and n sandbox load balancers on loopback, each with its own nginx and",
        "`lbsplit agent`. *fleet apply* is `lbsplit apply 10` from one host's config (off -> 10%: every host",
        "reloads) until it returns, i.e. until every host reports serving the change; *fleet revert* likewise.",
        "Next to it, in alternating rounds while the agents run, the same config on one host without",
        "[fleet]. Medians. All n load balancers (n nginx masters reloading at once, n agents) share this",
        "machine's cores, which a real fleet of separate hosts does not. *proposal* and *commit* are the",
        "fleet apply's two phases as the command timed them (every live agent ready; every live agent",
        "serving); *agents' CPU* is what all n agents together spent per fleet command (their `nginx -t`",
        "children included), read from /proc.",
        "",
    ]
    if "commit" in f["rows"][0]:
        out += ["| hosts | fleet apply | single-host apply | ratio | proposal | commit | agents' CPU | fleet revert "
                "| single-host revert |", "|---|---|---|---|---|---|---|---|---|"]
        out += [f"| {row['hosts']} | {row['fleet_apply']:.3f} s | {row['single_apply']:.3f} s | "
                f"{row['apply_ratio']:.2f}x | {row['proposal']:.3f} s | {row['commit']:.3f} s | "
                f"{row['agents_cpu_per_change']:.3f} s | {row['fleet_revert']:.3f} s | {row['single_revert']:.3f} s |"
                for row in f["rows"]]
    else:
        out += ["| hosts | fleet apply | single-host apply | ratio | fleet revert | single-host revert |",
                "|---|---|---|---|---|---|"]
        out += [f"| {row['hosts']} | {row['fleet_apply']:.3f} s | {row['single_apply']:.3f} s | "
                f"{row['apply_ratio']:.2f}x | {row['fleet_revert']:.3f} s | {row['single_revert']:.3f} s |"
                for row in f["rows"]]
    biggest = max(f["rows"], key=lambda row: row["hosts"])
    out += [
        "",
        f"Goals: fleet revert of {biggest['hosts']} hosts under 1 s: {_verdict(biggest['fleet_revert'] < 1)} "
        f"({biggest['fleet_revert']:.3f} s); fleet apply within 1.5x of a single host: "
        f"{_verdict(all(row['apply_ratio'] <= 1.5 for row in f['rows']))} ("
        + ", ".join(f"{row['apply_ratio']:.2f}x at {row['hosts']}" for row in f["rows"]) + " hosts).",
        "",
    ]
    if "agents_cpu_per_change" in biggest:
        cores = (r.get("measured", {}).get("fleet") or {}).get("cores") or r["machine"].get("cores") or 1
        out += [
            f"Where the time goes at {biggest['hosts']} hosts: the agents alone spent {biggest['agents_cpu_per_change']:.3f} s "
            f"of CPU per change, at least {biggest['agents_cpu_per_change'] / cores:.3f} s of wall time on {cores} "
            f"cores even if perfectly parallel, next to {biggest['hosts']} nginx reloads and etcd on the same cores; "
            f"the commit phase took {biggest['commit']:.3f} s against {f['rows'][0]['commit']:.3f} s at "
            f"{f['rows'][0]['hosts']} host(s). On separate machines each host's share would run in parallel.",
            "",
        ]
    return out


def _fmt(x: float) -> str:
    return "0" if x == 0 else f"{x:.2g}"


def _judge(r: dict) -> list[str]:
    j = r.get("judge")
    if not j:
        return []
    out = [
        "## 9. The judge: false reverts and detection",
        "",
        *_when(r, "judge"),
        "Method (`benchmarks/judge.py`): exact, not sampled. The real `judge.evaluate_log` at the 10% stage (error",
        f"rate limit {j['threshold']:.0%}, margin {j['margin']:.0%} over v1, v1 serving {j['v1_per_v2']} requests per v2",
        f"request, `failures_before_revert` = {j['failures_before_revert']}, min_requests 50, no_data ignored) is",
        "evaluated over every pair of error counts with any probability; binomial probabilities give each check's",
        "failure probability q. *False reverts per 1,000 rollout-days*, v2 as good as v1: conservative = each of the",
        f"day's {j['windows_per_day']:.0f} disjoint 5-minute windows is a chance to revert (the checks every minute",
        "share 80% of their window, so one failing window may fail three checks in a row); independent = three",
        f"failures in a row among {j['checks_per_day']} independent checks a day. The truth lies between. *Reverted",
        f"within {j['failures_before_revert']} checks*: q^{j['failures_before_revert']} (independence: a lower bound).",
        "Old = the point-estimate rule before the statistics, on the same grid.",
        "",
        "| v1 error rate | v2 requests/window | v2 vs v1 | false reverts /1000 days, new (cons. / indep.) | old (cons. / indep.) "
        "| reverted within 3 checks, new | old |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in j["rows"]:
        n, o = row["new"], row["old"]
        healthy = row["effect"] == 1.0
        out.append(
            f"| {row['background']:.1%} | {row['v2_requests']:,} | x{row['effect']:g} | "
            + (f"{_fmt(n['false_reverts_per_1000_days'])} / {_fmt(n['independent_per_1000_days'])} | "
               f"{_fmt(o['false_reverts_per_1000_days'])} / {_fmt(o['independent_per_1000_days'])} | - | - |"
               if healthy else f"- | - | {_fmt(n['reverted_within_r'])} | {_fmt(o['reverted_within_r'])} |"))
    detect = j["goal_detect"]
    out += [
        "",
        "Goal 1, v2 as good as v1, fewer than 1 false revert in 1,000 rollout-days wherever v2 has at least 100",
        f"requests a window: independent checks: {_verdict(j['goal_false_independent'] < 1)} (worst "
        f"{_fmt(j['goal_false_independent'])}; old rule {_fmt(j['goal_false_independent_old'])}); conservative model: "
        f"{_verdict(j['goal_false'] < 1)} (worst {_fmt(j['goal_false'])}; old rule {_fmt(j['goal_false_old'])}).",
        "",
        "Goal 2, a doubled error rate at 1,000 v2 requests a window reverted within 3 checks with probability 0.99: "
        + ", ".join(f"at {float(b):.1%} v1 errors {_fmt(v)} ({_verdict(v >= 0.99)})" for b, v in detect.items())
        + ". A doubling from 0.5% or 2% stays under the stage's 5% limit and within v1 + 2 points: by the plan's own",
        "thresholds it is not a breach, so no rule that follows them reverts it (the old rule's higher figures there",
        "are the same noise that gave it its false reverts).",
        "",
    ]
    return out


def write_report(r: dict, path: Path) -> None:
    m = r["machine"]
    out = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m benchmarks.run`); the raw figures are in `docs/benchmarks.json`.",
        "Sections 2, 3, 7 and 8 time real nginx on loopback next to a baseline in alternating rounds",
        "(medians), so the shared machine's noise hits both sides alike. The others say so in their section:",
        "1 (split fidelity) and 5 (memory) are one pass of real nginx per size, with no baseline to alternate",
        "with; 4 is one run per side; 6 measures Python reading a log file (no nginx); 9 is exact arithmetic",
        "over the real judge (no nginx, no sampling).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; kernel {m['kernel']}; "
        f"{m['nginx']}; Python {m['python']}; {m['wrk']}. Run on {m['date']}"
        + (" with `--quick` (smaller sizes)." if r.get("quick") else "."),
        "",
    ]
    f = r.get("fidelity")
    if f:
        worst = max(abs(row["diff_points"]) for row in f["rows"])
        flips = sum(f["flips"].values())
        out += [
            "## 1. Split fidelity",
            "",
            *_when(r, "fidelity"),
            f"Method: {f['ids']:,} distinct ids (half UUIDs, half numbers), one request each through nginx",
            "(HTTP/1.1 pipelined), at each percentage; the backend's answer names the variant.",
            "",
            "| target | observed on v2 | observed - target |",
            "|---|---|---|",
        ]
        out += [f"| {row['percent']}% | {row['observed']:.3f}% | {row['diff_points']:+.3f} points |" for row in f["rows"]]
        out += [
            "",
            f"Goal: within 0.5 points: {_verdict(worst <= 0.5)} (worst {worst:.3f}). For scale, the sampling standard",
            f"deviation of a share near 50% over {f['ids']:,} ids is {100 * (0.25 / f['ids']) ** 0.5:.2f} points.",
            f"Users who left v2 when widening: 10% -> 30%: {f['flips']['10->30']}, 30% -> 100%: {f['flips']['30->100']}. "
            f"Goal 0: {_verdict(flips == 0)}.",
            "",
        ]
    t = r.get("time_to_live")
    if t:
        out += [
            "## 2. Time to live",
            "",
            *_when(r, "time_to_live"),
            "Method: lbsplit = wall time of `lbsplit apply P` as a new process, run from a plain (non-editable)",
            "install (Python start-up, reading the whitelist or its cache, render, checks, atomic swap, `nginx -t`,",
            "reload, and waiting until nginx serves the new generation with no old worker still accepting).",
            "Floor = the same files swapped in by hand, then a bare `nginx -t`, `nginx -s reload`, and polling",
            "until the first answer from the new generation. Each round the floor makes a move and undoes it,",
            "then lbsplit makes the same move; medians. *percent*: 10% <-> 20%, the whitelist unchanged (the",
            "common case); *whitelist*: a new id added each round, so every round writes a new whitelist map file.",
            "The goals below are against this floor. lbsplit reloads with SIGHUP to the master, which is the",
            "signal `nginx -s reload` sends after it has parsed the whole config a second time only to find the",
            "pid file; so a second floor, measured in the same rounds, uses `kill -HUP <master>` in its place:",
            "the ratio to it is what lbsplit adds to the least an operator could do by hand.",
            "",
            "| whitelist ids | change | floor | lbsplit apply | ratio | over the floor | floor with kill -HUP | ratio to it |",
            "|---|---|---|---|---|---|---|---|",
        ]

        def hup(row):
            if "hup_floor_s" not in row:
                return "| - | - |"
            return f"| {row['hup_floor_s']:.3f} s | {row['lbsplit_s'] / row['hup_floor_s']:.2f}x |"

        out += [f"| {row['ids']:,} | {row.get('scenario', 'percent')} | {row['floor_s']:.3f} s | {row['lbsplit_s']:.3f} s "
                f"| {row['ratio']:.2f}x | {row.get('over_floor_s', row['lbsplit_s'] - row['floor_s']):+.3f} s {hup(row)}"
                for row in t]

        def find(n, scenario):
            return next((row for row in t if row["ids"] == n and row.get("scenario", "percent") == scenario), None)

        goals = [(find(100_000, "percent"), "percent change at 100k ids: at most 1.2x the floor", lambda x: x["ratio"] <= 1.2,
                  lambda x: f"{x['ratio']:.2f}x"),
                 (find(1_000_000, "percent"), "percent change at 1M ids: at most 1.1x", lambda x: x["ratio"] <= 1.1,
                  lambda x: f"{x['ratio']:.2f}x"),
                 (find(0, "percent"), "no whitelist: at most the floor + 0.15 s", lambda x: x["over_floor_s"] <= 0.15,
                  lambda x: f"{x['over_floor_s']:+.3f} s"),
                 (find(100_000, "whitelist"), "whitelist changed at 100k ids: at most 1.5x", lambda x: x["ratio"] <= 1.5,
                  lambda x: f"{x['ratio']:.2f}x")]
        out += [""] + [f"- Goal, {text}: {_verdict(ok(row))} ({show(row)})." for row, text, ok, show in goals if row]
        hup_goals = [(row, text, bound) for row, text, bound in (
            (find(100_000, "percent"), "percent change at 100k ids: at most 1.2x", 1.2),
            (find(1_000_000, "percent"), "percent change at 1M ids: at most 1.1x", 1.1),
            (find(100_000, "whitelist"), "whitelist changed at 100k ids: at most 1.5x", 1.5)) if row and "hup_floor_s" in row]
        zero = find(0, "percent")
        if hup_goals:
            out += ["", "The same goals judged against the `kill -HUP` floor (the stricter one):"]
            out += [f"- {text}: {_verdict(row['lbsplit_s'] / row['hup_floor_s'] <= bound)} "
                    f"({row['lbsplit_s'] / row['hup_floor_s']:.2f}x)." for row, text, bound in hup_goals]
            if zero and "hup_floor_s" in zero:
                over = zero["lbsplit_s"] - zero["hup_floor_s"]
                out.append(f"- no whitelist: at most the floor + 0.15 s: {_verdict(over <= 0.15)} ({over:+.3f} s).")
        phased = [row for row in t if row.get("phases")]
        if phased:
            names = ["interpreter", "imports", "whitelist", "gate", "render", "nginx -t", "reload", "wait", "outside_python"]
            out += [
                "",
                "Where lbsplit's time goes, measured in the same runs (medians per phase, seconds; `LBSPLIT_TIMINGS`):",
                "interpreter = Python's own start-up, imports = loading lbsplit and its libraries, whitelist = reading",
                "the whitelist or its cache, gate = the promotion checklist, render = rendering and the structure",
                "check, wait = until nginx serves the new generation; outside_python = process spawn and exit.",
                "Phases not listed (locking, the journal, fsynced writes, recording) make up the rest.",
                "",
                "| whitelist ids | change | " + " | ".join(names) + " |",
                "|---|---|" + "---|" * len(names),
            ]
            out += [f"| {row['ids']:,} | {row['scenario']} | "
                    + " | ".join(f"{row['phases'].get(name, 0.0):.3f}" for name in names) + " |" for row in phased]
        out += [""]
    p = r.get("proxy_cost")
    if p:
        out += [
            "## 3. Proxy cost",
            "",
            *_when(r, "proxy_cost"),
            f"Method: wrk (1 thread, 32 keep-alive connections, {p['seconds']} s, a new user id on every request via",
            "`benchmarks/ids.lua`) against nginx with the lbsplit config at 30% (split_clients + whitelist map),",
            "and against the same nginx config with a plain `proxy_pass` to one upstream (same proxy lines as",
            "`nginx/lbsplit-proxy.conf`, HTTP/1.1 to the backend); same backends;"
            + (f" both sides keep {p['keepalive']} idle connections per worker to the backend (`keepalive`),"
               " the baseline production upstreams have" if p.get("keepalive") else ""),
            f"{p['rounds']} rounds, the order alternating; the ratio is the median of the rounds' paired ratios.",
            f"wrk, both nginx and the backend share the machine's {m['cores']} cores, so the figure is CPU-bound on both sides.",
            "",
            "| setup | requests/s |",
            "|---|---|",
            f"| plain proxy_pass | {p['plain_rps']:,.0f} |",
            f"| lbsplit | {p['lbsplit_rps']:,.0f} |",
            *([f"| lbsplit, lua runtime (the split computed in lua per request) | {p['lua_rps']:,.0f} |"]
              if "lua_rps" in p else []),
            "",
            f"Ratio {p['ratio']:.3f} (paired rounds ranged {p.get('ratio_min', p['ratio']):.3f} to "
            f"{p.get('ratio_max', p['ratio']):.3f}). Goal at least {0.98 if p.get('keepalive') else 0.95} of the "
            "baseline" + (" with the same keepalive" if p.get("keepalive") else "") +
            f": {_verdict(p['ratio'] >= (0.98 if p.get('keepalive') else 0.95))}.",
            *([f"The lua runtime: ratio {p['lua_ratio']:.3f} (rounds ranged {p['lua_ratio_min']:.3f} to "
               f"{p['lua_ratio_max']:.3f}), measured in the same rounds, the order rotating over the three sides."]
              if "lua_ratio" in p else []),
            "",
        ]
    rl = r.get("reloads")
    if rl:
        out += [
            "## 4. Reloads under load",
            "",
            *_when(r, "reloads"),
            f"Method: wrk (50 connections) runs while {rl['count']} changes are made: `lbsplit apply` alternating",
            "10% and 20%, or (floor) a bare `nginx -s reload` every 0.4 s. Failed = socket errors + non-2xx.",
            "One run per side (lbsplit's first, then the floor's), not alternating rounds: a count of failures",
            "over one whole run, not a median.",
            "",
            "| clients | changes by | requests | failed |",
            "|---|---|---|---|",
        ]
        for clients, row in rl["rows"].items():
            for who, label in (("lbsplit", "lbsplit apply"), ("bare_reload", "bare nginx -s reload")):
                x = row[who]
                out.append(f"| {clients} | {label} | {x['requests']:,} | {x['failed']:,} |")
        close = rl["rows"]["close"]["lbsplit"]["failed"]
        out += [
            "",
            f"Goal with `Connection: close` clients: 0 failed: {_verdict(close == 0)} ({close}).",
            "Keep-alive clients: nginx's old workers close idle keep-alive connections at once on reload, so a",
            "request already on its way over such a connection fails before any byte of the answer. That is",
            "the floor of every reload-based tool (the bare-reload row); clients should retry such requests.",
            "",
        ]
    mem = r.get("memory")
    if mem:
        out += [
            "## 5. Memory",
            "",
            *_when(r, "memory"),
            "Method: VmRSS of nginx's workers (mean) and master after applying a whitelist of n UUIDs and sending",
            "some traffic; old workers gone.",
            "",
            "| whitelist ids | worker RSS | master RSS |",
            "|---|---|---|",
        ]
        out += [f"| {row['ids']:,} | {row['worker_rss_mib']:.1f} MiB | {row['master_rss_mib']:.1f} MiB |" for row in mem]
        out += [""]
    extra = r.get("log_parse")
    if extra:
        out += extra.get("markdown", [])
    out += _lua_runtime(r)
    out += _fleet(r)
    out += _judge(r)
    path.write_text("\n".join(out) + "\n")
