"""load(): read lbsplit.toml, check its keys against the schema, parse each section, and for a revert keep
the errors of every section a revert does not need.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from ..errors import ConfigError
from ..model import DEFAULT_RUNTIME, DEFAULT_STAGES, DEFAULT_STATUS_LISTEN, Pooling, Runtime
from .settings import HooksSettings, NginxSettings, PlanSettings, Settings
from .schema import ESSENTIAL, SCHEMA, check_keys
from .values import choice, path_of, seconds, server_list
from .sections import load_fleet, load_hooks, load_notify, load_plan, load_pooling, load_split, load_stages, status_listen
from .health import load_health


DEFAULT_CONFIG = "lbsplit.toml"


ENV_CONFIG = "LBSPLIT_CONFIG"


def find_config(explicit: str | None) -> Path:
    """--config PATH, else $LBSPLIT_CONFIG, else ./lbsplit.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_CONFIG)
    if env:
        return Path(env)
    return Path(DEFAULT_CONFIG)


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
    check_keys({k: v for k, v in data.items() if k in ESSENTIAL}, {k: SCHEMA[k] for k in ESSENTIAL}, "")
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
            _defer(broken.setdefault(key, []), key, lambda: check_keys({key: value}, SCHEMA, ""), for_revert, None)
    broken = {key: found for key, found in broken.items() if found}

    base = path.resolve().parent
    nginx_table = data.get("nginx", {})
    reload_command = nginx_table.get("reload_command", [])
    if not all(isinstance(a, str) and a for a in reload_command):
        raise ConfigError("nginx.reload_command: expected a list of non-empty strings (an argv, no shell)")
    binary = nginx_table.get("binary", "nginx")
    if "/" in binary:
        binary = str(path_of(base, binary))
    verify_timeout = seconds(nginx_table.get("verify_timeout", 30), "nginx.verify_timeout", 0, 600)
    nginx = NginxSettings(
        binary=binary,
        conf=path_of(base, nginx_table.get("conf", "/etc/nginx/nginx.conf")),
        prefix=path_of(base, nginx_table.get("prefix")),
        output_dir=path_of(base, nginx_table.get("output_dir", "/etc/nginx/lbsplit")),
        reload_command=tuple(reload_command),
        status_listen=status_listen(nginx_table.get("status_listen", DEFAULT_STATUS_LISTEN)),
        verify_timeout=verify_timeout,
        pid_file=path_of(base, nginx_table.get("pid_file")),
        runtime=choice(nginx_table.get("runtime", DEFAULT_RUNTIME), Runtime, "nginx.runtime",
                        "(reload: every change reloads nginx; lua: percent changes and reverts without a reload)"),
    )
    lock_timeout = seconds(data.get("lock_timeout", 30), "lock_timeout", 0, 3600, zero_ok=True)
    state_dir = path_of(base, data.get("state_dir", "/var/lib/lbsplit"))
    v1 = server_list(upstreams["v1"], "upstreams.v1")
    pooling_errors: list[ConfigError] = []  # a revert proceeds without them (nginx's defaults)
    pooling = _defer(pooling_errors, "upstreams", lambda: load_pooling(upstreams), for_revert, Pooling())

    split_errors = broken.get("split", []) + broken.get("upstreams", [])
    v2, split = None, None
    if not split_errors:
        v2, split = _defer(split_errors, "split", lambda: load_split(base, data.get("split", {}), upstreams.get("v2"),
                                                                       nginx.runtime),
                           for_revert, (None, None))
    other_errors = [e for key, found in broken.items() if key not in ("split", "upstreams", "health") for e in found]
    stages = DEFAULT_STAGES if "stages" in broken else _defer(
        other_errors, "stages", lambda: load_stages(data.get("stages")), for_revert, DEFAULT_STAGES)
    health_errors = list(broken.get("health", []))
    health = None
    if "health" in data and not health_errors:
        health = _defer(health_errors, "health", lambda: load_health(base, data["health"], state_dir), for_revert, None)
    notify = None
    if "notify" in data and "notify" not in broken:
        notify = _defer(other_errors, "notify", lambda: load_notify(data["notify"]), for_revert, None)
    hooks = HooksSettings()
    if "hooks" in data and "hooks" not in broken:
        hooks = _defer(other_errors, "hooks", lambda: load_hooks(data["hooks"]), for_revert, HooksSettings())
    plan = PlanSettings()
    if "plan" in data and "plan" not in broken:
        plan = _defer(other_errors, "plan", lambda: load_plan(data["plan"]), for_revert, PlanSettings())
    fleet, fleet_error = None, None
    if "fleet" in data:
        try:
            if "fleet" in broken:
                raise broken["fleet"][0]
            fleet = load_fleet(base, data["fleet"])
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
