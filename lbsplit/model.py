"""Plain data shared by the core: stages, servers. No I/O here."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from .errors import ConfigError

FULL = 10000  # 100% in hundredths of a percent


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
