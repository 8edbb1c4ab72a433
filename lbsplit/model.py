"""Plain data shared by every part: stages, servers, the enums and the defaults. No I/O here.

Each default and each set of allowed words is declared here once; config, the
transaction, the dialect and the CLI read them from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum

from .errors import ConfigError

FULL = 10000  # 100% in hundredths of a percent


class Mode(StrEnum):
    """How v2's share is made: sticky per-user hash, or round-robin weights."""

    HASH = "hash"
    WEIGHT = "weight"


class Runtime(StrEnum):
    """How a change reaches the running nginx."""

    RELOAD = "reload"  # every change is nginx -t + reload
    LUA = "lua"  # percent changes and reverts set a shared dict through nginx's lua module: no reload


class Variant(StrEnum):
    V1 = "v1"
    V2 = "v2"
    EITHER = "either"  # weight mode, or an empty id without the fallback value: decided per request


class Outcome(StrEnum):
    """One check's result."""

    PASS = "pass"
    FAIL = "fail"
    NO_DATA = "no_data"  # the metrics could not be read, and no_data = "ignore"
    INCONCLUSIVE = "inconclusive"  # v1 fails as badly as v2: not v2's fault
    ALERT = "alert"  # only P2 rules breached: alert and hold promotion, no revert (unless configured)


class NoData(StrEnum):
    """What a check with missing or unusable data counts as."""

    FAIL = "fail"
    IGNORE = "ignore"


class OnBreach(StrEnum):
    REVERT = "revert"  # v2 off
    PREVIOUS = "previous"  # back to the stage below


class Source(StrEnum):
    """Where the watchdog reads v2's health from."""

    ENDPOINT = "endpoint"
    NGINX_LOG = "nginx_log"
    BOTH = "both"
    PROMETHEUS = "prometheus"  # PromQL queries against a Prometheus server


class Level(StrEnum):
    """How grave a breach is, as the rollout plan grades it."""

    P1 = "P1"  # counts toward failures_before_revert: reverts
    P2 = "P2"  # alerts (respecting the stage's cooldown) and holds promotion; reverts only if configured
    P3 = "P3"  # information: logged and shown


class Format(StrEnum):
    """The body a webhook expects."""

    JSON = "json"  # the event as JSON, with a one-line "text"
    SLACK = "slack"  # {"text": ...}, also Mattermost and Rocket.Chat
    WECOM = "wecom"  # WeCom (WeChat Work) group robot
    DINGTALK = "dingtalk"  # DingTalk group robot
    FEISHU = "feishu"  # Feishu / Lark custom bot


class Bound(StrEnum):
    MAX = "max"  # healthy while value <= limit
    MIN = "min"  # healthy while value >= limit


DEFAULT_MODE = Mode.HASH
DEFAULT_RUNTIME = Runtime.RELOAD
DEFAULT_KEY = "$http_x_user_id"
DEFAULT_FALLBACK_KEY = "$remote_addr"
DEFAULT_STATUS_LISTEN = "127.0.0.1:9181"
# The health endpoint's metrics, in the plan's units: rates are fractions 0..1,
# dead-letter growth is messages per hour, avg_response_time is seconds.
METRICS = ("error_rate", "timeout_rate", "dead_letter_growth", "avg_response_time")
RATE_METRICS = ("error_rate", "timeout_rate")
# The plan's grading: error and timeout rates are P1, dead-letter growth and response time P2.
DEFAULT_LEVELS = {"error_rate": Level.P1, "timeout_rate": Level.P1, "dead_letter_growth": Level.P2,
                  "avg_response_time": Level.P2}
# The plan's stages: the whitelist only, then 10%, 30%, 100% of users (hundredths).
DEFAULT_STAGES = (0, 1000, 3000, 10000)
# Minimum clean time (no P1/P2 breach) at a stage before promoting past it; at the last stage, the
# observation after which the release is complete. The plan: days at 10% and 30%, 24 h after 100%.
DEFAULT_SOAK = {1000: 48 * 3600.0, 3000: 72 * 3600.0, 10000: 24 * 3600.0}
# Items a person confirms (`lbsplit promote --confirm ITEM`) before a stage may be entered.
DEFAULT_CHECKS = {10000: ("performance baseline passed", "user feedback positive")}
# The plan's final check before 100% names three items only the user's own metrics can judge: each is covered by
# a [[health.metrics]] entry of this name (the gate and `plan` list the missing ones).
FINAL_METRIC_ITEMS = (("dead letter queue cleared", "dead_letter_backlog", "max = 0"),
                      ("AI failure rate below 5%", "ai_failure_rate", "max = 0.05"),
                      ("database error rate below 1%", "db_error_rate", "max = 0.01"))
CRON_PERIOD = 60.0  # cron starts the watchdog once a minute
WATCH_GAP = 3  # a gap of more than this many check intervals between checks stops the soak clock
DEFAULT_ADVISORY = ("user feedback positive",)  # the plan marks it not key: a missing confirm warns, never blocks


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


# The rollout plan's table: stage up to 10% / 30% / 100% (error and timeout rates as fractions, dead-letter
# growth per hour, response time in seconds; then check_every, alert_cooldown and window in seconds).
DEFAULT_THRESHOLDS = (
    Thresholds(1000, 0.05, 0.02, 10, 30, 60, 300, 300),
    Thresholds(3000, 0.04, 0.015, 8, 25, 30, 120, 60),
    Thresholds(10000, 0.03, 0.01, 5, 20, 15, 60, 30),
)
# Per-row settings besides the metric limits.
THRESHOLD_TIMING = ("check_every", "alert_cooldown", "window")


@dataclass(frozen=True)
class Stage:
    """Where traffic goes: v2 off (everyone on v1), or a share of users on v2.

    `hundredths` is the v2 share in hundredths of a percent (3000 = 30%), the unit
    nginx's split_clients itself parses percentages into.
    """

    v2_enabled: bool
    hundredths: int = 0

    @classmethod
    def off(cls) -> "Stage":
        return cls(v2_enabled=False, hundredths=0)

    @classmethod
    def at(cls, hundredths: int) -> "Stage":
        if not 0 <= hundredths <= FULL:
            raise ConfigError(f"percent: {hundredths / 100} is outside 0..100")
        return cls(v2_enabled=True, hundredths=hundredths)

    @property
    def percent(self) -> str:
        """The v2 share as the user writes it: '30', '33.33', '0.5'."""
        return format_hundredths(self.hundredths)

    def describe(self) -> str:
        return f"{self.percent}%" if self.v2_enabled else "off"


@dataclass
class Change:
    """What a command that changes the stage did, on this host or across the fleet, for the CLI to print.

    `generation` is this host's new (or unchanged) generation; for a fleet command, the fleet's change id.
    `hosts` is what each fleet member reported (empty on a single host)."""

    generation: int
    stage: Stage
    changed: bool
    reloaded: bool = False
    messages: list[str] = field(default_factory=list)
    hosts: dict[str, str] = field(default_factory=dict)


def next_stage(stages: tuple[int, ...], live: Stage | None) -> Stage | None:
    """The first configured stage above the live one (from v2 off: the first stage); None at the last stage."""
    current = live.hundredths if live is not None and live.v2_enabled else -1
    higher = [s for s in stages if s > current]
    return Stage.at(higher[0]) if higher else None


def format_span(seconds: float) -> str:
    """A duration as every command writes it: '0m07s', '12m30s', '72h00m'."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


_SPAN = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd])")
SPAN_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_span(text: str) -> float | None:
    """Seconds from a duration as lbsplit writes them, '30s', '5m', '48h', '2d' (any case); None when it is not one.

    The one duration grammar: the config's soak times and `alerts --window` both read it."""
    match = _SPAN.fullmatch(text.strip().lower())
    return float(match.group(1)) * SPAN_UNITS[match.group(2)] if match else None


def format_hundredths(hundredths: int) -> str:
    """Render hundredths of a percent without trailing zeros: 3000 -> '30', 3350 -> '33.5'."""
    whole, frac = divmod(hundredths, 100)
    if frac == 0:
        return str(whole)
    return f"{whole}.{frac:02d}".rstrip("0")


_PERCENT_RE = re.compile(r"^\d{1,3}(\.\d{1,2})?%?$")


def parse_percent(text: str, field: str = "percent") -> int:
    """Parse '30', '33.33' or '0.5%' into hundredths; reject anything nginx could not express."""
    raw = str(text).strip()
    if not _PERCENT_RE.match(raw):
        raise ConfigError(
            f"{field}: {text!r} is not a percentage; give a number from 0 to 100 "
            "with at most two decimals, e.g. 30 or 33.33"
        )
    try:
        value = Decimal(raw.rstrip("%"))
    except InvalidOperation:  # pragma: no cover - the regex already guards this
        raise ConfigError(f"{field}: {text!r} is not a number") from None
    if value > 100:
        raise ConfigError(f"{field}: {raw} is above 100; give a number from 0 to 100")
    return int(value * 100)


@dataclass(frozen=True)
class Pooling:
    """How nginx talks to each upstream: idle keep-alive connections per worker, and the balancing method."""

    keepalive: int = 0  # idle connections per worker to each upstream; 0: nginx's default (none)
    keepalive_timeout: str | None = None  # nginx time syntax ("60s"); None: nginx's default
    method: str = ""  # "" round robin, "least_conn", "random", "random two least_conn", "hash $var [consistent]"


@dataclass(frozen=True)
class Server:
    """One `server` line of an upstream: an address plus validated nginx parameters."""

    address: str
    weight: int = 1
    max_fails: int | None = None
    fail_timeout: str | None = None
    max_conns: int | None = None
    backup: bool = False
    down: bool = False

    def params(self, weight: int | None = None) -> list[str]:
        """The parameters as nginx spells them; `weight` overrides the configured one."""
        out = []
        w = self.weight if weight is None else weight
        if w != 1:
            out.append(f"weight={w}")
        if self.max_fails is not None:
            out.append(f"max_fails={self.max_fails}")
        if self.fail_timeout is not None:
            out.append(f"fail_timeout={self.fail_timeout}")
        if self.max_conns is not None:
            out.append(f"max_conns={self.max_conns}")
        if self.backup:
            out.append("backup")
        if self.down:
            out.append("down")
        return out

    def line(self, weight: int | None = None) -> str:
        return " ".join([self.address, *self.params(weight)])
