"""The frozen settings lbsplit.toml becomes, one dataclass per section; defaults that a section's parser
needs are read from these fields (settings.default_of), so each is declared once.
"""

from __future__ import annotations

import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from ..errors import ConfigError
from ..model import DEFAULT_ADVISORY, DEFAULT_CHECKS, DEFAULT_LEVELS, DEFAULT_RUNTIME, DEFAULT_SOAK, DEFAULT_STAGES, Bound, Format, Level, Mode, NoData, OnBreach, Pooling, Runtime, Server, Source, Thresholds


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


def default_of(cls: type, name: str):
    """The default a settings dataclass declares for `name`: the parser reads it from here, never a second copy."""
    found = next(f for f in fields(cls) if f.name == name)
    if found.default is MISSING:
        raise TypeError(f"{cls.__name__}.{name} declares no default")
    return found.default
