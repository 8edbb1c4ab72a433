"""Load lbsplit.toml into frozen dataclasses; every error names the field and the fix."""

from __future__ import annotations

import difflib
import math
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .model import (
    DEFAULT_FALLBACK_KEY,
    DEFAULT_KEY,
    DEFAULT_MODE,
    DEFAULT_RUNTIME,
    DEFAULT_ADVISORY,
    DEFAULT_CHECKS,
    DEFAULT_LEVELS,
    DEFAULT_SOAK,
    DEFAULT_STAGES,
    DEFAULT_STATUS_LISTEN,
    METRICS,
    Bound,
    Format,
    Level,
    Runtime,
    RATE_METRICS,
    Mode,
    Pooling,
    NoData,
    OnBreach,
    Server,
    Source,
    parse_percent,
)
from .validate import check_variable, header_problem, is_port, parse_server, redact

DEFAULT_CONFIG = "lbsplit.toml"
ENV_CONFIG = "LBSPLIT_CONFIG"


@dataclass(frozen=True)
class NginxSettings:
    binary: str
    conf: Path
    prefix: Path | None
    output_dir: Path
    reload_command: tuple[str, ...]
    status_listen: str
    verify_timeout: float
    pid_file: Path | None
    runtime: Runtime = DEFAULT_RUNTIME

    @property
    def live_file(self) -> Path:
        """The entry file the user's nginx config includes."""
        return self.output_dir / "lbsplit.conf"

    def base_argv(self) -> list[str]:
        argv = [self.binary]
        if self.prefix is not None:
            argv += ["-p", str(self.prefix)]
        return argv + ["-c", str(self.conf)]


@dataclass(frozen=True)
class SplitSettings:
    mode: Mode
    key: str
    fallback_key: str
    whitelist: tuple[str, ...]
    whitelist_file: Path | None
    force_header: str | None = None  # QA override: a request header whose v1/v2 wins while v2 is on
    force_cookie: str | None = None  # the same as a cookie (the header wins when both are sent)


@dataclass(frozen=True)
class Thresholds:
    """What healthy means at stages up to `up_to_hundredths`, and how often to look."""

    up_to_hundredths: int
    error_rate: float
    timeout_rate: float
    dead_letter_growth: float
    avg_response_time: float
    check_every: float
    alert_cooldown: float
    window: float  # seconds of access log the nginx_log source judges

    def limit(self, metric: str) -> float:
        return getattr(self, metric)


# The rollout plan's table: stage up to 10% / 30% / 100%.
DEFAULT_THRESHOLDS = (
    Thresholds(1000, 0.05, 0.02, 10, 30, 60, 300, 300),
    Thresholds(3000, 0.04, 0.015, 8, 25, 30, 120, 60),
    Thresholds(10000, 0.03, 0.01, 5, 20, 15, 60, 30),
)
# Per-row settings besides the metric limits.
THRESHOLD_TIMING = ("check_every", "alert_cooldown", "window")


@dataclass(frozen=True)
class CustomMetric:
    """A metric of the health endpoint's answer, by dotted path, with bounds and a level."""

    name: str
    path: str
    level: Level
    scale: float  # multiplies the raw value: 0.01 turns percents into fractions
    limits: tuple[tuple[Bound, float], ...]  # for every stage...
    by_stage: tuple[tuple[int, tuple[tuple[Bound, float], ...]], ...] = ()  # ...unless a row up to that stage says

    def limits_for(self, hundredths: int) -> tuple[tuple[Bound, float], ...]:
        for up_to, limits in self.by_stage:
            if hundredths <= up_to:
                return limits
        return self.limits


@dataclass(frozen=True)
class PrometheusSettings:
    """[health.prometheus]: where the Prometheus HTTP API is, how to authenticate, a PromQL query per metric."""

    url: str
    timeout: float = 5.0
    bearer_token_file: Path | None = None
    basic_auth_user: str | None = None
    basic_auth_password_file: Path | None = None
    ca_file: Path | None = None
    queries: tuple[tuple[str, str], ...] = ()  # metric (built-in or custom) -> PromQL for v2
    baseline: tuple[tuple[str, str], ...] = ()  # metric -> PromQL for v1, for the v2-against-v1 judgement


@dataclass(frozen=True)
class HealthSettings:
    url: str
    timeout: float
    headers: tuple[tuple[str, str], ...]
    bearer_token_file: Path | None
    bearer_token_env: str | None
    fields: tuple[tuple[str, str], ...]  # metric -> dotted path in the JSON answer
    no_data: NoData
    failures_before_revert: int
    on_breach: OnBreach
    thresholds: tuple[Thresholds, ...]
    log: Path
    prometheus_textfile: Path | None
    source: Source = Source.ENDPOINT
    access_log: Path | None = None
    min_requests: int = 50
    baseline_error_margin: float = 0.02
    baseline_latency_factor: float = 1.5
    confidence: float = 0.99  # how sure a verdict from counted requests must be that v2 is worse
    levels: tuple[tuple[str, Level], ...] = tuple(DEFAULT_LEVELS.items())
    scales: tuple[tuple[str, float], ...] = ()  # metric -> multiplier of the raw value
    custom: tuple[CustomMetric, ...] = ()
    revert_levels: tuple[Level, ...] = (Level.P1,)
    prometheus: PrometheusSettings | None = None

    @property
    def uses_prometheus(self) -> bool:
        return self.source == Source.PROMETHEUS

    @property
    def uses_endpoint(self) -> bool:
        return self.source in (Source.ENDPOINT, Source.BOTH)

    @property
    def uses_log(self) -> bool:
        return self.source in (Source.NGINX_LOG, Source.BOTH)

    def thresholds_for(self, hundredths: int) -> Thresholds:
        """The first row whose up_to_percent covers the stage."""
        for row in self.thresholds:
            if hundredths <= row.up_to_hundredths:
                return row
        return self.thresholds[-1]


@dataclass(frozen=True)
class Webhook:
    url: str
    format: Format = Format.JSON
    min_level: Level = Level.P3  # events at least this grave are sent (P3: everything)


@dataclass(frozen=True)
class NotifySettings:
    webhooks: tuple[Webhook, ...]
    timeout: float


@dataclass(frozen=True)
class HooksSettings:
    """Commands (argv, never a shell) run around changes; see watch.hooks."""

    pre_promote: tuple[str, ...] = ()
    post_apply: tuple[str, ...] = ()
    post_revert: tuple[str, ...] = ()
    on_alert: tuple[str, ...] = ()
    timeout: float = 60.0


@dataclass(frozen=True)
class FleetSettings:
    """[fleet]: this host is one of several load balancers that move together through etcd."""

    etcd: tuple[str, ...]
    prefix: str
    host: str
    agent_ttl: int = 10
    apply_timeout: float = 60.0
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    user: str | None = None
    password_file: Path | None = None
    password_env: str | None = None

    def password(self) -> str | None:
        """etcd's password, from its file or environment variable; never printed."""
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(f"fleet.password_env: ${self.password_env} is not set")
            return value
        if self.password_file:
            try:
                return self.password_file.read_text(encoding="utf-8").strip()
            except OSError as e:
                raise ConfigError(f"fleet.password_file: cannot read {self.password_file}: {e.strerror}") from None
        return None


@dataclass(frozen=True)
class PlanSettings:
    """Soak times and manual checks per stage (hundredths), as the rollout plan sets them."""

    soak: tuple[tuple[int, float], ...] = tuple(DEFAULT_SOAK.items())
    checks: tuple[tuple[int, tuple[str, ...]], ...] = tuple(DEFAULT_CHECKS.items())
    enforce_soak: bool = False  # True: an explicit `apply` must satisfy soak and checks too, not only `promote`
    auto_promote: bool = False  # True: the watchdog promotes when soak and gate pass (never past unconfirmed checks)
    advisory: tuple[str, ...] = DEFAULT_ADVISORY  # manual checks that are not key: unconfirmed, they only warn

    def soak_for(self, hundredths: int) -> float:
        return dict(self.soak).get(hundredths, 0.0)

    def checks_for(self, hundredths: int) -> tuple[str, ...]:
        return dict(self.checks).get(hundredths, ())


@dataclass(frozen=True)
class Settings:
    path: Path
    state_dir: Path
    lock_timeout: float
    nginx: NginxSettings
    v1: tuple[Server, ...]
    v2: tuple[Server, ...] | None  # None: unusable, only `revert` may run
    split: SplitSettings | None  # None: unusable, only `revert` may run
    deferred_error: ConfigError | None = field(default=None, compare=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)  # problems a revert ignored
    stages: tuple[int, ...] = DEFAULT_STAGES
    health: HealthSettings | None = None
    notify: NotifySettings | None = None
    health_error: ConfigError | None = field(default=None, compare=False)
    plan: "PlanSettings" = field(default_factory=lambda: PlanSettings())
    hooks: "HooksSettings" = field(default_factory=lambda: HooksSettings())
    fleet: FleetSettings | None = None
    fleet_error: ConfigError | None = field(default=None, compare=False)
    pooling: Pooling = field(default_factory=Pooling)

    def require_fleet(self) -> FleetSettings | None:
        """The [fleet] settings (None: a single host), or the error in them."""
        if self.fleet_error is not None:
            raise self.fleet_error
        return self.fleet

    def require_health(self) -> HealthSettings | None:
        """The [health] settings (None when there is no such section), or the error in them."""
        if self.health_error is not None:
            raise self.health_error
        return self.health

    def require_rollout(self) -> tuple[tuple[Server, ...], SplitSettings]:
        """The v2 servers and split settings, or the error that made them unusable."""
        if self.deferred_error is not None:
            raise self.deferred_error
        assert self.v2 is not None and self.split is not None
        return self.v2, self.split


THRESHOLD_SCHEMA = {name: (int, float) for name in ("up_to_percent", *METRICS, *THRESHOLD_TIMING)}
FREE_TABLE = "free table"

SCHEMA: dict[str, object] = {
    "state_dir": str,
    "lock_timeout": (int, float),
    "stages": list,
    "health": {
        "url": str,
        "timeout": (int, float),
        "headers": FREE_TABLE,
        "bearer_token_file": str,
        "bearer_token_env": str,
        "fields": {m: str for m in METRICS},
        "scale": {m: (int, float) for m in METRICS},
        "levels": {m: str for m in METRICS},
        "revert_levels": list,
        "metrics": [{"name": str, "path": str, "query": str, "level": str, "scale": (int, float), "max": (int, float),
                     "min": (int, float), "stages": dict}],
        "no_data": str,
        "failures_before_revert": int,
        "on_breach": str,
        "thresholds": [THRESHOLD_SCHEMA],
        "log": str,
        "prometheus_textfile": str,
        "source": str,
        "access_log": str,
        "min_requests": int,
        "baseline_error_margin": (int, float),
        "baseline_latency_factor": (int, float),
        "confidence": (int, float),
        "prometheus": {"url": str, "timeout": (int, float), "bearer_token_file": str, "basic_auth_user": str,
                       "basic_auth_password_file": str, "ca_file": str, "queries": dict, "baseline": dict},
    },
    "notify": {"webhook": str, "timeout": (int, float), "format": str, "min_level": str,
               "webhooks": [{"url": str, "format": str, "min_level": str}]},
    "hooks": {"pre_promote": list, "post_apply": list, "post_revert": list, "on_alert": list,
              "timeout": (int, float)},
    "plan": {"soak": dict, "checks": dict, "enforce_soak": bool, "auto_promote": bool, "advisory": list},
    "fleet": {"etcd": list, "prefix": str, "host": str, "agent_ttl": int, "apply_timeout": (int, float),
              "ca_file": str, "cert_file": str, "key_file": str, "user": str, "password_file": str,
              "password_env": str},
    "nginx": {
        "binary": str,
        "conf": str,
        "prefix": str,
        "output_dir": str,
        "reload_command": list,
        "status_listen": str,
        "verify_timeout": (int, float),
        "pid_file": str,
        "runtime": str,
    },
    "upstreams": {"v1": list, "v2": list, "keepalive": int, "keepalive_timeout": str, "method": str},
    "split": {
        "mode": str,
        "key": str,
        "fallback_key": str,
        "whitelist": list,
        "whitelist_file": str,
        "force_header": str,
        "force_cookie": str,
    },
}


def find_config(explicit: str | None) -> Path:
    """--config PATH, else $LBSPLIT_CONFIG, else ./lbsplit.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_CONFIG)
    if env:
        return Path(env)
    return Path(DEFAULT_CONFIG)


def _check_keys(table: dict, schema: dict, prefix: str) -> None:
    for key, value in table.items():
        name = f"{prefix}{key}"
        if key not in schema:
            if prefix and "." not in prefix[:-1] and key in SCHEMA and not isinstance(SCHEMA[key], (dict, list)):
                raise ConfigError(f"{name}: unknown key; {key} is a top-level key: move it above the first [table] "
                                  "of the file (in TOML a key under [table] belongs to that table)")
            close = difflib.get_close_matches(key, list(schema), n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; known keys: {', '.join(prefix + k for k in schema)}"
            raise ConfigError(f"{name}: unknown key{hint}")
        expected = schema[key]
        if expected == FREE_TABLE:
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise ConfigError(f"{name}: expected a table of strings, e.g. {name} = {{ X-Env = \"prod\" }}")
        elif isinstance(expected, list):
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise ConfigError(f"{name}: expected a list of tables, written [[{name}]]")
            for i, item in enumerate(value):
                _check_keys(item, expected[0], f"{name}[{i}].")
        elif isinstance(expected, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{name}: expected a table [{name}], got {type(value).__name__}")
            _check_keys(value, expected, f"{name}.")
        elif expected is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{name}: expected true or false, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, expected):  # bool is an int in Python
            want = expected.__name__ if isinstance(expected, type) else "number"
            want = {"str": "a string", "list": "a list", "number": "a number"}.get(want, want)
            raise ConfigError(f"{name}: expected {want}, got {value!r}")


def _path(base: Path, value: str | None) -> Path | None:
    if not value:
        return None
    p = Path(value)
    return p if p.is_absolute() else (base / p)


def _servers(values: list, field_name: str) -> tuple[Server, ...]:
    if not values:
        raise ConfigError(f"{field_name}: list at least one server, e.g. [\"10.0.0.1:8080\"]")
    servers = tuple(parse_server(v, f"{field_name}[{i}]") for i, v in enumerate(values))
    if all(s.backup or s.down for s in servers):
        raise ConfigError(f"{field_name}: every server is backup or down; at least one must take traffic")
    return servers


def _load_split(base: Path, table: dict, raw_v2: object,
                runtime: Runtime = DEFAULT_RUNTIME) -> tuple[tuple[Server, ...], SplitSettings]:
    if raw_v2 is None:
        raise ConfigError("upstreams.v2: missing; list v2's servers, e.g. v2 = [\"10.0.1.1:8080\"]")
    v2 = _servers(raw_v2, "upstreams.v2")
    mode = _choice(table.get("mode", DEFAULT_MODE), Mode, "split.mode", "(hash: sticky per user; weight: per request)")
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
        whitelist_file=_path(base, table.get("whitelist_file")),
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


def _status_listen(value: str) -> str:
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


# What a revert needs; every other part of the config may be broken and a revert still runs.
ESSENTIAL = ("state_dir", "lock_timeout", "nginx")


def _defer(errors: list, what: str, fn, for_revert: bool, default):
    """fn(), or (for a revert) the default with the error kept, whatever shape the broken value has."""
    try:
        return fn()
    except ConfigError as e:
        if not for_revert:
            raise
        errors.append(e)
    except (TypeError, ValueError, AttributeError, KeyError):
        if not for_revert:
            raise ConfigError(f"{what}: has the wrong shape; see the README's config reference") from None
        errors.append(ConfigError(f"{what}: has the wrong shape; see the README's config reference"))
    return default


def load(path: Path, for_revert: bool = False) -> Settings:
    """Read and validate the config.

    With for_revert, only what a revert needs must be valid (state_dir, lock_timeout,
    [nginx], upstreams.v1); errors anywhere else are kept as warnings, and the parts they
    touch are unusable (apply refuses; revert proceeds).
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"config: {path} not found; pass --config PATH, set ${ENV_CONFIG}, or create ./{DEFAULT_CONFIG}"
        ) from None
    except OSError as e:
        raise ConfigError(f"config: cannot read {path}: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config: {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config: {path} is not valid TOML: {e}") from None
    _check_keys({k: v for k, v in data.items() if k in ESSENTIAL}, {k: SCHEMA[k] for k in ESSENTIAL}, "")
    upstreams = data.get("upstreams", {})
    if not isinstance(upstreams, dict):
        raise ConfigError("upstreams: expected a table [upstreams] with v1 = [...] and v2 = [...]")
    if "v1" not in upstreams:
        raise ConfigError("upstreams.v1: missing; list v1's servers, e.g. v1 = [\"10.0.0.1:8080\"]")
    if not isinstance(upstreams["v1"], list):
        raise ConfigError(f"upstreams.v1: expected a list of servers, got {upstreams['v1']!r}")
    broken: dict[str, list[ConfigError]] = {}  # top-level key -> the problems a revert tolerates in it
    for key, value in data.items():
        if key not in ESSENTIAL:
            _defer(broken.setdefault(key, []), key, lambda: _check_keys({key: value}, SCHEMA, ""), for_revert, None)
    broken = {key: found for key, found in broken.items() if found}

    base = path.resolve().parent
    nginx_table = data.get("nginx", {})
    reload_command = nginx_table.get("reload_command", [])
    if not all(isinstance(a, str) and a for a in reload_command):
        raise ConfigError("nginx.reload_command: expected a list of non-empty strings (an argv, no shell)")
    binary = nginx_table.get("binary", "nginx")
    if "/" in binary:
        binary = str(_path(base, binary))
    verify_timeout = _seconds(nginx_table.get("verify_timeout", 30), "nginx.verify_timeout", 0, 600)
    nginx = NginxSettings(
        binary=binary,
        conf=_path(base, nginx_table.get("conf", "/etc/nginx/nginx.conf")),
        prefix=_path(base, nginx_table.get("prefix")),
        output_dir=_path(base, nginx_table.get("output_dir", "/etc/nginx/lbsplit")),
        reload_command=tuple(reload_command),
        status_listen=_status_listen(nginx_table.get("status_listen", DEFAULT_STATUS_LISTEN)),
        verify_timeout=verify_timeout,
        pid_file=_path(base, nginx_table.get("pid_file")),
        runtime=_choice(nginx_table.get("runtime", DEFAULT_RUNTIME), Runtime, "nginx.runtime",
                        "(reload: every change reloads nginx; lua: percent changes and reverts without a reload)"),
    )
    lock_timeout = _seconds(data.get("lock_timeout", 30), "lock_timeout", 0, 3600, zero_ok=True)
    state_dir = _path(base, data.get("state_dir", "/var/lib/lbsplit"))
    v1 = _servers(upstreams["v1"], "upstreams.v1")
    pooling_errors: list[ConfigError] = []  # a revert proceeds without them (nginx's defaults)
    pooling = _defer(pooling_errors, "upstreams", lambda: _pooling(upstreams), for_revert, Pooling())

    split_errors = broken.get("split", []) + broken.get("upstreams", [])
    v2, split = None, None
    if not split_errors:
        v2, split = _defer(split_errors, "split", lambda: _load_split(base, data.get("split", {}), upstreams.get("v2"),
                                                                       nginx.runtime),
                           for_revert, (None, None))
    other_errors = [e for key, found in broken.items() if key not in ("split", "upstreams", "health") for e in found]
    stages = DEFAULT_STAGES if "stages" in broken else _defer(
        other_errors, "stages", lambda: _stages(data.get("stages")), for_revert, DEFAULT_STAGES)
    health_errors = list(broken.get("health", []))
    health = None
    if "health" in data and not health_errors:
        health = _defer(health_errors, "health", lambda: _health(base, data["health"], state_dir), for_revert, None)
    notify = None
    if "notify" in data and "notify" not in broken:
        notify = _defer(other_errors, "notify", lambda: _notify(data["notify"]), for_revert, None)
    hooks = HooksSettings()
    if "hooks" in data and "hooks" not in broken:
        hooks = _defer(other_errors, "hooks", lambda: _hooks(data["hooks"]), for_revert, HooksSettings())
    plan = PlanSettings()
    if "plan" in data and "plan" not in broken:
        plan = _defer(other_errors, "plan", lambda: _plan(data["plan"]), for_revert, PlanSettings())
    fleet, fleet_error = None, None
    if "fleet" in data:
        try:
            if "fleet" in broken:
                raise broken["fleet"][0]
            fleet = _fleet(base, data["fleet"])
        except ConfigError as e:
            fleet_error = e
    other_errors += pooling_errors
    warnings = tuple(dict.fromkeys(str(e) for e in split_errors + health_errors + other_errors))
    return Settings(
        fleet=fleet,
        pooling=pooling,
        fleet_error=fleet_error,
        path=path,
        stages=stages,
        health=health,
        notify=notify,
        state_dir=state_dir,
        lock_timeout=lock_timeout,
        nginx=nginx,
        v1=v1,
        v2=v2,
        split=split,
        deferred_error=split_errors[0] if split_errors else None,
        health_error=health_errors[0] if health_errors else None,
        warnings=warnings,
        plan=plan,
        hooks=hooks,
    )


def _duration(value: object, field_name: str) -> float:
    """Seconds from a number or a text such as 48h, 30m, 2d."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([smhd])", value.strip()) if isinstance(value, str) else None
    if not match:
        raise ConfigError(f"{field_name}: {value!r} is not a duration; write e.g. 48h, 30m or 2d")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


_METHODS = ("", "least_conn", "random", "random two", "random two least_conn")
_NGINX_TIME = re.compile(r"[0-9]{1,6}(ms|s|m|h)?")


def _pooling(table: dict) -> Pooling:
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


def _plan(table: dict) -> PlanSettings:
    soak = dict(DEFAULT_SOAK)
    for key, value in table.get("soak", {}).items():
        soak[parse_percent(str(key), f"plan.soak.{key}")] = _duration(value, f"plan.soak.{key}")
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
                        bool(table.get("enforce_soak", False)), bool(table.get("auto_promote", False)),
                        tuple(i.strip() for i in advisory))


def _seconds(value: object, field_name: str, low: float, high: float, zero_ok: bool = False) -> float:
    """A number of seconds within (low, high] (or [0, high] with zero_ok)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not (low <= value if zero_ok else low < value) or value > high:
        raise ConfigError(f"{field_name}: {value!r} is out of range; give seconds between {low:g} and {high:g}")
    return float(value)


def _choice(value: str, allowed, field_name: str, meaning: str = ""):
    """One of an enum's words, or an error that lists them."""
    try:
        return allowed(value)
    except ValueError:
        words = " or ".join(f'"{w}"' for w in allowed)
        raise ConfigError(f"{field_name}: {value!r} is not allowed; use {words} {meaning}".rstrip()) from None


PREFIX_RE = re.compile(r"/[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*")


def _fleet(base: Path, table: dict) -> FleetSettings:
    if "etcd" not in table or "prefix" not in table:
        raise ConfigError("fleet: needs etcd (a list of etcd v3 endpoints) and prefix, e.g. "
                          'etcd = ["http://10.0.0.5:2379"], prefix = "/lbsplit/checkout"')
    endpoints = table["etcd"]
    if not endpoints or not all(isinstance(e, str) for e in endpoints):
        raise ConfigError('fleet.etcd: expected a non-empty list of URLs, e.g. ["http://10.0.0.5:2379"]')
    endpoints = tuple(_http_url(e, "fleet.etcd") for e in endpoints)
    prefix = table["prefix"]
    if not PREFIX_RE.fullmatch(prefix):
        raise ConfigError(f"fleet.prefix: {prefix!r} must look like /lbsplit/checkout (slash-separated words, "
                          "no trailing slash)")
    host = table.get("host") or socket.gethostname()
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", host):
        raise ConfigError(f"fleet.host: {host!r} must be letters, digits, '.', '_' or '-' (at most 100)")
    ttl = table.get("agent_ttl", 10)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 2 <= ttl <= 3600:
        raise ConfigError(f"fleet.agent_ttl: {ttl!r} is out of range; give whole seconds from 2 to 3600")
    apply_timeout = _seconds(table.get("apply_timeout", 60), "fleet.apply_timeout", 0, 3600)
    if table.get("password_file") and table.get("password_env"):
        raise ConfigError("fleet.password_file: give the password in a file or in an environment variable, not both")
    if (table.get("password_file") or table.get("password_env")) and not table.get("user"):
        raise ConfigError("fleet.user: a password needs the etcd user it belongs to")
    if bool(table.get("cert_file")) != bool(table.get("key_file")):
        raise ConfigError("fleet.cert_file: a client certificate needs both cert_file and key_file")
    return FleetSettings(
        etcd=endpoints, prefix=prefix, host=host, agent_ttl=ttl, apply_timeout=apply_timeout,
        ca_file=_path(base, table.get("ca_file")), cert_file=_path(base, table.get("cert_file")),
        key_file=_path(base, table.get("key_file")), user=table.get("user"),
        password_file=_path(base, table.get("password_file")), password_env=table.get("password_env"))


def _http_url(value: str, field_name: str) -> str:
    if not (value.startswith("http://") or value.startswith("https://")) or any(c.isspace() or ord(c) < 32 for c in value):
        raise ConfigError(f"{field_name}: {redact(value)!r} must be an http:// or https:// URL")
    return value


def _stages(values: list | None) -> tuple[int, ...]:
    if values is None:
        return DEFAULT_STAGES
    stages = tuple(parse_percent(str(v), f"stages[{i}]") for i, v in enumerate(values))
    if not stages or list(stages) != sorted(set(stages)):
        raise ConfigError("stages: list increasing percentages, e.g. stages = [0, 10, 30, 100] (0: the whitelist only)")
    return stages


def _level(value: object, field_name: str) -> Level:
    return _choice(value, Level, field_name, "(P1 reverts, P2 alerts and holds promotion, P3 informs)")


def _number(value: object, field_name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{field_name}: {value!r} is not a finite number")
    return float(value)


def _bounds(table: dict, field_name: str) -> tuple[tuple[Bound, float], ...]:
    unknown = set(table) - {b.value for b in Bound}
    if unknown:
        raise ConfigError(f"{field_name}.{sorted(unknown)[0]}: unknown key; a stage row takes max and/or min")
    return tuple((bound, _number(table[bound.value], f"{field_name}.{bound.value}")) for bound in Bound
                 if bound.value in table)


def _custom_metrics(rows: list) -> tuple[CustomMetric, ...]:
    out, seen = [], set(METRICS)
    for i, row in enumerate(rows):
        name = f"health.metrics[{i}]"
        metric = row.get("name")
        if not isinstance(metric, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", metric):
            raise ConfigError(f"{name}.name: give the metric a name of letters, digits and _, e.g. ai_failure_rate")
        if metric in seen:
            raise ConfigError(f"{name}.name: {metric} is defined twice (or is a built-in metric: set its limits in "
                              "[[health.thresholds]] and its level in [health.levels])")
        seen.add(metric)
        path = row.get("path", metric)
        if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", path):
            raise ConfigError(f"{name}.path: {path!r} is not a dotted path such as data.ai.failure_rate")
        limits = _bounds({k: v for k, v in row.items() if k in ("max", "min")}, name)
        by_stage = []
        for key, value in row.get("stages", {}).items():
            if not isinstance(value, dict):
                raise ConfigError(f"{name}.stages.{key}: expected a table such as {{ max = 0.05 }}")
            by_stage.append((parse_percent(str(key), f"{name}.stages"), _bounds(value, f"{name}.stages.{key}")))
        if not limits and not by_stage:
            raise ConfigError(f"{name}: give max and/or min (the healthy range), e.g. max = 0.05")
        scale = _number(row.get("scale", 1), f"{name}.scale")
        if scale <= 0:
            raise ConfigError(f"{name}.scale: give a positive multiplier, e.g. 0.01 for an answer in percent")
        out.append(CustomMetric(metric, path, _level(row.get("level", Level.P2), f"{name}.level"), scale, limits,
                                tuple(sorted(by_stage))))
    return tuple(out)


def _thresholds(rows: list) -> tuple[Thresholds, ...]:
    if not rows:
        return DEFAULT_THRESHOLDS
    out = []
    for i, row in enumerate(rows):
        name = f"health.thresholds[{i}]"
        if "up_to_percent" not in row:
            raise ConfigError(f"{name}.up_to_percent: missing; say which stages this row covers, e.g. up_to_percent = 30")
        up_to = parse_percent(str(row["up_to_percent"]), f"{name}.up_to_percent")
        # Unset fields take the plan's default for the same stage.
        base = next((d for d in DEFAULT_THRESHOLDS if up_to <= d.up_to_hundredths), DEFAULT_THRESHOLDS[-1])
        values = {}
        for key in (*METRICS, *THRESHOLD_TIMING):
            value = float(row.get(key, getattr(base, key)))
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name}.{key}: {value:g} is not a usable limit; give a finite number >= 0")
            if key in RATE_METRICS and value > 1:
                raise ConfigError(f"{name}.{key}: {value:g} is above 1; rates are fractions, e.g. 0.05 for 5%")
            if key in ("check_every", "window") and not 1 <= value <= 3600:
                raise ConfigError(f"{name}.{key}: {value:g} is out of range; give seconds from 1 to 3600")
            values[key] = value
        out.append(Thresholds(up_to_hundredths=up_to, **values))
    if [r.up_to_hundredths for r in out] != sorted({r.up_to_hundredths for r in out}):
        raise ConfigError("health.thresholds: list rows by increasing up_to_percent, each once")
    if out[-1].up_to_hundredths != 10000:
        raise ConfigError("health.thresholds: the last row must have up_to_percent = 100")
    return tuple(out)


def _health(base: Path, table: dict, state_dir: Path) -> HealthSettings:
    default_source = Source.ENDPOINT if "url" in table or "access_log" not in table else Source.NGINX_LOG
    source = _choice(table.get("source", default_source), Source, "health.source")
    if source in (Source.NGINX_LOG, Source.BOTH) and "access_log" not in table:
        raise ConfigError("health.access_log: missing; give the log written with `access_log PATH lbsplit;` in nginx")
    if source == Source.PROMETHEUS and "prometheus" not in table:
        raise ConfigError("health.prometheus: missing; give [health.prometheus] with url and [health.prometheus.queries]")
    if source in (Source.ENDPOINT, Source.BOTH) and "url" not in table:
        raise ConfigError("health.url: missing; give v2's health endpoint, e.g. url = \"http://10.0.1.1:5000/api/v2/monitoring/health\"")
    min_requests = table.get("min_requests", 50)
    if not 1 <= min_requests <= 10_000_000:
        raise ConfigError("health.min_requests: give a whole number of requests from 1 up")
    margin = float(table.get("baseline_error_margin", 0.02))
    factor = float(table.get("baseline_latency_factor", 1.5))
    confidence = float(table.get("confidence", 0.99))
    if not 0.5 <= confidence < 1:  # also refuses NaN
        raise ConfigError("health.confidence: give a probability from 0.5 up to but not 1, e.g. 0.99")
    if not math.isfinite(factor):
        raise ConfigError("health.baseline_latency_factor: give a finite factor of at least 1, e.g. 1.5")
    if not 0 <= margin <= 1:
        raise ConfigError("health.baseline_error_margin: give a fraction, e.g. 0.02 for 2 points")
    if factor < 1:
        raise ConfigError("health.baseline_latency_factor: give a factor of at least 1, e.g. 1.5")
    timeout = float(table.get("timeout", 5))
    if not 0 < timeout <= 60:
        raise ConfigError("health.timeout: give seconds between 0 and 60")
    no_data = _choice(table.get("no_data", NoData.FAIL), NoData, "health.no_data",
                      "(fail: count as a failed check; ignore: neither pass nor fail)")
    failures = table.get("failures_before_revert", 3)
    if not 1 <= failures <= 100:
        raise ConfigError("health.failures_before_revert: give a whole number from 1 to 100")
    on_breach = _choice(table.get("on_breach", OnBreach.REVERT), OnBreach, "health.on_breach",
                        "(revert: v2 off; previous: the stage before)")
    fields = {m: m for m in METRICS}
    fields.update(table.get("fields", {}))
    thresholds = _thresholds(table.get("thresholds", []))
    return HealthSettings(
        url=_http_url(table["url"], "health.url") if "url" in table else "",
        timeout=timeout,
        headers=_headers(table.get("headers", {})),
        bearer_token_file=_path(base, table.get("bearer_token_file")),
        bearer_token_env=table.get("bearer_token_env") or None,
        fields=tuple(sorted(fields.items())),
        no_data=no_data,
        failures_before_revert=failures,
        on_breach=on_breach,
        thresholds=thresholds,
        log=_path(base, table.get("log")) or state_dir / "watchdog.log",
        prometheus_textfile=_path(base, table.get("prometheus_textfile")),
        source=source,
        access_log=_path(base, table.get("access_log")),
        min_requests=min_requests,
        baseline_error_margin=margin,
        baseline_latency_factor=factor,
        confidence=confidence,
        levels=tuple({**DEFAULT_LEVELS, **{m: _level(v, f"health.levels.{m}")
                                           for m, v in table.get("levels", {}).items()}}.items()),
        scales=tuple((m, _positive_scale(v, f"health.scale.{m}")) for m, v in sorted(table.get("scale", {}).items())),
        custom=_custom_metrics(table.get("metrics", [])),
        revert_levels=_revert_levels(table.get("revert_levels", ["P1"])),
        prometheus=_prometheus(base, table["prometheus"], table.get("metrics", []))
        if source == Source.PROMETHEUS else None,
    )


_PROMQL_MAX = 4000


def _prometheus(base: Path, table: dict, custom_rows: list) -> PrometheusSettings:
    url = _http_url(table.get("url", ""), "health.prometheus.url").rstrip("/")
    timeout = table.get("timeout", 5)
    if isinstance(timeout, bool) or not 0 < float(timeout) <= 60:
        raise ConfigError("health.prometheus.timeout: give seconds between 0 and 60")
    queries = {}
    for metric, query in table.get("queries", {}).items():
        if metric not in METRICS:
            raise ConfigError(f"health.prometheus.queries.{metric}: not a built-in metric ({', '.join(METRICS)}); "
                              "give a custom metric its query in its [[health.metrics]] entry")
        queries[metric] = _promql(query, f"health.prometheus.queries.{metric}")
    for i, row in enumerate(custom_rows):
        if "query" in row:
            queries[row["name"]] = _promql(row["query"], f"health.metrics[{i}].query")
    if not queries:
        raise ConfigError("health.prometheus.queries: give at least one PromQL query, e.g. "
                          "error_rate = 'sum(rate(http_requests_total{version=\"v2\",code=~\"5..\"}[{window}])) / "
                          "sum(rate(http_requests_total{version=\"v2\"}[{window}]))'")
    baseline = {}
    for metric, query in table.get("baseline", {}).items():
        if metric not in ("error_rate", "timeout_rate", "avg_response_time"):
            raise ConfigError(f"health.prometheus.baseline.{metric}: only error_rate, timeout_rate and "
                              "avg_response_time are compared with v1")
        baseline[metric] = _promql(query, f"health.prometheus.baseline.{metric}")
    user = table.get("basic_auth_user")
    password = _path(base, table.get("basic_auth_password_file"))
    if (user is None) != (password is None):
        raise ConfigError("health.prometheus.basic_auth_user: give it together with basic_auth_password_file")
    return PrometheusSettings(url, float(timeout), _path(base, table.get("bearer_token_file")), user, password,
                              _path(base, table.get("ca_file")), tuple(sorted(queries.items())),
                              tuple(sorted(baseline.items())))


def _promql(query: object, field_name: str) -> str:
    if not isinstance(query, str) or not query.strip() or len(query) > _PROMQL_MAX or any(
            ord(c) < 32 and c not in "\t\n" for c in query):
        raise ConfigError(f"{field_name}: give one PromQL expression (at most {_PROMQL_MAX} characters)")
    return query.strip()


def _positive_scale(value: object, field_name: str) -> float:
    scale = _number(value, field_name)
    if scale <= 0:
        raise ConfigError(f"{field_name}: give a positive multiplier, e.g. 0.01 when the answer is in percent")
    return scale


def _revert_levels(values: list) -> tuple[Level, ...]:
    levels = tuple(_level(v, f"health.revert_levels[{i}]") for i, v in enumerate(values))
    if Level.P1 not in levels:
        raise ConfigError('health.revert_levels: must include "P1" (a P1 breach always counts toward a revert)')
    return levels


def _headers(table: dict) -> tuple[tuple[str, str], ...]:
    for name, value in table.items():
        problem = header_problem(name, value)
        if problem:
            raise ConfigError(f"health.headers.{name}: {problem}; give one line of printable text")
    return tuple(sorted(table.items()))


def _webhook(table: dict, name: str, url_key: str) -> Webhook:
    return Webhook(url=_http_url(table[url_key], f"{name}.{url_key}"),
                   format=_choice(table.get("format", Format.JSON), Format, f"{name}.format"),
                   min_level=_level(table.get("min_level", Level.P3), f"{name}.min_level"))


def _notify(table: dict) -> NotifySettings:
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


def _hooks(table: dict) -> HooksSettings:
    argvs = {}
    for name in ("pre_promote", "post_apply", "post_revert", "on_alert"):
        argv = table.get(name, [])
        if not all(isinstance(a, str) and a and "\0" not in a for a in argv):
            raise ConfigError(f"hooks.{name}: expected an argv list of non-empty strings, e.g. [\"/usr/bin/smoke\", \"--quick\"]")
        argvs[name] = tuple(argv)
    return HooksSettings(**argvs, timeout=_seconds(table.get("timeout", 60), "hooks.timeout", 0, 3600))
