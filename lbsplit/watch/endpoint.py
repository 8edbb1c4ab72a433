"""The HTTP client for v2's health endpoint and for webhooks. Returns samples; decides nothing.

(The only other HTTP request lbsplit makes is nginx.process asking nginx's own status page.)
"""

from __future__ import annotations

import json
import os
import threading
import zlib
import time
from dataclasses import dataclass
from pathlib import Path

from .. import progress
from ..errors import ConfigError
from ..validate import redact

MAX_BODY = 1 << 20  # of decoded bytes
CHUNK = 1 << 16


@dataclass(frozen=True)
class Sample:
    """One answer (or non-answer) of the health endpoint."""

    at: float
    payload: object | None  # parsed JSON, when there was a 2xx JSON answer
    error: str | None  # why there is no payload: timeout, refused, HTTP 500, not JSON


def auth_headers(headers: tuple[tuple[str, str], ...], token_file: Path | None, token_env: str | None) -> dict[str, str]:
    """Configured headers plus a bearer token from a file or the environment (never printed)."""
    out = dict(headers)
    token = None
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"health.bearer_token_file: cannot read {token_file}: {e.strerror}") from None
    elif token_env:
        token = os.environ.get(token_env)
        if not token:
            raise ConfigError(f"health.bearer_token_env: ${token_env} is not set")
    if token:
        out["Authorization"] = f"Bearer {token}"
    return out


def bounded(fn, timeout: float, waiting_for: str = ""):
    """Run fn within `timeout` seconds in all; TimeoutError otherwise (see _bounded)."""
    return _bounded(fn, timeout, waiting_for)


def _bounded(fn, timeout: float, waiting_for: str = ""):
    """Run fn in a thread and give up after `timeout` seconds in all (a slow drip cannot hold us).

    When it takes longer than progress.AFTER, a terminal gets one line saying what it waits for."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # handed over to the caller below
            box["error"] = e

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(min(timeout, progress.AFTER))
    if worker.is_alive() and timeout > progress.AFTER:
        if waiting_for:
            progress.say(f"waiting for {waiting_for} (up to {timeout:g}s)")
        worker.join(timeout - progress.AFTER)
    if worker.is_alive():
        raise TimeoutError
    if "error" in box:
        raise box["error"]
    return box["value"]


class UnsupportedEncoding(ValueError):
    pass


def read_capped(raw, encoding: str) -> bytes | None:
    """The decoded body, or None when it decodes to more than MAX_BODY bytes (never holding more)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        decoder = None
    elif encoding in ("gzip", "x-gzip"):
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        decoder = zlib.decompressobj()
    else:
        raise UnsupportedEncoding(encoding)
    parts, size = [], 0
    while True:
        chunk = raw.read(CHUNK, decode_content=False)
        if not chunk:
            return b"".join(parts)
        if decoder is not None:
            chunk = decoder.decompress(chunk, MAX_BODY + 1 - size)
            if decoder.unconsumed_tail:
                return None  # more output than the cap allows
        parts.append(chunk)
        size += len(chunk)
        if size > MAX_BODY:
            return None


def _refused(error: BaseException) -> bool:
    """A ConnectionRefusedError anywhere in the chain requests and urllib3 wrap it in (their messages vary)."""
    stack, seen = [error], set()
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ConnectionRefusedError):
            return True
        reason = getattr(e, "reason", None)
        stack += [e.__cause__, e.__context__, reason if isinstance(reason, BaseException) else None,
                  *(a for a in e.args if isinstance(a, BaseException))]
    return False


def probe(url: str, timeout: float, headers: dict[str, str], clock=time.time) -> Sample:
    """GET the health endpoint once, within `timeout` seconds in all."""
    import requests  # here, not at the top: apply and revert never pay for importing it

    at = clock()

    def fetch():
        # We ask for identity, and decode a compressed answer ourselves with a limit on the output:
        # a 200 KiB gzip answer must not unpack into 200 MiB before any cap is checked.
        sent = {"Accept-Encoding": "identity", **headers}
        with requests.get(url, headers=sent, timeout=(timeout, timeout), stream=True, allow_redirects=False) as r:
            return r.status_code, read_capped(r.raw, r.headers.get("Content-Encoding", ""))

    try:
        status, body = _bounded(fetch, timeout, f"v2's health endpoint {redact(url)}")
    except (TimeoutError, requests.Timeout):
        return Sample(at, None, f"no answer within {timeout:g}s")
    except requests.ConnectionError as e:
        return Sample(at, None, "connection refused" if _refused(e) else "cannot connect")
    except requests.RequestException as e:
        return Sample(at, None, f"request failed ({type(e).__name__})")
    except UnsupportedEncoding as e:
        return Sample(at, None, f"answer in an unsupported Content-Encoding ({str(e)[:20]})")
    except zlib.error:
        return Sample(at, None, "answer is not valid compressed data")
    if body is None:
        return Sample(at, None, f"answer larger than {MAX_BODY} bytes")
    if not 200 <= status < 300:
        return Sample(at, None, f"HTTP {status}")
    try:
        return Sample(at, json.loads(body), None)
    except (ValueError, UnicodeDecodeError):
        return Sample(at, None, "answer is not JSON")
    except RecursionError:
        return Sample(at, None, "answer is nested too deeply to be a health report")


def post_json(url: str, payload: dict, timeout: float) -> str | None:
    """POST a notification; returns an error text instead of raising (a webhook never blocks a revert)."""
    import requests  # here, not at the top: apply and revert never pay for importing it

    def send():
        return requests.post(url, json=payload, timeout=(timeout, timeout), allow_redirects=False).status_code

    try:
        status = _bounded(send, timeout)
    except (TimeoutError, requests.RequestException) as e:
        return f"webhook {redact(url)} failed: {type(e).__name__}"
    if not 200 <= status < 300:
        return f"webhook {redact(url)} answered HTTP {status}"
    return None
