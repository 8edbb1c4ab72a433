"""Load lbsplit.toml into frozen dataclasses; every error names the field and the fix."""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .model import Server
from .validate import check_variable, parse_server

DEFAULT_CONFIG = "lbsplit.toml"
ENV_CONFIG = "LBSPLIT_CONFIG"
DEFAULT_STATUS_LISTEN = "127.0.0.1:9181"


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
    mode: str
    key: str
    fallback_key: str
    whitelist: tuple[str, ...]
    whitelist_file: Path | None


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

    def require_rollout(self) -> tuple[tuple[Server, ...], SplitSettings]:
        """The v2 servers and split settings, or the error that made them unusable."""
        if self.deferred_error is not None:
            raise self.deferred_error
        assert self.v2 is not None and self.split is not None
        return self.v2, self.split


SCHEMA: dict[str, object] = {
    "state_dir": str,
    "lock_timeout": (int, float),
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
        if isinstance(expected, dict):
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
    mode = table.get("mode", "hash")
    if mode not in ("hash", "weight"):
        raise ConfigError(f"split.mode: {mode!r} is not a mode; use \"hash\" (sticky per user) or \"weight\"")
    key = check_variable(table.get("key", "$http_x_user_id"), "split.key")
    fallback = check_variable(table.get("fallback_key", "$remote_addr"), "split.fallback_key")
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
    return Settings(
        path=path,
        state_dir=_path(base, data.get("state_dir", "/var/lib/lbsplit")),
        lock_timeout=lock_timeout,
        nginx=nginx,
        v1=v1,
        v2=v2,
        split=split,
        deferred_error=deferred,
    )
