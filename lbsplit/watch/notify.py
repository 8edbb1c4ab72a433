"""Notifications: one event, each webhook in the body its chat tool expects. Never blocks, never raises.

Events and their levels: revert by the watchdog, revert_failed and stuck are P1; alert
carries the worst level breached; hook_failed is P2; apply, promote, revert by a person,
recovery and release_complete are P3 (information). A webhook gets the events at least as
grave as its min_level.
"""

from __future__ import annotations

import socket
import threading
import time

from ..config import Settings
from ..model import Format, Level
from ..stamps import now
from . import endpoint

ORDER = {Level.P1: 1, Level.P2: 2, Level.P3: 3}
_BACKGROUND: list[tuple[threading.Thread, str, float]] = []  # sends still running: (thread, what, timeout)
_DONE: list[str] = []  # errors from background sends that finished, not yet collected
_GUARD = threading.Lock()
_LAST: dict[str, threading.Thread] = {}  # each webhook's latest send: the next one to it waits for it


def body(fmt: Format, event: str, level: Level, text: str, payload: dict) -> dict:
    """The POST body for one webhook format."""
    line = f"[lbsplit {level}] {text}"
    if fmt == Format.SLACK:
        return {"text": line}
    if fmt in (Format.WECOM, Format.DINGTALK):
        return {"msgtype": "text", "text": {"content": line}}
    if fmt == Format.FEISHU:
        return {"msg_type": "text", "content": {"text": line}}
    return {"event": event, "level": str(level), "text": text, "host": socket.gethostname(), "time": now(),
            **payload}


def send(settings: Settings, event: str, level: Level, text: str, payload: dict | None = None,
         post=endpoint.post_json, background: bool = False) -> list[str]:
    """POST the event to every webhook that wants it, all at once; the errors, as text.

    A failing webhook blocks nothing: the posts run side by side, so the whole send takes at most
    one `notify.timeout`, however many webhooks hang. With `background` (the watchdog's check loop)
    it returns at once; `collect` and `drain` give the errors later. One webhook gets its events in
    the order they were sent: a send to it first waits (at most one timeout) for the one before.
    """
    if settings.notify is None:
        return []
    timeout = settings.notify.timeout
    errors: list[str] = []
    started = []
    for hook in settings.notify.webhooks:
        if ORDER[level] > ORDER[hook.min_level]:
            continue
        data = body(hook.format, event, level, text, payload or {})
        sink = _DONE if background else errors

        with _GUARD:
            before = _LAST.get(hook.url)

            def deliver(url=hook.url, data=data, sink=sink, before=before):
                if before is not None:
                    before.join(timeout + 0.5)  # "recovery" reaches the channel before "release_complete"
                error = post(url, data, timeout)
                if error:
                    with _GUARD:
                        sink.append(f"notify {event}: {error}")

            thread = threading.Thread(target=deliver, name=f"lbsplit-notify-{event}", daemon=True)
            _LAST[hook.url] = thread
            thread.start()
        what = f"notify {event}: webhook {endpoint.redact(hook.url)}"
        started.append((thread, what, timeout))
    if background:
        with _GUARD:
            _BACKGROUND.extend(started)
        return []
    return _join(started, time.monotonic() + timeout + 0.5) + errors


def _join(sends: list, deadline: float) -> list[str]:
    late = []
    for thread, what, timeout in sends:
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            late.append(f"{what} did not answer within {timeout:g}s; left to finish on its own")
    return late


def collect() -> list[str]:
    """Errors of background sends that have finished (never waits)."""
    with _GUARD:
        out, _DONE[:] = list(_DONE), []
        _BACKGROUND[:] = [s for s in _BACKGROUND if s[0].is_alive()]
    return out


def drain(budget: float) -> list[str]:
    """Wait at most `budget` seconds in all for background sends; their errors, and the ones still running."""
    with _GUARD:
        pending = list(_BACKGROUND)
    late = _join(pending, time.monotonic() + budget)
    with _GUARD:
        _BACKGROUND[:] = []
    return collect() + late


def announce(settings: Settings, event: str, outcome, reason: str = "", post=endpoint.post_json) -> list[str]:
    """A person's change (apply, promote, revert) as an information event; returns error notes."""
    if not outcome.changed:
        return []
    text = f"{event}: v2 {outcome.stage.describe()} (generation {outcome.generation})" + (f": {reason}" if reason else "")
    return send(settings, event, Level.P3, text, {"stage": outcome.stage.describe(), "generation": outcome.generation,
                                                  "reason": reason}, post)
