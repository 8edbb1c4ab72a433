"""Which keys lbsplit.toml may have and of what TOML type: the one list of keys. The loader refuses
unknown keys against it (with the closest known key), and the README's config reference is held to it.
"""

from __future__ import annotations

import difflib

from ..errors import ConfigError
from ..model import METRICS, THRESHOLD_TIMING


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


# What a revert needs; every other part of the config may be broken and a revert still runs.
ESSENTIAL = ("state_dir", "lock_timeout", "nginx")


def check_keys(table: dict, schema: dict, prefix: str) -> None:
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
                check_keys(item, expected[0], f"{name}[{i}].")
        elif isinstance(expected, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{name}: expected a table [{name}], got {type(value).__name__}")
            check_keys(value, expected, f"{name}.")
        elif expected is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{name}: expected true or false, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, expected):  # bool is an int in Python
            want = expected.__name__ if isinstance(expected, type) else "number"
            want = {"str": "a string", "list": "a list", "number": "a number"}.get(want, want)
            raise ConfigError(f"{name}: expected {want}, got {value!r}")
