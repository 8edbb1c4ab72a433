"""Single values of the config: paths, servers, seconds, durations, choices, URLs, levels, numbers.
Each error names the field and the fix.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import ConfigError
from ..model import Bound, Level, parse_span, Server
from ..validate import parse_server, redact


def path_of(base: Path, value: str | None) -> Path | None:
    if not value:
        return None
    p = Path(value)
    return p if p.is_absolute() else (base / p)


def server_list(values: list, field_name: str) -> tuple[Server, ...]:
    if not values:
        raise ConfigError(f"{field_name}: list at least one server, e.g. [\"10.0.0.1:8080\"]")
    servers = tuple(parse_server(v, f"{field_name}[{i}]") for i, v in enumerate(values))
    if all(s.backup or s.down for s in servers):
        raise ConfigError(f"{field_name}: every server is backup or down; at least one must take traffic")
    return servers


def duration(value: object, field_name: str) -> float:
    """Seconds from a number or a text such as 48h, 30m, 2d."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    seconds = parse_span(value) if isinstance(value, str) else None
    if seconds is None:
        raise ConfigError(f"{field_name}: {value!r} is not a duration; write e.g. 48h, 30m or 2d")
    return seconds


def seconds(value: object, field_name: str, low: float, high: float, zero_ok: bool = False) -> float:
    """A number of seconds within (low, high] (or [0, high] with zero_ok)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not (low <= value if zero_ok else low < value) or value > high:
        raise ConfigError(f"{field_name}: {value!r} is out of range; give seconds between {low:g} and {high:g}")
    return float(value)


def choice(value: str, allowed, field_name: str, meaning: str = ""):
    """One of an enum's words, or an error that lists them."""
    try:
        return allowed(value)
    except ValueError:
        words = " or ".join(f'"{w}"' for w in allowed)
        raise ConfigError(f"{field_name}: {value!r} is not allowed; use {words} {meaning}".rstrip()) from None


def http_url(value: str, field_name: str) -> str:
    if not (value.startswith("http://") or value.startswith("https://")) or any(c.isspace() or ord(c) < 32 for c in value):
        raise ConfigError(f"{field_name}: {redact(value)!r} must be an http:// or https:// URL")
    return value


def level_of(value: object, field_name: str) -> Level:
    return choice(value, Level, field_name, "(P1 reverts, P2 alerts and holds promotion, P3 informs)")


def finite_number(value: object, field_name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{field_name}: {value!r} is not a finite number")
    return float(value)


def bounds(table: dict, field_name: str) -> tuple[tuple[Bound, float], ...]:
    unknown = set(table) - {b.value for b in Bound}
    if unknown:
        raise ConfigError(f"{field_name}.{sorted(unknown)[0]}: unknown key; a stage row takes max and/or min")
    return tuple((bound, finite_number(table[bound.value], f"{field_name}.{bound.value}")) for bound in Bound
                 if bound.value in table)


def positive_scale(value: object, field_name: str) -> float:
    scale = finite_number(value, field_name)
    if scale <= 0:
        raise ConfigError(f"{field_name}: give a positive multiplier, e.g. 0.01 when the answer is in percent")
    return scale
