"""The sections of lbsplit.toml besides [health]: [split] with upstreams.v2, the upstream pooling, [plan],
[fleet], stages, [notify] and [hooks]. Each parser takes its table and returns its settings.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

from ..errors import ConfigError
from ..model import DEFAULT_ADVISORY, DEFAULT_CHECKS, DEFAULT_FALLBACK_KEY, DEFAULT_KEY, DEFAULT_MODE, DEFAULT_RUNTIME, DEFAULT_SOAK, DEFAULT_STAGES, DEFAULT_STATUS_LISTEN, Format, Level, Mode, parse_percent, Pooling, Runtime, Server
from ..validate import check_variable, is_port
from .settings import FleetSettings, HooksSettings, NotifySettings, PlanSettings, SplitSettings, Webhook, default_of
from .values import choice, duration, http_url, level_of, path_of, seconds, server_list


def load_split(base: Path, table: dict, raw_v2: object,
                runtime: Runtime = DEFAULT_RUNTIME) -> tuple[tuple[Server, ...], SplitSettings]:
    if raw_v2 is None:
        raise ConfigError("upstreams.v2: missing; list v2's servers, e.g. v2 = [\"10.0.1.1:8080\"]")
    v2 = server_list(raw_v2, "upstreams.v2")
    mode = choice(table.get("mode", DEFAULT_MODE), Mode, "split.mode", "(hash: sticky per user; weight: per request)")
    if runtime == Runtime.LUA and mode != Mode.HASH:
        raise ConfigError("split.mode: the lua runtime splits users by hash; weight mode lives in upstream weights, "
                          "which only a reload changes. Use mode = \"hash\" or nginx.runtime = \"reload\"")
    key = check_variable(table.get("key", DEFAULT_KEY), "split.key")
    fallback = check_variable(table.get("fallback_key", DEFAULT_FALLBACK_KEY), "split.fallback_key")
    if fallback.lower() == key.lower():
        raise ConfigError(f"split.fallback_key: {fallback} is the key itself; requests without an id would all hash "
                          f"the empty string onto v2's side. Use a variable every request has, e.g. {DEFAULT_FALLBACK_KEY}")
    whitelist = table.get("whitelist", [])
    for i, item in enumerate(whitelist):
        if not isinstance(item, str):
            raise ConfigError(f"split.whitelist[{i}]: expected a string id, got {item!r}")
    return v2, SplitSettings(
        mode=mode,
        key=key,
        fallback_key=fallback,
        whitelist=tuple(whitelist),
        whitelist_file=path_of(base, table.get("whitelist_file")),
        force_header=_force_name(table.get("force_header"), "split.force_header", _HEADER_NAME,
                                 "letters, digits and dashes, e.g. X-Lbsplit-Variant (nginx drops headers "
                                 "with underscores by default)"),
        force_cookie=_force_name(table.get("force_cookie"), "split.force_cookie", _COOKIE_NAME,
                                 "letters, digits and underscores, e.g. lbsplit_variant (nginx's $cookie_ "
                                 "variables name no other cookies)"),
    )


_HEADER_NAME = re.compile(r"[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*")


_COOKIE_NAME = re.compile(r"[A-Za-z0-9_]+")


def _force_name(value: object, field_name: str, shape: re.Pattern, fix: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not shape.fullmatch(value) or len(value) > 64:
        raise ConfigError(f"{field_name}: {value!r} is not a name nginx can read; use {fix}")
    return value


def status_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not is_port(port):
        raise ConfigError(f"nginx.status_listen: {value!r} must be address:port, e.g. {DEFAULT_STATUS_LISTEN}")
    if not _loopback_ipv4(host) and host not in ("[::1]", "localhost"):
        raise ConfigError(
            f"nginx.status_listen: {value!r} must be on loopback (127.0.0.1 or [::1]) so the status page is not public"
        )
    return value


def _loopback_ipv4(host: str) -> bool:
    """127.x.y.z with four ASCII-decimal octets of 0-255 (str.isdigit() would take '¹' and '٣')."""
    octets = host.split(".")
    return len(octets) == 4 and octets[0] == "127" and all(
        o.isascii() and o.isdigit() and len(o) <= 3 and int(o) <= 255 for o in octets)


_METHODS = ("", "least_conn", "random", "random two", "random two least_conn")


_NGINX_TIME = re.compile(r"[0-9]{1,6}(ms|s|m|h)?")


def load_pooling(table: dict) -> Pooling:
    """upstreams.keepalive, keepalive_timeout and method: how nginx talks to v1 and v2."""
    keepalive = table.get("keepalive", 0)
    if isinstance(keepalive, bool) or not isinstance(keepalive, int) or not 0 <= keepalive <= 10_000:
        raise ConfigError("upstreams.keepalive: give a whole number of idle connections per worker from 0 (off) "
                          "to 10000, e.g. 32")
    timeout = table.get("keepalive_timeout")
    if timeout is not None and (not isinstance(timeout, str) or not _NGINX_TIME.fullmatch(timeout)):
        raise ConfigError('upstreams.keepalive_timeout: write an nginx time such as "60s" or "1m"')
    method = table.get("method", "")
    words = method.split(" ") if isinstance(method, str) else []
    if not isinstance(method, str) or (method not in _METHODS and not (
            words[0] == "hash" and len(words) in (2, 3) and (len(words) == 2 or words[2] == "consistent"))):
        raise ConfigError(f"upstreams.method: {method!r} is not one of \"\" (round robin), \"least_conn\", "
                          "\"random\", \"random two least_conn\" or \"hash $variable [consistent]\"")
    if words and words[0] == "hash":
        check_variable(words[1], "upstreams.method")
    if keepalive == 0 and timeout is not None:
        raise ConfigError("upstreams.keepalive_timeout: set only with upstreams.keepalive above 0")
    return Pooling(keepalive, timeout, method)


def load_plan(table: dict) -> PlanSettings:
    soak = dict(DEFAULT_SOAK)
    for key, value in table.get("soak", {}).items():
        soak[parse_percent(str(key), f"plan.soak.{key}")] = duration(value, f"plan.soak.{key}")
    checks = dict(DEFAULT_CHECKS)
    for key, items in table.get("checks", {}).items():
        name = f"plan.checks.{key}"
        if not isinstance(items, list) or not all(isinstance(i, str) and i.strip() and len(i) <= 200 for i in items):
            raise ConfigError(f'{name}: expected a list of check names, e.g. ["user feedback positive"]')
        checks[parse_percent(str(key), name)] = tuple(i.strip() for i in items)
    advisory = table.get("advisory", list(DEFAULT_ADVISORY))
    if not isinstance(advisory, list) or not all(isinstance(i, str) and i.strip() for i in advisory):
        raise ConfigError('plan.advisory: expected a list of check names, e.g. ["user feedback positive"]')
    return PlanSettings(tuple(sorted(soak.items())), tuple(sorted((k, v) for k, v in checks.items() if v)),
                        bool(table.get("enforce_soak", default_of(PlanSettings, "enforce_soak"))),
                        bool(table.get("auto_promote", default_of(PlanSettings, "auto_promote"))),
                        tuple(i.strip() for i in advisory))


PREFIX_RE = re.compile(r"/[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*")


def load_fleet(base: Path, table: dict) -> FleetSettings:
    if "etcd" not in table or "prefix" not in table:
        raise ConfigError("fleet: needs etcd (a list of etcd v3 endpoints) and prefix, e.g. "
                          'etcd = ["http://10.0.0.5:2379"], prefix = "/lbsplit/checkout"')
    endpoints = table["etcd"]
    if not endpoints or not all(isinstance(e, str) for e in endpoints):
        raise ConfigError('fleet.etcd: expected a non-empty list of URLs, e.g. ["http://10.0.0.5:2379"]')
    endpoints = tuple(http_url(e, "fleet.etcd") for e in endpoints)
    prefix = table["prefix"]
    if not PREFIX_RE.fullmatch(prefix):
        raise ConfigError(f"fleet.prefix: {prefix!r} must look like /lbsplit/checkout (slash-separated words, "
                          "no trailing slash)")
    host = table.get("host") or socket.gethostname()
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", host):
        raise ConfigError(f"fleet.host: {host!r} must be letters, digits, '.', '_' or '-' (at most 100)")
    ttl = table.get("agent_ttl", default_of(FleetSettings, "agent_ttl"))
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 2 <= ttl <= 3600:
        raise ConfigError(f"fleet.agent_ttl: {ttl!r} is out of range; give whole seconds from 2 to 3600")
    apply_timeout = seconds(table.get("apply_timeout", default_of(FleetSettings, "apply_timeout")), "fleet.apply_timeout", 0, 3600)
    if table.get("password_file") and table.get("password_env"):
        raise ConfigError("fleet.password_file: give the password in a file or in an environment variable, not both")
    if (table.get("password_file") or table.get("password_env")) and not table.get("user"):
        raise ConfigError("fleet.user: a password needs the etcd user it belongs to")
    if bool(table.get("cert_file")) != bool(table.get("key_file")):
        raise ConfigError("fleet.cert_file: a client certificate needs both cert_file and key_file")
    return FleetSettings(
        etcd=endpoints, prefix=prefix, host=host, agent_ttl=ttl, apply_timeout=apply_timeout,
        ca_file=path_of(base, table.get("ca_file")), cert_file=path_of(base, table.get("cert_file")),
        key_file=path_of(base, table.get("key_file")), user=table.get("user"),
        password_file=path_of(base, table.get("password_file")), password_env=table.get("password_env"))


def load_stages(values: list | None) -> tuple[int, ...]:
    if values is None:
        return DEFAULT_STAGES
    stages = tuple(parse_percent(str(v), f"stages[{i}]") for i, v in enumerate(values))
    if not stages or list(stages) != sorted(set(stages)):
        raise ConfigError("stages: list increasing percentages, e.g. stages = [0, 10, 30, 100] (0: the whitelist only)")
    return stages


def _webhook(table: dict, name: str, url_key: str) -> Webhook:
    return Webhook(url=http_url(table[url_key], f"{name}.{url_key}"),
                   format=choice(table.get("format", Format.JSON), Format, f"{name}.format"),
                   min_level=level_of(table.get("min_level", Level.P3), f"{name}.min_level"))


def load_notify(table: dict) -> NotifySettings:
    hooks = [_webhook(table, "notify", "webhook")] if "webhook" in table else []
    hooks += [_webhook(row, f"notify.webhooks[{i}]", "url") if "url" in row else
              _missing(f"notify.webhooks[{i}].url") for i, row in enumerate(table.get("webhooks", []))]
    if not hooks:
        raise ConfigError("notify.webhook: missing; give a URL that receives the POST (or [[notify.webhooks]] rows)")
    timeout = float(table.get("timeout", 5))
    if not 0 < timeout <= 60:
        raise ConfigError("notify.timeout: give seconds between 0 and 60")
    return NotifySettings(webhooks=tuple(hooks), timeout=timeout)


def _missing(field_name: str):
    raise ConfigError(f"{field_name}: missing; give the webhook's http:// or https:// URL")


def load_hooks(table: dict) -> HooksSettings:
    argvs = {}
    for name in ("pre_promote", "post_apply", "post_revert", "on_alert"):
        argv = table.get(name, [])
        if not all(isinstance(a, str) and a and "\0" not in a for a in argv):
            raise ConfigError(f"hooks.{name}: expected an argv list of non-empty strings, e.g. [\"/usr/bin/smoke\", \"--quick\"]")
        argvs[name] = tuple(argv)
    return HooksSettings(**argvs, timeout=seconds(table.get("timeout", default_of(HooksSettings, "timeout")), "hooks.timeout", 0, 3600))
