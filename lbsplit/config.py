"""Load lbsplit.toml into frozen dataclasses; every error names the field and the fix."""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .model import (
    DEFAULT_FALLBACK_KEY,
    DEFAULT_KEY,
    DEFAULT_MODE,
    DEFAULT_STATUS_LISTEN,
    METRICS,
    Mode,
    NoData,
    OnBreach,
    Server,
    Source,
    parse_percent,
)
from .validate import check_variable, parse_server

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
class NotifySettings:
    webhook: str
    timeout: float


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
    stages: tuple[int, ...] = ()
    health: HealthSettings | None = None
    notify: NotifySettings | None = None
    health_error: ConfigError | None = field(default=None, compare=False)

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
    },
    "notify": {"webhook": str, "timeout": (int, float)},
    "nginx": {
        "binary": str,
        "conf": str,
        "prefix": str,
        "output_dir": str,
        "reload_command": list,
        "status_listen": str,
        "verify_timeout": (int, float),
        "pid_file": str,
    },
    "upstreams": {"v1": list, "v2": list},
    "split": {
        "mode": str,
        "key": str,
        "fallback_key": str,
        "whitelist": list,
        "whitelist_file": str,
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


def _load_split(base: Path, table: dict, raw_v2: object) -> tuple[tuple[Server, ...], SplitSettings]:
    if raw_v2 is None:
        raise ConfigError("upstreams.v2: missing; list v2's servers, e.g. v2 = [\"10.0.1.1:8080\"]")
    v2 = _servers(raw_v2, "upstreams.v2")
    mode = _choice(table.get("mode", DEFAULT_MODE), Mode, "split.mode", "(hash: sticky per user; weight: per request)")
    key = check_variable(table.get("key", DEFAULT_KEY), "split.key")
    fallback = check_variable(table.get("fallback_key", DEFAULT_FALLBACK_KEY), "split.fallback_key")
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
    )


def _status_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"nginx.status_listen: {value!r} must be address:port, e.g. {DEFAULT_STATUS_LISTEN}")
    if not (host.startswith("127.") and host.replace(".", "").isdigit()) and host not in ("[::1]", "localhost"):
        raise ConfigError(
            f"nginx.status_listen: {value!r} must be on loopback (127.0.0.1 or [::1]) so the status page is not public"
        )
    return value


def load(path: Path, for_revert: bool = False) -> Settings:
    """Read and validate the config; with for_revert, a broken [split] or v2 does not stop a revert."""
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
    _check_keys(data, SCHEMA, "")

    base = path.resolve().parent
    nginx_table = data.get("nginx", {})
    reload_command = nginx_table.get("reload_command", [])
    if not all(isinstance(a, str) and a for a in reload_command):
        raise ConfigError("nginx.reload_command: expected a list of non-empty strings (an argv, no shell)")
    binary = nginx_table.get("binary", "nginx")
    if "/" in binary:
        binary = str(_path(base, binary))
    verify_timeout = float(nginx_table.get("verify_timeout", 30))
    if not 0 < verify_timeout <= 600:
        raise ConfigError("nginx.verify_timeout: give seconds between 0 and 600")
    nginx = NginxSettings(
        binary=binary,
        conf=_path(base, nginx_table.get("conf", "/etc/nginx/nginx.conf")),
        prefix=_path(base, nginx_table.get("prefix")),
        output_dir=_path(base, nginx_table.get("output_dir", "/etc/nginx/lbsplit")),
        reload_command=tuple(reload_command),
        status_listen=_status_listen(nginx_table.get("status_listen", DEFAULT_STATUS_LISTEN)),
        verify_timeout=verify_timeout,
        pid_file=_path(base, nginx_table.get("pid_file")),
    )
    lock_timeout = float(data.get("lock_timeout", 30))
    if not 0 <= lock_timeout <= 3600:
        raise ConfigError("lock_timeout: give seconds between 0 and 3600")

    state_dir = _path(base, data.get("state_dir", "/var/lib/lbsplit"))
    upstreams = data.get("upstreams", {})
    if "v1" not in upstreams:
        raise ConfigError("upstreams.v1: missing; list v1's servers, e.g. v1 = [\"10.0.0.1:8080\"]")
    v1 = _servers(upstreams["v1"], "upstreams.v1")

    v2: tuple[Server, ...] | None = None
    split: SplitSettings | None = None
    deferred: ConfigError | None = None
    try:
        v2, split = _load_split(base, data.get("split", {}), upstreams.get("v2"))
    except ConfigError as e:
        if not for_revert:
            raise
        deferred = e
    stages: tuple[int, ...] = ()
    health: HealthSettings | None = None
    notify: NotifySettings | None = None
    health_error: ConfigError | None = None
    try:
        stages = _stages(data.get("stages", []))
        health = _health(base, data["health"], state_dir) if "health" in data else None
        notify = _notify(data["notify"]) if "notify" in data else None
    except ConfigError as e:
        if not for_revert:
            raise
        health_error = e
    return Settings(
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
        deferred_error=deferred,
        health_error=health_error,
    )


def _choice(value: str, allowed, field_name: str, meaning: str = ""):
    """One of an enum's words, or an error that lists them."""
    try:
        return allowed(value)
    except ValueError:
        words = " or ".join(f'"{w}"' for w in allowed)
        raise ConfigError(f"{field_name}: {value!r} is not allowed; use {words} {meaning}".rstrip()) from None


def _http_url(value: str, field_name: str) -> str:
    if not (value.startswith("http://") or value.startswith("https://")) or any(c.isspace() for c in value):
        raise ConfigError(f"{field_name}: {value!r} must be an http:// or https:// URL")
    return value


def _stages(values: list) -> tuple[int, ...]:
    stages = tuple(parse_percent(str(v), f"stages[{i}]") for i, v in enumerate(values))
    if list(stages) != sorted(set(stages)) or any(s == 0 for s in stages):
        raise ConfigError("stages: list increasing percentages above 0, e.g. stages = [10, 30, 100]")
    return stages


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
            if value < 0 or (key in ("check_every", "window") and not 1 <= value <= 3600):
                raise ConfigError(f"{name}.{key}: {value:g} is out of range")
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
    if source != Source.ENDPOINT and "access_log" not in table:
        raise ConfigError("health.access_log: missing; give the log written with `access_log PATH lbsplit;` in nginx")
    if source != Source.NGINX_LOG and "url" not in table:
        raise ConfigError("health.url: missing; give v2's health endpoint, e.g. url = \"http://10.0.1.1:5000/api/v2/monitoring/health\"")
    min_requests = table.get("min_requests", 50)
    if not 1 <= min_requests <= 10_000_000:
        raise ConfigError("health.min_requests: give a whole number of requests from 1 up")
    margin = float(table.get("baseline_error_margin", 0.02))
    factor = float(table.get("baseline_latency_factor", 1.5))
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
        headers=tuple(sorted(table.get("headers", {}).items())),
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
    )


def _notify(table: dict) -> NotifySettings:
    if "webhook" not in table:
        raise ConfigError("notify.webhook: missing; give a URL that receives a JSON POST")
    timeout = float(table.get("timeout", 5))
    if not 0 < timeout <= 60:
        raise ConfigError("notify.timeout: give seconds between 0 and 60")
    return NotifySettings(webhook=_http_url(table["webhook"], "notify.webhook"), timeout=timeout)
