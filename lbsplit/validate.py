"""Validation of every value that ends up in nginx syntax. Pure functions."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigError
from .model import Server

_VARIABLE_RE = re.compile(r"\$[A-Za-z_][A-Za-z0-9_]*")
# Variables nginx sets for every request: safe fallbacks for a missing user id.
ALWAYS_SET = ("$remote_addr", "$binary_remote_addr", "$realip_remote_addr")
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
_UNIX_PATH_RE = re.compile(r"^/[A-Za-z0-9_./+@-]*$")
_TIME_RE = re.compile(r"[0-9]{1,9}(ms|s|m|h|d)?")
_DIGITS_RE = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() also accepts "²" and full-width digits
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
MAX_ID_BYTES = 255
MAX_WEIGHT = 1_000_000


def check_variable(text: object, field: str) -> str:
    """Accept one plain nginx variable such as $http_x_user_id."""
    if not isinstance(text, str) or not _VARIABLE_RE.fullmatch(text):
        raise ConfigError(
            f"{field}: {text!r} is not an nginx variable; write one variable such as "
            "$http_x_user_id, $cookie_uid or $arg_user_id"
        )
    if text.lower().startswith("$lbsplit_"):
        raise ConfigError(f"{field}: {text} is one of lbsplit's own variables; use the variable that holds the user id")
    return text


def is_port(text: str) -> bool:
    """ASCII digits forming a port number from 1 to 65535."""
    return bool(_DIGITS_RE.fullmatch(text)) and 1 <= int(text) <= 65535


def fallback_warning(variable: str) -> str | None:
    """A warning when the fallback key may be empty too (then id-less requests all hash to v2's side)."""
    if variable.lower() in ALWAYS_SET:
        return None
    return (f"split.fallback_key: {variable} can be empty; requests with neither an id nor {variable} all hash the "
            f"empty string, which is on v2's side at every percentage. {ALWAYS_SET[0]} is always set")


def header_problem(name: str, value: str) -> str | None:
    """Why a configured HTTP header cannot be sent, or None."""
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
        return f"{name!r} is not a header name"
    if _CONTROL_RE.search(value.replace("\t", "")):
        return "the value contains a line break or control character"
    return None


def _check_address(address: str, field: str) -> str:
    if address.startswith("unix:"):
        if not _UNIX_PATH_RE.match(address[5:]):
            raise ConfigError(
                f"{field}: {address!r} is not a usable unix socket; write unix:/absolute/path "
                "with letters, digits and ._-/+@ only"
            )
        return address
    if address.startswith("["):
        host, sep, port = address[1:].partition("]:")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{field}: {address!r} is not [ipv6]:port; write e.g. [::1]:8080") from None
        if not sep:
            raise ConfigError(f"{field}: {address!r} has no port; write e.g. [::1]:8080")
    else:
        host, sep, port = address.rpartition(":")
        if not sep:
            raise ConfigError(f"{field}: {address!r} has no port; write host:port, e.g. 10.0.0.1:8080")
        if not _HOSTNAME_RE.match(host):
            raise ConfigError(
                f"{field}: {host!r} is not a host name or IPv4 address; write host:port, e.g. 10.0.0.1:8080"
            )
    if not is_port(port):
        raise ConfigError(f"{field}: port {port!r} of {address!r} must be a number from 1 to 65535")
    return address


def _positive(value: str, name: str, field: str, minimum: int, maximum: int) -> int:
    if not _DIGITS_RE.fullmatch(value) or not minimum <= int(value) <= maximum:
        raise ConfigError(f"{field}: {name}={value!r} must be a whole number from {minimum} to {maximum}")
    return int(value)


def parse_server(text: object, field: str) -> Server:
    """Parse 'host:port weight=2 max_fails=3' into a Server, naming `field` on any error."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{field}: expected a string like \"10.0.0.1:8080 weight=2\", got {text!r}")
    if _CONTROL_RE.search(text) or any(c in text for c in ";{}\"'$#\\"):
        raise ConfigError(
            f"{field}: {text!r} contains characters nginx would read as syntax (; {{ }} quotes $ # \\); "
            "write an address and parameters only"
        )
    odd = next((c for c in text if c.isspace() and c not in " \t"), None)
    if odd is not None:
        # nginx separates words by ASCII blanks only: U+2003 would glue "down" to the address for nginx
        # while Python's split() would read it as a parameter.
        raise ConfigError(f"{field}: {text!r} contains the blank U+{ord(odd):04X}; separate the address and "
                          "parameters with plain spaces")
    address, *params = text.replace("\t", " ").split(" ")
    params = [param for param in params if param]
    kwargs: dict = {}
    for param in params:
        name, sep, value = param.partition("=")
        if sep:
            if name in kwargs or (name in ("backup", "down")):
                raise ConfigError(f"{field}: parameter {name} is given twice or takes no value")
            if name == "weight":
                kwargs["weight"] = _positive(value, name, field, 1, MAX_WEIGHT)
            elif name == "max_fails":
                kwargs["max_fails"] = _positive(value, name, field, 0, MAX_WEIGHT)
            elif name == "max_conns":
                kwargs["max_conns"] = _positive(value, name, field, 0, 10_000_000)
            elif name == "fail_timeout":
                if not _TIME_RE.fullmatch(value):
                    raise ConfigError(f"{field}: fail_timeout={value!r} must be a time such as 10s or 500ms")
                kwargs["fail_timeout"] = value
            else:
                raise ConfigError(
                    f"{field}: unknown server parameter {name!r}; allowed: weight=, max_fails=, "
                    "fail_timeout=, max_conns=, backup, down"
                )
        elif param in ("backup", "down"):
            kwargs[param] = True
        else:
            raise ConfigError(
                f"{field}: unknown server parameter {param!r}; allowed: weight=, max_fails=, "
                "fail_timeout=, max_conns=, backup, down"
            )
    return Server(address=_check_address(address, field), **kwargs)


ID_TROUBLE_RE = re.compile(r"[\s\x00-\x1f\x7f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")


def whitelist_id_problem(user_id: str) -> str | None:
    """Why `user_id` cannot be whitelisted, or None when it can (everything else is escaped)."""
    if not user_id:
        return "the id is empty"
    if len(user_id) * 4 > MAX_ID_BYTES and len(user_id.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        return f"it is {len(user_id.encode('utf-8', 'surrogatepass'))} bytes long; ids up to {MAX_ID_BYTES} bytes are supported"
    if ID_TROUBLE_RE.search(user_id):
        if _CONTROL_RE.search(user_id):
            return "it contains a control character"
        return "it contains whitespace (one id per line, no spaces inside an id)"
    if not user_id.isascii():
        try:
            user_id.encode("utf-8")
        except UnicodeEncodeError:
            return "it is not valid UTF-8"
    return None


def fold_case(user_id: str) -> bytes:
    """The form nginx's map compares keys in: UTF-8 bytes with ASCII letters lowercased."""
    return user_id.encode("utf-8").lower()


def redact(url: str) -> str:
    """The URL without user:password, for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
